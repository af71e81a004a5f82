"""The `prepare` step: ingested documents -> clean, deduplicated, decontaminated train/validation.

Per document, in order (each sub-step switchable in `PrepareConfig`):

    normalize -> quality filters -> language ID -> toxicity -> decontaminate -> PII redaction
    -> exact + MinHash dedup -> split (train/validation by id hash)

Three phases keep memory bounded by the shard size, not the corpus size, and make the per-shard
work a pure function that a mapped Prefect task (or a process pool) can run in parallel:

1. `process_shard(in_path, work_dir, shard, cfg, decon)` runs everything per document except the
   global dedup and writes `kept-NNNNN.parquet` (survivors + signals + exact hash + MinHash
   signature + shingles) and `rejects-NNNNN.parquet` to `work_dir`; it returns small counts.
2. `dedup_shards(work_dir, shards, deduper)` streams the survivors' hashes and signatures through
   one `tasks.dedup.Deduper` in shard order (first occurrence wins) and returns
   ``{id: (duplicate_of, kind, similarity)}``.
3. `finalize_shard(...)` writes `train/`, `validation/` and the dedup rejects.

A sub-step that raises on one document rejects it as ``error:<step>`` and the run goes on. The
dedup index (kept ids, exact hashes, signatures) is saved as `dedup/index.parquet`; pass a previous
prepare artifact as input ``previous`` to dedup new documents against everything it kept.
Every input id ends in exactly one of train, validation or rejects (checked before publishing).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llmflow.config import PrepareConfig
from llmflow.step import StepContext
from tasks.common import step_task
from tasks.decontaminate import Decontaminator
from tasks.dedup import Deduper, Signer, exact_hash, shingles
from tasks.filters import QualityFilter
from tasks.langid import LangFilter
from tasks.normalize import normalize
from tasks.pii import redact
from tasks.toxicity import ToxicityFilter

VERSION = 1
REJECT_TEXT_CHARS = 2000
# Quality signals kept as columns on every kept document (q_<name>).
SIGNALS = (
    "words", "mean_word_length", "symbol_word_ratio", "alpha_words_ratio", "stop_words",
    "dup_line_frac", "top_2gram_char_frac", "line_punct_ratio", "short_line_ratio",
)  # fmt: skip
REJECT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("reason", pa.string()),
        ("duplicate_of", pa.string()),
        ("value", pa.float64()),
        ("text", pa.string()),
    ]
)
_BASE = [("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("meta", pa.string())]
OUT_SCHEMA = pa.schema(
    _BASE
    + [("lang", pa.string()), ("lang_score", pa.float32())]
    + [(f"q_{s}", pa.float32()) for s in SIGNALS]
    + [("toxicity", pa.float32()), ("pii_redactions", pa.int32())]
)


def _work_schema(num_perm: int) -> pa.Schema:
    return (
        OUT_SCHEMA.append(pa.field("_exact", pa.string()))
        .append(pa.field("_sig", pa.list_(pa.uint32(), num_perm)))
        .append(pa.field("_shingles", pa.list_(pa.uint32())))
    )


def _safe(text: str, limit: int | None = None) -> str:
    """Writable (valid UTF-8) text, optionally cut."""
    text = text[:limit] if limit else text
    return text.encode("utf-8", "replace").decode("utf-8")


def _license(meta: str | None) -> str:
    try:
        return str(json.loads(meta or "{}").get("license") or "unknown")
    except (ValueError, AttributeError):
        return "unknown"


def in_validation(doc_id: str, fraction: float) -> bool:
    """Deterministic split by id hash (stable across runs, shards and worker counts)."""
    h = int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8", "replace"), digest_size=8).digest(), "big")
    return h % 1_000_000 < fraction * 1_000_000


class Rejected(Exception):
    def __init__(self, reason: str, value: float | None = None):
        super().__init__(reason)
        self.reason, self.value = reason, value


class DocPipeline:
    """The per-document sub-steps of one config, built once per worker."""

    def __init__(self, cfg: PrepareConfig, decon: Decontaminator | None = None):
        self.cfg = cfg
        self.quality = QualityFilter(cfg.quality) if cfg.quality.enabled else None
        self.lang = LangFilter(cfg.langid) if cfg.langid.enabled else None
        self.tox = ToxicityFilter(cfg.toxicity) if cfg.toxicity.enabled else None
        self.decon = decon if cfg.decontaminate.enabled else None
        mh = cfg.dedup.minhash
        self.signer = Signer(mh.num_perm, mh.seed) if mh.enabled else None
        self.pii_types = tuple(cfg.pii.types)

    def _step(self, name: str, fn, *args):
        try:
            return fn(*args)
        except Rejected:
            raise
        except Exception as e:  # one bad document must not stop the run
            raise Rejected(f"error:{name}") from e

    def __call__(self, text: str) -> dict[str, Any]:
        """The kept row's new fields, or raises `Rejected(reason, value)`."""
        cfg = self.cfg
        if not isinstance(text, str):
            raise Rejected("error:input")
        if cfg.quality.enabled and len(text) > cfg.quality.max_chars:
            raise Rejected("filter:max_chars", float(len(text)))
        if cfg.normalize.enabled:
            text = self._step("normalize", normalize, text, cfg.normalize.fix_mojibake)
        if not text.strip():
            raise Rejected("filter:empty", 0.0)
        row: dict[str, Any] = {}
        if self.quality:
            keep, reason, value, sig = self._step("quality", self.quality, text)
            if not keep:
                raise Rejected(reason, value)
            row.update({f"q_{s}": sig.get(s) for s in SIGNALS})
        lang, score = "und", 0.0
        if self.lang:
            keep, reason, value, (lang, score) = self._step("langid", self.lang, text)
            if not keep:
                raise Rejected(f"{reason}:{lang}", value)
        row["lang"], row["lang_score"] = lang, score
        if self.tox:
            keep, reason, value, tox = self._step("toxicity", self.tox, text)
            if not keep:
                raise Rejected(reason, value)
            row["toxicity"] = tox
        if self.decon is not None:
            keep, reason, value, _ = self._step("decontaminate", self.decon, text)
            if not keep:
                raise Rejected(reason, value)
        row["pii_counts"] = {}
        if cfg.pii.enabled:
            red = self._step("pii", redact, text, self.pii_types)
            text, row["pii_counts"] = red.text, red.counts()
        row["pii_redactions"] = sum(row["pii_counts"].values())
        row["text"] = text
        row["_exact"] = self._step("dedup", exact_hash, text) if cfg.dedup.exact else ""
        if self.signer is not None:
            sh = self._step("dedup", shingles, text, cfg.dedup.minhash.shingle_words)
            row["_sig"] = self._step("dedup", self.signer, sh)
            row["_shingles"] = sh if cfg.dedup.minhash.verify_jaccard else None
        return row


