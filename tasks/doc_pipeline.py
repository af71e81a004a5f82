"""Phase 1 of `prepare`: the per-document chain and the per-shard work around it.

    normalize -> quality filters -> language ID -> toxicity -> decontaminate -> PII redaction
    -> exact hash, MinHash signature and shingles (the global dedup's work columns)

Each sub-step is switchable in `PrepareConfig`. `process_shard` is a pure function of one input
shard, so a mapped Prefect task or a process pool can run shards in parallel with memory bounded
by the shard size: it writes the survivors (+ signals and work columns) and the rejects of one
shard and returns small counts. A sub-step that raises on one document rejects it as
``error:<step>`` and the run goes on. `in_validation` is the train/validation split, by id hash.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from llmflow.config import PrepareConfig
from tasks.decontaminate import Decontaminator
from tasks.dedup import exact_hash
from tasks.filters import QualityFilter
from tasks.langid import LangFilter
from tasks.minhash import Signer, shingles
from tasks.normalize import normalize
from tasks.pii import redact
from tasks.rejects import reject_row, reject_table
from tasks.toxicity import ToxicityFilter

# Quality signals kept as columns on every kept document (q_<name>).
SIGNALS = (
    "words", "mean_word_length", "symbol_word_ratio", "alpha_words_ratio", "stop_words",
    "dup_line_frac", "top_2gram_char_frac", "line_punct_ratio", "short_line_ratio",
)  # fmt: skip
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
    rej: list[dict[str, Any]] = []
    pii: Counter[str] = Counter()
    cols = table.to_pydict()
    for doc_id, text, source, meta in zip(
        cols["id"], cols["text"], cols["source"], cols["meta"], strict=True
    ):
        try:
            row = pipe(text)
        except Rejected as r:
            rej.append(
                reject_row(
                    doc_id, source, r.reason, meta, text if isinstance(text, str) else "", value=r.value
                )
            )
            continue
        pii.update(row.pop("pii_counts"))
        row.update(id=doc_id, source=source, meta=meta)
        for f in OUT_SCHEMA.names + ["_exact", "_sig", "_shingles"]:
            kept[f].append(row.get(f))
    schema = _work_schema(num_perm)
    kept_t = pa.table({f.name: pa.array(kept.get(f.name, []), f.type) for f in schema}, schema=schema)
    rej_t = reject_table(rej)
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
