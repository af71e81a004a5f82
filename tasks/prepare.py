"""The `prepare` step: ingested documents -> clean, deduplicated, decontaminated train/validation.

Per document, in order (each sub-step switchable in `PrepareConfig`):

    normalize -> quality filters -> language ID -> toxicity -> decontaminate -> PII redaction
    -> exact + MinHash dedup -> split (train/validation by id hash)

Three phases keep memory bounded by the shard size, not the corpus size, and make the per-shard
work a pure function that a mapped Prefect task (or a process pool) can run in parallel:

1. `process_shard(in_path, kept_path, rejects_path, cfg, decon)` runs everything per document
   except the global dedup and writes the survivors (+ signals, exact hash, MinHash signature,
   shingles) and the rejects of one shard; it returns small counts.
2. `dedup_shards(kept_paths, deduper)` streams the survivors' hashes and signatures through one
   `tasks.dedup.Deduper` in shard order (first occurrence wins) and returns
   ``{id: (duplicate_of, kind, similarity)}``.
3. `finalize_shard(...)` writes `train/`, `validation/` and the dedup rejects.

Phase 1 runs either inside the step (serially or in a process pool, `PrepareConfig.workers`) or,
in the flows, as the mapped step `prepare_shard`: one cached artifact per input shard, keyed by
the shard's content (`shard_inputs` gives each ingest shard a content-addressed `doc_shard`
artifact), the per-shard part of the config (`shard_config`) and the task data. Adding a source
then recomputes only the new source's shards; `prepare` takes them as inputs ``shard-NNNNN``
and does phases 2 and 3.

A sub-step that raises on one document rejects it as ``error:<step>`` and the run goes on. The
dedup index (kept ids, exact-hash keys, signatures) is saved as `dedup/index.parquet`; pass a previous
prepare artifact as input ``previous`` to dedup new documents against everything it kept.
Every input id ends in exactly one of train, validation or rejects (checked before publishing).
The stats record which sub-steps ran (`steps`: status and drops by reason) and the languages kept
(`by_language`), which the model card reports.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import os
import shutil
import socket
import threading
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from llmflow.config import DecontaminateConfig, PrepareConfig
from llmflow.step import StepContext
from llmflow.store import ArtifactStore, StepRef, step_key
from tasks.common import step_task
from tasks.decontaminate import Decontaminator
from tasks.dedup import Deduper, exact_hash
from tasks.filters import QualityFilter
from tasks.langid import LangFilter
from tasks.minhash import Signer, shingles
from tasks.normalize import normalize
from tasks.pii import redact
from tasks.toxicity import ToxicityFilter

VERSION = 3  # 2: per-shard inputs (shard-NNNNN); 3: numpy dedup index (format 2), shingles re-read
SHARD_VERSION = 1
DOC_SHARD_STEP = "doc_shard"  # content-addressed copies (hard links) of single ingest shards
REJECT_TEXT_CHARS = 2000
SHINGLE_CACHE_BYTES = 32 << 20  # shard `_shingles` columns kept in memory for dedup verification
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


_WORKER = threading.local()  # one DocPipeline per worker thread/process, reused across shards


def process_shard(
    in_path: str | Path,
    kept_path: str | Path,
    rejects_path: str | Path,
    cfg: PrepareConfig | dict,
    decon: Decontaminator | None = None,
) -> dict[str, Any]:
    """Phase 1 for one input shard (the mapped task and the pool workers call this).

    Reads `in_path` (an ingest `docs/part-*.parquet`), writes the survivors with their work
    columns to `kept_path` and the rejects to `rejects_path`, returns
    {"input", "kept", "rejected", "pii"}.
    """
    cfg = cfg if isinstance(cfg, PrepareConfig) else PrepareConfig.model_validate(cfg)
    key = cfg.model_dump_json()
    if getattr(_WORKER, "key", None) != key or getattr(_WORKER, "decon", None) is not decon:
        _WORKER.key, _WORKER.decon, _WORKER.pipe = key, decon, DocPipeline(cfg, decon)
    table = pq.read_table(in_path, columns=["id", "text", "source", "meta"])
    kept, rejects, counts = process_table(table, cfg, decon, _WORKER.pipe)
    pq.write_table(kept, kept_path)
    pq.write_table(rejects, rejects_path)
    return {"kept": kept.num_rows, "rejected": rejects.num_rows, **counts}


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


class ShardShingles:
    """Verification shingles re-read from the shards' work files instead of held in memory.

    `ref = shard << 32 | row` names a kept document's row in `paths[shard]` (column `_shingles`,
    sorted unique uint32). The `_shingles` columns of the shards read last stay in memory, up to
    `max_bytes` (least recently used out first), so memory is bounded by a constant, not by the
    corpus; a candidate from an evicted shard costs one column read of that shard."""

    def __init__(self, paths: list[Path], max_bytes: int | None = None):
        self.paths, self.max_bytes = paths, SHINGLE_CACHE_BYTES if max_bytes is None else max_bytes
        self._cols: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        self.reads = 0

    def put(self, shard: int, col: pa.ChunkedArray | pa.Array) -> None:
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else None
        self._cols.pop(shard, None)
        self._cols[shard] = (arr.offsets.to_numpy(), arr.values.to_numpy(zero_copy_only=False), valid)
        while (
            len(self._cols) > 1
            and sum(o.nbytes + v.nbytes for o, v, _ in self._cols.values()) > self.max_bytes
        ):
            self._cols.pop(next(iter(self._cols)))  # least recently used first

    def __call__(self, ref: int) -> np.ndarray | None:
        shard, row = ref >> 32, ref & 0xFFFFFFFF
        if shard in self._cols:
            self._cols[shard] = self._cols.pop(shard)
        else:
            self.reads += 1
            self.put(shard, pq.read_table(self.paths[shard], columns=["_shingles"]).column("_shingles"))
        offsets, values, valid = self._cols[shard]
        return None if valid is not None and not valid[row] else values[offsets[row] : offsets[row + 1]]


def dedup_shards(kept_paths: list[Path], deduper: Deduper) -> dict[str, tuple[str, str, float]]:
    """Phase 2: stream hashes and signatures through one index, first occurrence kept.

    Kept documents' shingles for true-Jaccard verification are re-read from `kept_paths`
    (`ShardShingles`), so the index holds ~650 bytes per kept document, not the shingle sets."""
    dups: dict[str, tuple[str, str, float]] = {}
    store = ShardShingles(kept_paths) if deduper.verify else None
    deduper.shingles_of = store
    for shard, path in enumerate(kept_paths):
        cols = ["id", "_exact", "_sig"] + (["_shingles"] if store is not None else [])
        t = pq.read_table(path, columns=cols)
        ids, hashes = t.column("id").to_pylist(), t.column("_exact").to_pylist()
        sigs = t.column("_sig")
        sig_arr = (
            sigs.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(len(ids), -1)
            if deduper.near and len(ids) and sigs.null_count == 0
            else None
        )
        if store is not None and len(ids):
            store.put(shard, t.column("_shingles"))
        for i, doc_id in enumerate(ids):
            s = store(shard << 32 | i) if store is not None else None
            m = deduper.check(
                doc_id, hashes[i] or "", None if sig_arr is None else sig_arr[i], s, shard << 32 | i
            )
            if m is not None:
                dups[doc_id] = (m.duplicate_of, m.kind, m.similarity)
    deduper.forget_shingles()  # the work files go away after the step
    deduper.shingle_rereads += store.reads if store is not None else 0
    return dups


def finalize_shard(
    kept_path: Path,
    rejects_path: Path,
    shard: int,
    out: Path,
    dups: dict[str, tuple[str, str, float]],
    fraction: float,
) -> dict[str, Any]:
    """Phase 3: split survivors, move duplicates to rejects, write the final parquet files."""
    kept = pq.read_table(kept_path)
    rejects = pq.read_table(rejects_path)
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
    invariant input = kept + rejected, by id (raises if violated).

    Checked shard by shard (output part N holds exactly the documents of input part N), so the
    memory is bounded by one shard, not by the corpus."""
    by_source: dict[str, Counter] = defaultdict(Counter)
    by_license: dict[str, Counter] = defaultdict(Counter)
    langs: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    in_parts = sorted(docs_dir.glob("part-*.parquet"))
    names = {f"part-{i:05d}.parquet" for i in range(len(in_parts))}
    stray = [f"{s}/{f.name}" for s in ("train", "validation", "rejects") for f in (out / s).glob("*.parquet")]
    stray = [f for f in stray if f.split("/")[1] not in names]
    if stray:
        raise RuntimeError(f"prepare accounting broken: output parts without an input shard {stray[:5]}")

    def read(split: str, name: str, columns: list[str]) -> pa.Table | None:
        f = out / split / name
        return pq.read_table(f, columns=columns) if f.exists() else None

    for i, f in enumerate(in_parts):
        name = f"part-{i:05d}.parquet"
        inp = pq.read_table(f, columns=["id", "meta"])
        kept = [read(s, name, ["id", "source", "lang"]) for s in ("train", "validation")]
        kept = [t for t in kept if t is not None]
        kept_t = pa.concat_tables(kept) if kept else None
        rej = read("rejects", name, ["id", "source", "reason"])
        in_ids = Counter(inp.column("id").to_pylist())
        out_ids = Counter()
        for t in (kept_t, rej):
            if t is not None:
                out_ids.update(t.column("id").to_pylist())
        if in_ids != out_ids:
            missing = list((in_ids - out_ids).keys())[:5]
            extra = list((out_ids - in_ids).keys())[:5]
            raise RuntimeError(
                f"prepare accounting broken in shard {i}: missing ids {missing}, unexpected ids {extra}"
            )
        license_of = dict(
            zip(inp.column("id").to_pylist(), map(_license, inp.column("meta").to_pylist()), strict=True)
        )
        for kind, t in (("kept", kept_t), ("rejected", rej)):
            if t is None:
                continue
            for doc_id, s in zip(t.column("id").to_pylist(), t.column("source").to_pylist(), strict=True):
                by_source[s][kind] += 1
                by_license[license_of.get(doc_id, "unknown")][kind] += 1
        if kept_t is not None:
            langs.update(kept_t.column("lang").to_pylist())
        if rej is not None:
            reasons.update(rej.column("reason").to_pylist())
    return {
        "by_source": {k: dict(v) for k, v in sorted(by_source.items())},
        "by_license": {k: dict(v) for k, v in sorted(by_license.items())},
        "by_language": dict(langs.most_common()),
        "rejects_by_reason": dict(reasons.most_common()),
        "errors": sum(v for k, v in reasons.items() if k.startswith("error:")),
    }