def process_table(
    table: pa.Table, cfg: PrepareConfig, decon: Decontaminator | None = None, pipe: DocPipeline | None = None
) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """Pure per-shard work: (kept rows with work columns, rejects, counts)."""
    pipe = pipe or DocPipeline(cfg, decon)
    num_perm = cfg.dedup.minhash.num_perm
    kept: dict[str, list] = defaultdict(list)
    rej: dict[str, list] = defaultdict(list)
    pii: Counter[str] = Counter()
    cols = table.to_pydict()
    for doc_id, text, source, meta in zip(
        cols["id"], cols["text"], cols["source"], cols["meta"], strict=True
    ):
        try:
            row = pipe(text)
        except Rejected as r:
            for k, v in (
                ("id", doc_id), ("source", source), ("reason", r.reason), ("duplicate_of", None),
                ("value", r.value), ("text", _safe(text or "", REJECT_TEXT_CHARS) if isinstance(text, str) else ""),
            ):  # fmt: skip
                rej[k].append(v)
            continue
        pii.update(row.pop("pii_counts"))
        row.update(id=doc_id, source=source, meta=meta)
        for f in OUT_SCHEMA.names + ["_exact", "_sig", "_shingles"]:
            kept[f].append(row.get(f))
    schema = _work_schema(num_perm)
    kept_t = pa.table({f.name: pa.array(kept.get(f.name, []), f.type) for f in schema}, schema=schema)
    rej_t = pa.table(
        {f.name: pa.array(rej.get(f.name, []), f.type) for f in REJECT_SCHEMA}, schema=REJECT_SCHEMA
    )
    return kept_t, rej_t, {"input": table.num_rows, "pii": dict(pii)}


