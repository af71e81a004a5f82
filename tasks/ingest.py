"""The ingest step: every configured source -> bounded Parquet shards of documents and rejects.

Output (docs/steps.md): `docs/part-NNNNN.parquet` (id, text, source, meta as a JSON string) and
`rejects/part-NNNNN.parquet` (`tasks.rejects.REJECT_SCHEMA`: the record's origin, its reason, meta,
text cut to 2,000 chars). A shard holds
at most `shard_docs` documents (and about `shard_mb` of text), so memory stays bounded whatever
the corpus size. Ids are `<source>:<sha256 prefix>` over the source, the record's location and a
hash of its content: identical across runs and machines, unique within a run.

Each source is read into its own part artifact (`ingest_source/<key>` in the store), keyed by
its config and a fingerprint of its files (`fingerprint`), and the step's shards are hard links
to those parts: adding a source reads only that source, and editing a data folder re-reads it.

Erased documents (llmflow/erasure.py) are left out as they are read and only counted: an erased
source is not read at all. The erasure rules are part of the step's key (`ingest_extra`) and of
each affected source part's key, so a request re-reads only the sources it can touch.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from llmflow.config import IngestConfig, InputError, SourceConfig
from llmflow.erasure import Rules
from llmflow.step import StepContext
from llmflow.store import ArtifactStore, step_key
from tasks.common import step_task
from tasks.readers import Record, read_source, resolve_files
from tasks.rejects import REJECT_SCHEMA, reject_row

DOC_SCHEMA = pa.schema(
    [("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("meta", pa.string())]
)
VERSION = 1
SOURCE_STEP = "ingest_source"  # per-source part artifacts in the store


def doc_id(source: str, location: str, text: str | None) -> str:
    """Stable id: source name + sha256 over (source, location, content hash)."""
    content = hashlib.sha256((text or "").encode("utf-8", "replace")).hexdigest()
    h = hashlib.sha256(f"{source}\0{location}\0{content}".encode("utf-8", "replace")).hexdigest()
    return f"{source}:{h[:20]}"


class ShardWriter:
    """Buffers rows and writes `dir/part-NNNNN.parquet` whenever a shard is full."""

    def __init__(self, out: Path, schema: pa.Schema, max_rows: int, max_bytes: float = float("inf")):
        self.out, self.schema, self.max_rows, self.max_bytes = out, schema, max_rows, max_bytes
        self.rows: list[dict[str, Any]] = []
        self.bytes = 0
        self.shards = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.bytes += len(row["text"])
        if len(self.rows) >= self.max_rows or self.bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        pq.write_table(table, self.out / f"part-{self.shards:05d}.parquet", compression="zstd")
        self.shards += 1
        self.rows, self.bytes = [], 0


def _meta_json(meta: dict[str, Any]) -> str:
    return json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str)


def fingerprint(cfg: IngestConfig) -> dict[str, str]:
    """What the config alone does not say about the input: per source, a hash of its files'
    relative paths, sizes and modification times (the interpreter version for the builtin
    corpus, the name for a hub dataset). Pass it as the step's `extra` so that editing a data
    folder changes the ingest key instead of serving a stale cached artifact."""
    out: dict[str, str] = {}
    for src in cfg.sources:
        if src.kind == "builtin":
            out[src.name] = f"python-{platform.python_version()}"
            continue
        p = Path(src.path).expanduser()
        try:
            if src.kind == "hf":
                files = [(f, f.relative_to(p).as_posix()) for f in sorted(p.rglob("*")) if f.is_file()]
                files = files or ([(p, p.name)] if p.is_file() else [])
            else:
                files = resolve_files(src.path, src.kind, src.glob)
        except FileNotFoundError:
            files = []
        if not files:
            out[src.name] = "hub" if src.kind == "hf" else "missing"
            continue
        h = hashlib.sha256()
        for f, name in files:
            st = f.stat()
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        out[src.name] = h.hexdigest()[:16]
    return out


def ingest_extra(cfg: IngestConfig, home: str | None = None) -> dict[str, Any]:
    """The step's `extra`: the sources' `fingerprint` and the erasure rules of the store, so that
    an edited data folder or a new erasure request changes the key."""
    return {"fingerprint": fingerprint(cfg), "erased": Rules.load(ArtifactStore(home)).key_part()}


def read_into_shards(
    src: SourceConfig, cfg: IngestConfig, out: Path, progress=None, rules: Rules | None = None
) -> dict[str, Any]:
    """Read one source into `out/docs` and `out/rejects` shards; return its counts. A record the
    erasure `rules` match is counted as `erased` and written nowhere."""
    docs = ShardWriter(out / "docs", DOC_SCHEMA, cfg.shard_docs, cfg.shard_mb * 1e6)
    rejects = ShardWriter(out / "rejects", REJECT_SCHEMA, cfg.shard_docs, cfg.shard_mb * 1e6)
    by_reason: Counter[str] = Counter()
    n_docs = n_bytes = n_erased = 0
    for rec in read_source(src):
        if rec.ok and len(rec.text.strip()) < cfg.min_chars:  # type: ignore[union-attr]
            rec = Record(rec.location, rec.text, rec.meta, "invalid:empty")
        rid = doc_id(src.name, rec.location, rec.text)
        if rules and rules.erases(rid, src.name, rec.text) is not None:
            n_erased += 1
            continue
        meta = _meta_json(rec.meta)
        if rec.ok:
            docs.add({"id": rid, "text": rec.text, "source": src.name, "meta": meta})
            n_docs += 1
            n_bytes += len(rec.text.encode("utf-8"))  # type: ignore[union-attr]
        else:
            rejects.add(reject_row(rid, src.name, rec.reason, meta, rec.text))  # type: ignore[arg-type]
            by_reason[rec.reason] += 1  # type: ignore[index]
        if progress is not None and (n_docs + by_reason.total()) % 10_000 == 0:
            progress(f"{src.name}: {n_docs + by_reason.total():,} records")
    docs.flush()
    rejects.flush()
    return {
        "documents": n_docs,
        "rejected": by_reason.total(),
        "bytes": n_bytes,
        "rejects_by_reason": dict(by_reason),
        "erased": n_erased,
    }


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # same file system: no copy, and deleting either keeps the other
    except OSError:
        shutil.copy2(src, dst)


def ingest_step(ctx: StepContext) -> dict[str, Any]:
    """Read every source into bounded document shards; invalid records go to rejects.

    Each source is read into its own store artifact (`ingest_source/<key>`, keyed by the
    source's config, the shard settings, its files' fingerprint, the erasure rules that apply to
    it and the step's code hash), so adding or editing one source re-reads only that source, and
    edited code re-reads them all; the step's shards link to those of its sources. Documents
    that an erasure request names are left out and counted; an erased source is not read. A
    source that yields no document at all (every record rejected) is an `InputError` naming it.
    """
    cfg: IngestConfig = ctx.config
    rules = Rules.load(ctx.store)
    if (ctx.extra or {}).get("erased", Rules().key_part()) != rules.key_part():
        raise ValueError(
            "the store's erasure requests are not those in this step's key: pass "
            "extra=ingest_extra(config, home) (tasks/ingest.py) so that a request changes the key"
        )
    fps = fingerprint(cfg)
    shards = {"docs": 0, "rejects": 0}
    rows: list[dict[str, Any]] = []
    by_license: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    erased: dict[str, int | str] = {}
    empty: list[str] = []
    for i, src in enumerate(cfg.sources):
        applies = rules.for_source(src.name)
        if applies == {"source": True}:
            ctx.progress(i, len(cfg.sources), f"source {src.name} is erased: not read")
            erased[src.name] = "all"
            rows.append(
                {"source": src.name, "kind": src.kind, "license": src.license, "cached": False}
                | {"documents": 0, "rejected": 0, "bytes": 0, "erased": "all"}
            )
            continue
        ctx.progress(i, len(cfg.sources), f"reading source {src.name} ({src.kind}: {src.path})")
        extra = {
            "fingerprint": fps[src.name],
            "shards": [cfg.shard_docs, cfg.shard_mb],
            "min_chars": cfg.min_chars,
        }
        if applies is not None:
            extra["erased"] = applies
        key = step_key(SOURCE_STEP, VERSION, src, extra=extra, code=ctx.code)
        manifest = ctx.store.manifest(SOURCE_STEP, key)
        cached = manifest is not None
        if manifest is None:
            manifest = {"source": src.name, "extra": extra}
            with ctx.store.write(SOURCE_STEP, key, manifest) as part:
                manifest["stats"] = read_into_shards(
                    src, cfg, part, lambda m, i=i: ctx.progress(i, len(cfg.sources), m), rules
                )
        part = ctx.store.local_path((SOURCE_STEP, key))
        for sub in shards:
            for f in sorted((part / sub).glob("part-*.parquet")):
                _link(f, ctx.out / sub / f"part-{shards[sub]:05d}.parquet")
                shards[sub] += 1
        st = manifest["stats"]
        n_erased = st.get("erased", 0)
        if n_erased:
            erased[src.name] = n_erased
        if st["documents"] == 0 and not n_erased:
            empty.append(_no_documents(src, st, part / "rejects"))
        by_license[src.license] += st["documents"]
        by_reason.update(st["rejects_by_reason"])
        rows.append(
            {"source": src.name, "kind": src.kind, "license": src.license, "cached": cached}
            | {k: st[k] for k in ("documents", "rejected", "bytes")}
            | {"erased": n_erased}
        )
    ctx.progress(len(cfg.sources), len(cfg.sources), "done")

    if empty:
        raise InputError("; ".join(empty))
    n_docs, n_rej, n_bytes = (sum(r[k] for r in rows) for k in ("documents", "rejected", "bytes"))
    if n_docs == 0:
        raise InputError(
            "every document of every source is erased (llmflow forget): add a source to ingest.sources"
        )
    ctx.table(rows, "sources")
    ctx.report(_report(rows, by_license, by_reason, n_docs, n_rej, n_bytes, shards["docs"]))
    return {
        "documents": n_docs,
        "rejected": n_rej,
        "bytes": n_bytes,
        "shards": shards["docs"],
        "reject_shards": shards["rejects"],
        "by_source": {r["source"]: r["documents"] for r in rows if r["erased"] != "all"},
        "by_license": {k: v for k, v in by_license.items() if v},
        "rejects_by_reason": dict(by_reason),
        "sources_cached": sum(r["cached"] for r in rows),
        "erased": erased,
    }


def _no_documents(src: SourceConfig, stats: dict[str, Any], rejects: Path) -> str:
    """One line: which source gave nothing, why its records were rejected, and what to change."""
    by_reason = sorted(stats["rejects_by_reason"].items(), key=lambda kv: (-kv[1], kv[0]))
    reasons = ", ".join(f"{k} {v:,}" for k, v in by_reason)
    hint = "its text_field" if "invalid:missing_field" in stats["rejects_by_reason"] else "its files"
    return (
        f"source {src.name!r} ({src.kind}: {src.path}) gave no documents: every record was rejected "
        f"({reasons}); check {hint} and the source's kind (rejects in {rejects})"
    )


def _report(
    rows: list[dict[str, Any]],
    by_license: Counter[str],
    by_reason: Counter[str],
    n_docs: int,
    n_rej: int,
    n_bytes: int,
    shards: int,
) -> str:
    lines = [
        "# Ingest",
        "",
        f"**{n_docs:,} documents** ({n_bytes / 1e6:.2f} MB of text, {shards} shards), **{n_rej:,} rejected**.",
        "",
        "| source | kind | licence | documents | rejected | erased |",
        "|---|---|---|---:|---:|---:|",
        *(
            f"| {r['source']} | {r['kind']} | {r['license']} | {r['documents']:,} | {r['rejected']:,} "
            f"| {r['erased'] if r['erased'] == 'all' else format(r['erased'], ',')} |"
            for r in rows
        ),
        "",
        "| licence | documents |",
        "|---|---:|",
        *(f"| {k} | {v:,} |" for k, v in sorted(by_license.items())),
    ]
    if by_reason:
        lines += ["", "| reject reason | records |", "|---|---:|"]
        lines += [f"| {k} | {v:,} |" for k, v in by_reason.most_common()]
    return "\n".join(lines) + "\n"


ingest = step_task("ingest", VERSION, ingest_step)
