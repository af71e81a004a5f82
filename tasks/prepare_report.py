"""What `prepare` did, read back from the files it wrote: the accounting, the sub-steps, the report.

`accounting` counts kept and rejected documents by source, licence, language and reason, and
checks the invariant input = kept + rejected, by id, shard by shard (output part N holds exactly
the documents of input part N), so memory is bounded by one shard. It also counts every reject of
the data path, ingest's included, by source, licence and stage (`rejects_by_origin`): each row
of the rejects files carries its origin (`tasks.rejects`), so a count leads to the files. `sub_steps` records which
sub-steps ran and what each dropped (the model card reads it); `write_report` puts the markdown
report, the tables and examples of each drop reason in the Prefect UI.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from llmflow.config import PrepareConfig
from llmflow.step import StepContext
from tasks.rejects import STAGES, stage_of


def _license(meta: str | None) -> str:
    try:
        return str(json.loads(meta or "{}").get("license") or "unknown")
    except (ValueError, AttributeError):
        return "unknown"


def rejects_by_origin(parts: list[Path]) -> list[dict[str, Any]]:
    """Rejects counted by (source, licence) and stage, one row per pair, streamed file by file."""
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for f in parts:
        t = pq.read_table(f, columns=["source", "license", "reason"]).to_pydict()
        for s, lic, r in zip(t["source"], t["license"], t["reason"], strict=True):
            counts[(s, lic)][stage_of(r)] += 1
    stages = [*STAGES, "other"]
    return [
        {"source": s, "license": lic, **{k: c[k] for k in stages if c[k]}, "rejected": c.total()}
        for (s, lic), c in sorted(counts.items())
    ]


def accounting(out: Path, docs_dir: Path, ingest_rejects: Path | None = None) -> dict[str, Any]:
    """Per-source/licence/language/reason counts read back from the written files, plus the
    invariant input = kept + rejected, by id (raises if violated). `ingest_rejects`: the ingest
    artifact's rejects folder, counted into `rejects_by_origin` with this step's rejects.

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
    ingest_parts = sorted(ingest_rejects.glob("part-*.parquet")) if ingest_rejects is not None else []
    return {
        "rejects_by_origin": rejects_by_origin(
            ingest_parts + sorted((out / "rejects").glob("part-*.parquet"))
        ),
        "by_source": {k: dict(v) for k, v in sorted(by_source.items())},
        "by_license": {k: dict(v) for k, v in sorted(by_license.items())},
        "by_language": dict(langs.most_common()),
        "rejects_by_reason": dict(reasons.most_common()),
        "errors": sum(v for k, v in reasons.items() if k.startswith("error:")),
    }


def _sub_step_of(reason: str) -> str | None:
    """The per-document sub-step that rejects with `reason`; None for an empty document (after
    normalisation, whether or not it ran) and for errors."""
    stage = stage_of(reason)
    if reason == "filter:empty" or stage not in ("decontaminate", "toxicity", "langid", "quality"):
        return None
    return stage  # quality: filter:max_chars and the QualityFilter rules


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


def write_report(ctx: StepContext, stats: dict[str, Any], out: Path, k: int) -> None:
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
        *_origin_table(stats["rejects_by_origin"]),
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
            lines.append(f"- `{r['id']}` ({r['source']}, {_where(r)}){val}{extra}: {snippet}")
    ctx.report("\n".join(lines) + "\n")
    ctx.table(
        [{"reason": r, "documents": n} for r, n in stats["rejects_by_reason"].items()], "rejects-by-reason"
    )
    ctx.table([{"source": s, **c} for s, c in stats["by_source"].items()], "by-source")
    ctx.table([{"language": lang, "documents": n} for lang, n in stats["by_language"].items()], "by-language")
    ctx.table([{"license": s, **c} for s, c in stats["by_license"].items()], "by-license")
    ctx.table(stats["rejects_by_origin"], "rejects-by-source-license")
    ctx.table(
        [
            {"reason": r, "id": x["id"], "text": x["text"][:200]}
            for r, xs in sorted(examples.items())
            for x in xs
        ],
        "reject-examples",
    )


def _origin_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: rejects by source and licence, one column per stage that rejected anything."""
    stages = [k for k in (*STAGES, "other") if any(k in r for r in rows)]
    return [
        "Rejects by source and licence (ingest's included), by the stage that dropped them:",
        "",
        "| source | licence | " + " | ".join(stages) + " | rejected |",
        "|---|---|" + "---:|" * (len(stages) + 1),
        *[
            f"| {r['source']} | {r['license']} | "
            + " | ".join(f"{r.get(k, 0):,}" for k in stages)
            + f" | {r['rejected']:,} |"
            for r in rows
        ],
    ]


def _where(r: dict[str, Any]) -> str:
    """A reject's origin in a few words: licence, file and line or row."""
    at = r["file"] or "?"
    if r["line"] is not None:
        at += f" line {r['line']}"
    elif r["row"] is not None:
        at += f" row {r['row']}"
    return f"{r['license']}, {at}"