_WORKER: dict[str, Any] = {}


def process_shard(
    in_path: str, work_dir: str, shard: int, cfg: PrepareConfig | dict, decon: Decontaminator | None = None
) -> dict[str, Any]:
    """Phase 1 for one input shard (a mapped task / pool worker can call this).

    Reads `in_path` (an ingest `docs/part-*.parquet`), writes `work_dir/kept-NNNNN.parquet` and
    `work_dir/rejects-NNNNN.parquet`, returns {"shard", "input", "kept", "rejected", "pii"}.
    """
    cfg = cfg if isinstance(cfg, PrepareConfig) else PrepareConfig.model_validate(cfg)
    key = cfg.model_dump_json()
    if _WORKER.get("key") != key or _WORKER.get("decon") is not decon:  # reuse across shards
        _WORKER.update(key=key, decon=decon, pipe=DocPipeline(cfg, decon))
    table = pq.read_table(in_path, columns=["id", "text", "source", "meta"])
    kept, rejects, counts = process_table(table, cfg, decon, _WORKER["pipe"])
    pq.write_table(kept, os.path.join(work_dir, f"kept-{shard:05d}.parquet"))
    pq.write_table(rejects, os.path.join(work_dir, f"rejects-{shard:05d}.parquet"))
    return {"shard": shard, "kept": kept.num_rows, "rejected": rejects.num_rows, **counts}


def make_deduper(cfg: PrepareConfig) -> Deduper:
    mh = cfg.dedup.minhash
    return Deduper(
        num_perm=mh.num_perm,
        threshold=mh.threshold,
        candidate_threshold=mh.candidate_threshold,
        verify_jaccard=mh.verify_jaccard,
        exact=cfg.dedup.exact,
        near=mh.enabled,
        cache_docs=mh.verify_cache_docs,
        seed=mh.seed,
    )


def dedup_shards(work_dir: str, shards: list[int], deduper: Deduper) -> dict[str, tuple[str, str, float]]:
    """Phase 2: stream hashes and signatures through one index, first occurrence kept."""
    dups: dict[str, tuple[str, str, float]] = {}
    for shard in shards:
        t = pq.read_table(
            os.path.join(work_dir, f"kept-{shard:05d}.parquet"), columns=["id", "_exact", "_sig", "_shingles"]
        )
        ids, hashes = t.column("id").to_pylist(), t.column("_exact").to_pylist()
        sigs = t.column("_sig")
        sig_arr = (
            sigs.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(len(ids), -1)
            if deduper.near and len(ids) and sigs.null_count == 0
            else None
        )
        sh = t.column("_shingles").to_pylist() if deduper.verify else None
        for i, doc_id in enumerate(ids):
            s = None if sh is None or sh[i] is None else np.asarray(sh[i], dtype=np.uint32)
            m = deduper.check(doc_id, hashes[i] or "", None if sig_arr is None else sig_arr[i], s)
            if m is not None:
                dups[doc_id] = (m.duplicate_of, m.kind, m.similarity)
    return dups