def _sub_step_of(reason: str) -> str | None:
    """The per-document sub-step that rejects with `reason`; None for an empty document (after
    normalisation, whether or not it ran) and for errors."""
    if reason == "decontaminated":
        return "decontaminate"
    if reason == "filter:toxicity":
        return "toxicity"
    if reason.startswith(("filter:lang:", "filter:lang_score:")):
        return "langid"
    if reason.startswith("filter:") and reason != "filter:empty":
        return "quality"  # filter:max_chars and the QualityFilter rules
    return None


def sub_steps(
    cfg: PrepareConfig, decon_ngrams: int, rejects_by_reason: dict[str, int], dedup: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """What each sub-step did, in run order, for the records (the model card reads it):
    `status` is "ran", "off" (turned off in the config) or "skipped: <why>"; `dropped` counts the
    documents it rejected by reason (dedup: the duplicates removed)."""
    enabled = {
        "normalize": cfg.normalize.enabled,
        "quality": cfg.quality.enabled,
        "langid": cfg.langid.enabled,
        "toxicity": cfg.toxicity.enabled,
        "decontaminate": cfg.decontaminate.enabled,
        "pii": cfg.pii.enabled,
        "dedup_exact": cfg.dedup.exact,
        "dedup_minhash": cfg.dedup.minhash.enabled,
    }
    steps = {name: {"status": "ran" if on else "off", "dropped": {}} for name, on in enabled.items()}
    if cfg.decontaminate.enabled and not decon_ngrams:
        steps["decontaminate"]["status"] = "skipped: no task items to check against"
    for reason, n in rejects_by_reason.items():
        if (name := _sub_step_of(reason)) is not None:
            steps[name]["dropped"][reason] = n
    for name, kind in (("dedup_exact", "exact"), ("dedup_minhash", "near")):
        if dedup[kind]:
            steps[name]["dropped"]["dedup"] = dedup[kind]
    return steps


def _report(ctx: StepContext, stats: dict[str, Any], out: Path, k: int) -> None:
    examples: dict[str, list[dict]] = defaultdict(list)
    for f in sorted((out / "rejects").glob("part-*.parquet")):  # streamed: rejects can be most of a corpus
        for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
            for i, reason in enumerate(batch.column("reason").to_pylist()):
                if len(examples[reason]) < k:
                    examples[reason].append(batch.slice(i, 1).to_pylist()[0])
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


def _decontaminator(ctx: StepContext, cfg: PrepareConfig) -> Decontaminator | None:
    if cfg.decontaminate.enabled and "task" in ctx.inputs:
        d = cfg.decontaminate
        return _load_decontaminator(str(ctx.input_path("task")), d.model_dump_json())
    if cfg.decontaminate.enabled:
        ctx.logger.warning("%s: no 'task' input, decontamination skipped", ctx.step)
    return None


@functools.lru_cache(maxsize=2)
def _load_decontaminator(task_dir: str, settings: str) -> Decontaminator:
    """One index per (task artifact, settings) per process: mapped shard tasks share it."""
    d = DecontaminateConfig.model_validate_json(settings)
    return Decontaminator.from_task_dir(task_dir, d.ngram, d.splits, d.min_matches, d.min_words)


def shard_config(cfg: PrepareConfig) -> PrepareConfig:
    """The part of the config that the per-shard work depends on (the rest reset to defaults), so
    that changing e.g. the dedup threshold or the split re-runs `prepare` but no shard."""
    default = PrepareConfig()
    mh = cfg.dedup.minhash
    return cfg.model_copy(
        update={
            "validation_fraction": default.validation_fraction,
            "workers": default.workers,
            "examples_per_reason": default.examples_per_reason,
            "dedup": cfg.dedup.model_copy(
                update={
                    "minhash": default.dedup.minhash.model_copy(
                        update={
                            k: getattr(mh, k)
                            for k in ("enabled", "num_perm", "shingle_words", "verify_jaccard", "seed")
                        }
                    )
                }
            ),
        }
    )


def prepare_shard_step(ctx: StepContext) -> dict[str, Any]:
    """One shard: normalize, filter, identify language, score toxicity, decontaminate, redact PII.

    Input `docs` is a `doc_shard` artifact (`docs.parquet`); writes `kept.parquet` (survivors with
    the dedup work columns) and `rejects.parquet`; `prepare` dedups and splits them globally.
    """
    cfg = ctx.config if isinstance(ctx.config, PrepareConfig) else PrepareConfig.model_validate(ctx.config)
    decon = _decontaminator(ctx, cfg)
    stats = process_shard(
        ctx.input_path("docs") / "docs.parquet",
        ctx.out / "kept.parquet",
        ctx.out / "rejects.parquet",
        cfg,
        decon,
    )
    stats["decontamination_ngrams"] = len(decon) if decon is not None else 0
    stats["worker"] = f"{socket.gethostname()}/{os.getpid()}"  # where it ran (a cluster's node)
    ctx.progress(1, 1, f"{stats['kept']}/{stats['input']} kept")
    return stats


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def split_into_shards(docs: StepRef, store: ArtifactStore) -> list[StepRef]:
    """One content-addressed `doc_shard` artifact per ingest shard (a hard link, no copy on a local
    store), so a shard's downstream key depends on its content, not on the other sources."""
    refs = []
    for f in sorted((store.local_path(docs) / "docs").glob("part-*.parquet")):
        digest = _file_sha256(f)
        key = step_key(DOC_SHARD_STEP, 1, None, extra={"sha256": digest})
        if not store.exists(DOC_SHARD_STEP, key):
            manifest = {"stats": {"sha256": digest, "first_seen_as": f"{docs.step}/{docs.key}/docs/{f.name}"}}
            with store.write(DOC_SHARD_STEP, key, manifest) as out:
                try:
                    os.link(f, out / "docs.parquet")
                except OSError:
                    shutil.copy2(f, out / "docs.parquet")
        ref = store.ref(DOC_SHARD_STEP, key)
        assert ref is not None
        refs.append(ref)
    return refs


@task(name="shard_inputs", description="One content-addressed artifact per ingest shard.", retries=1)
def shard_inputs(docs: StepRef, home: str | None = None) -> list[StepRef]:
    return split_into_shards(docs, ArtifactStore(home))


def prepare_step(ctx: StepContext) -> dict[str, Any]:
    """Normalize, filter, identify language, score toxicity, decontaminate, redact PII, dedup, split.

    With inputs ``shard-NNNNN`` (outputs of `prepare_shard`, in ingest shard order) the per-shard
    work is already done; otherwise it runs here, serially or in `cfg.workers` processes.
    """
    cfg: PrepareConfig = ctx.config
    docs_dir = ctx.input_path("docs") / "docs"
    in_shards = sorted(docs_dir.glob("part-*.parquet"))
    shard_inputs_ = sorted(k for k in ctx.inputs if k.startswith("shard-"))
    out = ctx.out
    work = out / "_work"
    work.mkdir()
    results: list[dict[str, Any]] = []
    decon_ngrams = 0
    if shard_inputs_:
        if len(shard_inputs_) != len(in_shards):
            raise ValueError(f"prepare: {len(shard_inputs_)} shard inputs for {len(in_shards)} ingest shards")
        parts = [
            (ctx.input_path(n) / "kept.parquet", ctx.input_path(n) / "rejects.parquet") for n in shard_inputs_
        ]
        results = [ctx.input_stats(n) for n in shard_inputs_]
        want = shard_config(cfg).model_dump(mode="json")
        for n in shard_inputs_:
            ref = ctx.inputs[n]
            got = (ctx.store.manifest(ref.step, ref.key) or {}).get("config")
            if ref.step != "prepare_shard" or got != want:
                raise ValueError(
                    f"prepare: input {n} ({ref.step}/{ref.key[:12]}) was not made with this config"
                )
        decon_ngrams = max((r.get("decontamination_ngrams", 0) for r in results), default=0)
    else:
        decon = _decontaminator(ctx, cfg)
        decon_ngrams = len(decon) if decon is not None else 0
        parts = [
            (work / f"kept-{i:05d}.parquet", work / f"rejects-{i:05d}.parquet") for i in range(len(in_shards))
        ]
        args = [
            (str(p), *map(str, parts[i]), cfg.model_dump(mode="json"), decon) for i, p in enumerate(in_shards)
        ]
        workers = cfg.workers or os.cpu_count() or 1
        if workers > 1 and len(in_shards) > 1:
            with ProcessPoolExecutor(min(workers, len(in_shards)), mp_context=get_context("spawn")) as pool:
                for r in pool.map(process_shard, *zip(*args, strict=True)):
                    results.append(r)
                    ctx.progress(
                        len(results),
                        len(in_shards) + 1,
                        f"shard {len(results) - 1}: {r['kept']}/{r['input']} kept",
                    )
        else:
            for a in args:
                results.append(process_shard(*a))
                ctx.progress(
                    len(results),
                    len(in_shards) + 1,
                    f"shard {len(results) - 1}: {results[-1]['kept']}/{results[-1]['input']}",
                )
    shards = list(range(len(parts)))
    deduper = make_deduper(cfg)
    previous = 0
    if "previous" in ctx.inputs:  # incremental: dedup against an earlier prepare's kept docs
        prev_index = ctx.input_path("previous") / "dedup" / "index.parquet"
        previous = deduper.load(prev_index)
    dups = dedup_shards([k for k, _ in parts], deduper)
    (out / "dedup").mkdir()
    deduper.save(out / "dedup" / "index.parquet")
    minhash_stats = {
        "bands": deduper.bands,
        "rows": deduper.rows,
        "num_perm": deduper.num_perm,
        "threshold": deduper.threshold,
        "verified_by_estimate": deduper.verified_by_estimate,
    }
    index_stats = {
        "index_docs": len(deduper),
        "index_bytes": deduper.nbytes,
        "shingle_rereads": deduper.shingle_rereads,
    }
    del deduper  # the index is saved: free it before the shards are written (peak RSS)
    gc.collect()
    totals: Counter[str] = Counter()
    for s in shards:
        totals.update(finalize_shard(*parts[s], s, out, dups, cfg.validation_fraction))
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
        "minhash": minhash_stats,
        "dedup": {
            "exact": sum(1 for v in dups.values() if v[1] == "exact"),
            "near": sum(1 for v in dups.values() if v[1] == "near"),
            "previous_index_docs": previous,
            **index_stats,
        },
        "decontamination_ngrams": decon_ngrams,
    }
    del dups  # free the duplicate map before the read-back
    stats.update(_accounting(out, docs_dir))
    if stats["input"] != stats["kept"] + stats["rejected"]:
        raise RuntimeError(
            f"prepare accounting broken: {stats['input']} != {stats['kept']} + {stats['rejected']}"
        )
    stats["steps"] = sub_steps(cfg, decon_ngrams, stats["rejects_by_reason"], stats["dedup"])
    _report(ctx, stats, out, cfg.examples_per_reason)
    return stats


prepare = step_task("prepare", VERSION, prepare_step)
prepare_shard = step_task("prepare_shard", SHARD_VERSION, prepare_shard_step)
