"""One reject shape for the data steps: every dropped record keeps where it came from.

`ingest` (a record it cannot read) and `prepare` (a document a filter, language ID,
decontamination or dedup drops) write rejects with `REJECT_SCHEMA`:

    id, source, license, file, line, row   the origin: source name and licence, the file (path
                                           relative to the source, or the dataset name), the
                                           1-based line of a JSONL file or the 0-based row of a
                                           Parquet/CSV/Hugging Face table (null where the whole
                                           file is one record)
    reason, duplicate_of, value            why: `invalid:<why>`, `filter:<name>`, `decontaminated`,
                                           `dedup` (+ the kept document it duplicates), `error:<step>`
    meta, text                             the record's meta JSON and its text cut to 2,000 chars

The origin columns are read from the meta that ingest's readers record (`tasks/readers.py`), so a
reject of any step leads back to its file and line without the input at hand. `stage_of` names the
stage that rejected a reason (the data report counts rejects by source, licence and stage).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

REJECT_TEXT_CHARS = 2000
REJECT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("license", pa.string()),
        ("file", pa.string()),
        ("line", pa.int64()),
        ("row", pa.int64()),
        ("reason", pa.string()),
        ("duplicate_of", pa.string()),
        ("value", pa.float64()),
        ("meta", pa.string()),
        ("text", pa.string()),
    ]
)
STAGES = ("ingest", "quality", "langid", "toxicity", "decontaminate", "dedup", "error")


def origin(meta: str | dict[str, Any] | None) -> dict[str, Any]:
    """license, file, line and row of a record from its meta (a JSON string or a dict)."""
    if isinstance(meta, str) or meta is None:
        try:
            meta = json.loads(meta or "{}")
        except ValueError:
            meta = {}
    if not isinstance(meta, dict):
        meta = {}
    file = meta.get("path") or meta.get("dataset")
    line, row = meta.get("line"), meta.get("row")
    return {
        "license": str(meta.get("license") or "unknown"),
        "file": None if file is None else str(file),
        "line": line if isinstance(line, int) else None,
        "row": row if isinstance(row, int) else None,
    }


def reject_row(
    doc_id: str,
    source: str,
    reason: str,
    meta: str | None,
    text: str | None,
    duplicate_of: str | None = None,
    value: float | None = None,
) -> dict[str, Any]:
    """One reject, its origin read from `meta`, its text cut and made writable (valid UTF-8)."""
    text = (text or "")[:REJECT_TEXT_CHARS].encode("utf-8", "replace").decode("utf-8")
    return {
        "id": doc_id,
        "source": source,
        **origin(meta),
        "reason": reason,
        "duplicate_of": duplicate_of,
        "value": value,
        "meta": meta,
        "text": text,
    }


def reject_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)


def stage_of(reason: str) -> str:
    """The stage that rejects with `reason` (one of `STAGES`, or "other")."""
    if reason.startswith("invalid:"):
        return "ingest"
    if reason == "dedup":
        return "dedup"
    if reason == "decontaminated":
        return "decontaminate"
    if reason == "filter:toxicity":
        return "toxicity"
    if reason.startswith(("filter:lang:", "filter:lang_score:")):
        return "langid"
    if reason.startswith("error:"):
        return "error"
    if reason.startswith("filter:"):
        return "quality"  # filter:empty, filter:max_chars and the QualityFilter rules
    return "other"