def finalize_shard(
    work_dir: str, shard: int, out: Path, dups: dict[str, tuple[str, str, float]], fraction: float
) -> dict[str, Any]:
    """Phase 3: split survivors, move duplicates to rejects, write the final parquet files."""
    kept = pq.read_table(os.path.join(work_dir, f"kept-{shard:05d}.parquet"))
    rejects = pq.read_table(os.path.join(work_dir, f"rejects-{shard:05d}.parquet"))
    ids = kept.column("id").to_pylist()
    is_dup = np.array([i in dups for i in ids], dtype=bool)
    if is_dup.any():
        d = kept.filter(pa.array(is_dup))
        d_ids = d.column("id").to_pylist()
        extra = pa.table(
            {
                "id": d.column("id"),
                "source": d.column("source"),
                "reason": pa.array(["dedup"] * len(d_ids), pa.string()),
                "duplicate_of": pa.array([dups[i][0] for i in d_ids], pa.string()),
                "value": pa.array([dups[i][2] for i in d_ids], pa.float64()),
                "text": pa.array([t[:REJECT_TEXT_CHARS] for t in d.column("text").to_pylist()], pa.string()),
            },
            schema=REJECT_SCHEMA,
        )
        rejects = pa.concat_tables([rejects, extra])
    survivors = kept.filter(pa.array(~is_dup)).select(OUT_SCHEMA.names)
    val = np.array([in_validation(i, fraction) for i in survivors.column("id").to_pylist()], dtype=bool)
    stats: dict[str, Any] = {}
    for split, mask in (("train", ~val), ("validation", val)):
        part = survivors.filter(pa.array(mask))
        (out / split).mkdir(exist_ok=True)
        pq.write_table(part, out / split / f"part-{shard:05d}.parquet", compression="zstd")
        stats[f"{split}_docs"] = part.num_rows
        stats[f"{split}_bytes"] = sum(len(t.encode("utf-8")) for t in part.column("text").to_pylist())
    (out / "rejects").mkdir(exist_ok=True)
    pq.write_table(rejects, out / "rejects" / f"part-{shard:05d}.parquet", compression="zstd")
    stats["rejected"] = rejects.num_rows
    return stats


# --------------------------------------------------------------------------- the step


def _accounting(out: Path, docs_dir: Path) -> dict[str, Any]:
    """Per-source/licence/language/reason counts read back from the written files, plus the
    invariant input = kept + rejected, by id (raises if violated)."""
    inp = (
        pq.read_table(docs_dir, columns=["id", "source", "meta"])
        if any(docs_dir.glob("part-*.parquet"))
        else None
    )
    kept = [pq.read_table(out / s, columns=["id", "source", "meta", "lang"]) for s in ("train", "validation")]
    kept_t = pa.concat_tables(kept)
    rej = pq.read_table(out / "rejects", columns=["id", "source", "reason"])
    in_ids = Counter(inp.column("id").to_pylist()) if inp is not None else Counter()
    out_ids = Counter(kept_t.column("id").to_pylist()) + Counter(rej.column("id").to_pylist())
    if in_ids != out_ids:
        missing = list((in_ids - out_ids).keys())[:5]
        extra = list((out_ids - in_ids).keys())[:5]
        raise RuntimeError(f"prepare accounting broken: missing ids {missing}, unexpected ids {extra}")
    license_of = (
        dict(zip(inp.column("id").to_pylist(), map(_license, inp.column("meta").to_pylist()), strict=True))
        if inp
        else {}
    )
    by_source: dict[str, Counter] = defaultdict(Counter)
    by_license: dict[str, Counter] = defaultdict(Counter)
    for kind, t in (("kept", kept_t), ("rejected", rej)):
        for i, s in zip(t.column("id").to_pylist(), t.column("source").to_pylist(), strict=True):
            by_source[s][kind] += 1
            by_license[license_of.get(i, "unknown")][kind] += 1
    reasons = Counter(rej.column("reason").to_pylist())
    return {
        "by_source": {k: dict(v) for k, v in sorted(by_source.items())},
        "by_license": {k: dict(v) for k, v in sorted(by_license.items())},
        "by_language": dict(Counter(kept_t.column("lang").to_pylist()).most_common()),
        "rejects_by_reason": dict(reasons.most_common()),
        "errors": sum(v for k, v in reasons.items() if k.startswith("error:")),
    }


def _report(ctx: StepContext, stats: dict[str, Any], out: Path, k: int) -> None:
    rej = pq.read_table(out / "rejects")
    examples: dict[str, list[dict]] = defaultdict(list)
    for row in rej.to_pylist():
        if len(examples[row["reason"]]) < k:
            examples[row["reason"]].append(row)
    pct = lambda n: f"{100.0 * n / max(stats['input'], 1):.1f}%"  # noqa: E731
    lines = [
        "# prepare: data report",
        "",
        f"**{stats['input']:,}** documents in, **{stats['kept']:,}** kept ({pct(stats['kept'])}), "
        f"**{stats['rejected']:,}** rejected; train {stats['train_docs']:,} docs / {stats['train_bytes']:,} bytes, "
        f"validation {stats['validation_docs']:,} docs / {stats['validation_bytes']:,} bytes. "
        f"MinHash {stats['minhash']['bands']} bands x {stats['minhash']['rows']} rows. Errors: {stats['errors']}.",
        "",
        "| reason | documents | share |",
        "|---|---:|---:|",
        *[f"| `{r}` | {n:,} | {pct(n)} |" for r, n in stats["rejects_by_reason"].items()],
        "",
        "| source | kept | rejected |",
        "|---|---:|---:|",
        *[
            f"| {s} | {c.get('kept', 0):,} | {c.get('rejected', 0):,} |"
            for s, c in stats["by_source"].items()
        ],
        "",
        "| licence | kept | rejected |",
        "|---|---:|---:|",
        *[
            f"| {s} | {c.get('kept', 0):,} | {c.get('rejected', 0):,} |"
            for s, c in stats["by_license"].items()
        ],
        "",
        "| language (kept) | documents |",
        "|---|---:|",
        *[f"| {lang} | {n:,} |" for lang, n in stats["by_language"].items()],
        "",
        "| PII type | redactions |",
        "|---|---:|",
        *[f"| {t} | {n:,} |" for t, n in sorted(stats["pii"].items())],
        "",
        "## Examples of each drop reason",
    ]
    for reason, rows in sorted(examples.items()):
        lines += ["", f"### `{reason}`", ""]
        for r in rows:
            snippet = " ".join(r["text"][:240].split()).replace("|", "\\|")
            extra = f" duplicate of `{r['duplicate_of']}`" if r["duplicate_of"] else ""
            val = f" value {r['value']:.3g}" if r["value"] is not None else ""
            lines.append(f"- `{r['id']}` ({r['source']}){val}{extra}: {snippet}")
    ctx.report("\n".join(lines) + "\n")
    ctx.table(
        [{"reason": r, "documents": n} for r, n in stats["rejects_by_reason"].items()], "rejects-by-reason"
    )
    ctx.table([{"source": s, **c} for s, c in stats["by_source"].items()], "by-source")
    ctx.table([{"language": lang, "documents": n} for lang, n in stats["by_language"].items()], "by-language")
    ctx.table([{"license": s, **c} for s, c in stats["by_license"].items()], "by-license")
    ctx.table(
        [
            {"reason": r, "id": x["id"], "text": x["text"][:200]}
            for r, xs in sorted(examples.items())
            for x in xs
        ],
        "reject-examples",
    )


def prepare_step(ctx: StepContext) -> dict[str, Any]:
    """Normalize, filter, identify language, score toxicity, decontaminate, redact PII, dedup, split."""
    cfg: PrepareConfig = ctx.config
    docs_dir = ctx.input_path("docs") / "docs"
    in_shards = sorted(docs_dir.glob("part-*.parquet"))
    decon = None
    if cfg.decontaminate.enabled and "task" in ctx.inputs:
        d = cfg.decontaminate
        decon = Decontaminator.from_task_dir(
            ctx.input_path("task"), d.ngram, d.splits, d.min_matches, d.min_words
        )
    elif cfg.decontaminate.enabled:
        ctx.logger.warning("prepare: no 'task' input, decontamination skipped")
    out = ctx.out
    work = out / "_work"
    work.mkdir()
    shards = list(range(len(in_shards)))
    workers = cfg.workers or os.cpu_count() or 1
    results: list[dict[str, Any]] = []
    args = [(str(p), str(work), i, cfg.model_dump(mode="json"), decon) for i, p in enumerate(in_shards)]
    if workers > 1 and len(in_shards) > 1:
        with ProcessPoolExecutor(min(workers, len(in_shards)), mp_context=get_context("spawn")) as pool:
            for r in pool.map(process_shard, *zip(*args, strict=True)):
                results.append(r)
                ctx.progress(
                    len(results), len(shards) + 1, f"shard {r['shard']}: {r['kept']}/{r['input']} kept"
                )
    else:
        for a in args:
            results.append(process_shard(*a))
            ctx.progress(
                len(results), len(shards) + 1, f"shard {a[2]}: {results[-1]['kept']}/{results[-1]['input']}"
            )
    deduper = make_deduper(cfg)
    previous = 0
    if "previous" in ctx.inputs:  # incremental: dedup against an earlier prepare's kept docs
        prev_index = ctx.input_path("previous") / "dedup" / "index.parquet"
        previous = deduper.load(prev_index)
    dups = dedup_shards(str(work), shards, deduper)
    (out / "dedup").mkdir()
    deduper.save(out / "dedup" / "index.parquet")
    totals: Counter[str] = Counter()
    for s in shards:
        totals.update(finalize_shard(str(work), s, out, dups, cfg.validation_fraction))
    for split in ("train", "validation", "rejects"):
        (out / split).mkdir(exist_ok=True)
    shutil.rmtree(work)
    ctx.progress(len(shards) + 1, len(shards) + 1, "done")
    pii: Counter[str] = Counter()
    for r in results:
        pii.update(r["pii"])
    stats: dict[str, Any] = {
        "input": sum(r["input"] for r in results),
        "kept": totals["train_docs"] + totals["validation_docs"],
        "rejected": totals["rejected"],
        "train_docs": totals["train_docs"],
        "validation_docs": totals["validation_docs"],
        "train_bytes": totals["train_bytes"],
        "validation_bytes": totals["validation_bytes"],
        "shards": len(shards),
        "pii": {t: pii.get(t, 0) for t in cfg.pii.types} if cfg.pii.enabled else {},
        "minhash": {
            "bands": deduper.bands,
            "rows": deduper.rows,
            "num_perm": deduper.num_perm,
            "threshold": deduper.threshold,
            "verified_by_estimate": deduper.verified_by_estimate,
        },
        "dedup": {
            "exact": sum(1 for v in dups.values() if v[1] == "exact"),
            "near": sum(1 for v in dups.values() if v[1] == "near"),
            "previous_index_docs": previous,
            "index_docs": len(deduper.kept_ids),
        },
        "decontamination_ngrams": len(decon) if decon is not None else 0,
    }
    stats.update(_accounting(out, docs_dir))
    if stats["input"] != stats["kept"] + stats["rejected"]:
        raise RuntimeError(
            f"prepare accounting broken: {stats['input']} != {stats['kept']} + {stats['rejected']}"
        )
    _report(ctx, stats, out, cfg.examples_per_reason)
    return stats


prepare = step_task("prepare", VERSION, prepare_step)
