"""Streaming readers for the ingest step: one generator of `Record`s per source.

Contract: every input record comes out exactly once, either as a document (`reason is None`) or
as an invalid record whose `reason` is `invalid:<why>`:

* `invalid:decode`        bytes that are not UTF-8
* `invalid:json`          a JSONL line that is not a JSON object
* `invalid:missing_field` the text field is absent or null (per row; per file when a
                          Parquet/CSV/HF schema lacks the column)
* `invalid:type`          the text field is not a string
* `invalid:empty`         empty or whitespace-only text, or a file with no records at all
* `invalid:read`          a file or dataset that cannot be opened (corrupt Parquet, bad HF path)
* `invalid:csv`           a CSV row that is not well-formed, e.g. a stray quote, or a quote never
                          closed, which would swallow the rows after it: the reject holds the
                          raw lines, and reading resumes at the next line

Readers never raise on bad data and never hold a whole corpus: text files are read one at a
time, JSONL and CSV line by line, Parquet by record batches, Hugging Face datasets as iterables.
Blank lines of a JSONL file are separators, not records. A source that matches no files at all
is a configuration error and raises `InputError` naming the source.
"""

from __future__ import annotations

import csv
import glob as globlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import takewhile
from pathlib import Path
from typing import Any

from llmflow.config import InputError, SourceConfig

DEFAULT_GLOBS = {
    "text": ["**/*.txt", "**/*.md"],
    "jsonl": ["**/*.jsonl"],
    "parquet": ["**/*.parquet"],
    "csv": ["**/*.csv"],
}
BATCH_ROWS = 1024
BAD_ROW_CHARS = 1_000_000  # raw text kept for a malformed CSV row (a runaway quote can span a file)
SCALAR = (str, int, float, bool, type(None))


@dataclass
class Record:
    """One input record: a document when `reason` is None, otherwise an invalid record."""

    location: str  # where it came from, stable across machines (relative path + line/row)
    text: str | None
    meta: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


# --------------------------------------------------------------------------- files


def resolve_files(path: str, kind: str, pattern: str | None = None) -> list[tuple[Path, str]]:
    """(absolute file, location name) for a file, a folder (recursive glob) or a glob pattern."""
    p = Path(path).expanduser()
    if p.is_file():
        return [(p.resolve(), p.name)]
    if p.is_dir():
        patterns = [pattern] if pattern else DEFAULT_GLOBS.get(kind, ["**/*"])
        found = {f.resolve() for pat in patterns for f in p.glob(pat) if f.is_file()}
        return [(f, f.relative_to(p.resolve()).as_posix()) for f in sorted(found)]
    if globlib.has_magic(path):
        found = sorted({Path(f).resolve() for f in globlib.glob(str(p), recursive=True) if Path(f).is_file()})
        base = Path(_glob_base(str(p))).resolve()
        return [(f, _relative(f, base)) for f in found]
    raise FileNotFoundError(f"no such file, folder or glob: {path}")


def _glob_base(pattern: str) -> str:
    """The folder part of a glob before its first wildcard: locations are relative to it."""
    keep = list(takewhile(lambda q: not globlib.has_magic(q), Path(pattern).parts))
    return str(Path(*keep)) if keep else "."


def _relative(f: Path, base: Path) -> str:
    try:
        return f.relative_to(base).as_posix()
    except ValueError:
        return f.as_posix()


def _scalars(row: dict[str, Any], skip: str) -> dict[str, Any]:
    """The other scalar fields of a row, kept in meta (lists/dicts are dropped from meta)."""
    return {k: v for k, v in row.items() if k != skip and isinstance(v, SCALAR)}


def _check_text(value: Any, loc: str, meta: dict[str, Any]) -> Record:
    if value is None:
        return Record(loc, None, meta, "invalid:missing_field")
    if not isinstance(value, str):
        return Record(loc, repr(value)[:2000], meta, "invalid:type")
    if not value.strip():
        return Record(loc, value, meta, "invalid:empty")
    if _has_surrogates(value):  # undecodable bytes smuggled through surrogateescape
        return Record(loc, value.encode("utf-8", "replace").decode(), meta, "invalid:decode")
    return Record(loc, value, meta)


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def read_text_file(f: Path, name: str, base_meta: dict[str, Any]) -> Iterator[Record]:
    meta = {**base_meta, "path": name, "file": str(f)}
    try:
        raw = f.read_bytes()
    except OSError as e:
        yield Record(name, None, {**meta, "error": str(e)}, "invalid:read")
        return
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        yield Record(name, raw.decode("utf-8", "replace"), {**meta, "error": str(e)}, "invalid:decode")
        return
    yield _check_text(text, name, meta)


def read_jsonl_file(f: Path, name: str, base_meta: dict[str, Any], text_field: str) -> Iterator[Record]:
    n = 0
    with open(f, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            n += 1
            loc = f"{name}:{lineno}"
            meta = {**base_meta, "path": name, "file": str(f), "line": lineno}
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                yield Record(loc, raw.decode("utf-8", "replace"), meta, "invalid:decode")
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield Record(loc, line, {**meta, "error": str(e)}, "invalid:json")
                continue
            if not isinstance(row, dict):
                yield Record(loc, line, {**meta, "error": "line is not a JSON object"}, "invalid:json")
                continue
            yield _check_text(row.get(text_field), loc, {**_scalars(row, text_field), **meta})
    if n == 0:
        yield Record(name, "", {**base_meta, "path": name, "file": str(f)}, "invalid:empty")


def _rows_from_batches(
    batches: Iterator[list[dict[str, Any]]], name: str, meta: dict[str, Any], text_field: str, unit: str
) -> Iterator[Record]:
    n = 0
    for rows in batches:
        for row in rows:
            loc = f"{name}:{n}"
            yield _check_text(row.get(text_field), loc, {**_scalars(row, text_field), **meta, unit: n})
            n += 1
    if n == 0:
        yield Record(name, "", meta, "invalid:empty")


def read_parquet_file(f: Path, name: str, base_meta: dict[str, Any], text_field: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    meta = {**base_meta, "path": name, "file": str(f)}
    try:
        pf = pq.ParquetFile(f)
    except Exception as e:  # corrupt or not Parquet at all
        yield Record(name, None, {**meta, "error": f"{type(e).__name__}: {e}"}, "invalid:read")
        return
    if text_field not in pf.schema_arrow.names:
        err = f"column {text_field!r} not in {pf.schema_arrow.names}"
        yield Record(
            name, None, {**meta, "rows": pf.metadata.num_rows, "error": err}, "invalid:missing_field"
        )
        return
    batches = (b.to_pylist() for b in pf.iter_batches(batch_size=BATCH_ROWS))
    yield from _rows_from_batches(batches, name, meta, text_field, "row")


class _Lines:
    """A file's lines, keeping those read since `mark()`: the raw text of a row csv rejects."""

    def __init__(self, fh: Any):
        self.fh = fh
        self.kept: list[str] = []
        self.chars = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self.fh)
        if self.chars < BAD_ROW_CHARS:
            self.kept.append(line[: BAD_ROW_CHARS - self.chars])
            self.chars += len(self.kept[-1])
        return line

    def mark(self) -> None:
        self.kept, self.chars = [], 0

    def text(self) -> str:
        return "".join(self.kept)


def read_csv_file(f: Path, name: str, base_meta: dict[str, Any], text_field: str) -> Iterator[Record]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents in one field
    meta = {**base_meta, "path": name, "file": str(f)}
    # surrogateescape keeps undecodable bytes in the row, so one bad row is one reject
    with open(f, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        lines = _Lines(fh)
        # strict: a quote left open fails at the end of the file instead of silently merging
        # every row after it into one field; a stray quote fails its row instead of being dropped
        reader = csv.DictReader(lines, strict=True)
        try:
            header = reader.fieldnames
        except csv.Error as e:
            yield Record(name, None, {**meta, "error": str(e)}, "invalid:read")
            return
        if header is None:
            yield Record(name, "", meta, "invalid:empty")
            return
        if text_field not in header:
            err = f"column {text_field!r} not in {header}"
            yield Record(name, None, {**meta, "error": err}, "invalid:missing_field")
            return
        n = 0
        while True:
            lines.mark()
            first = reader.reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                last = reader.reader.line_num
                span = f"{first}-{last}" if last > first else str(first)
                err = f"{e} (lines {span})"
                text = lines.text().encode("utf-8", "replace").decode()
                yield Record(
                    f"{name}:{n}", text, {**meta, "row": n, "lines": span, "error": err}, "invalid:csv"
                )
                n += 1
                continue
            loc = f"{name}:{n}"
            fields = {k: v for k, v in row.items() if isinstance(k, str) and not _has_surrogates(str(v))}
            yield _check_text(row.get(text_field), loc, {**_scalars(fields, text_field), **meta, "row": n})
            n += 1
        if n == 0:
            yield Record(name, "", meta, "invalid:empty")


# --------------------------------------------------------------------------- Hugging Face


def _open_hf(src: SourceConfig):
    """An iterable over the split: a `save_to_disk` folder, local data files, or a hub dataset."""
    import datasets

    p = Path(src.path).expanduser()
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()):
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if src.split not in ds:
                raise KeyError(f"split {src.split!r} not in {list(ds)}")
            ds = ds[src.split]
        return ds
    if p.is_file():
        builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
        if p.suffix not in builder:
            raise ValueError(f"cannot load {p.suffix} files with datasets (use jsonl/json/csv/parquet/txt)")
        return datasets.load_dataset(
            builder[p.suffix], data_files={src.split: str(p)}, split=src.split, streaming=True
        )
    # a local data folder or a hub name: streaming keeps memory bounded and writes no cache
    return datasets.load_dataset(src.path, src.hf_config, split=src.split, streaming=True)


def read_hf(src: SourceConfig, base_meta: dict[str, Any]) -> Iterator[Record]:
    meta = {**base_meta, "dataset": src.path, "split": src.split}
    try:
        ds = _open_hf(src)
        cols = getattr(ds, "column_names", None)
    except Exception as e:  # no network, bad name, missing split: one reject, not a traceback
        yield Record(src.path, None, {**meta, "error": f"{type(e).__name__}: {e}"}, "invalid:read")
        return
    if cols is not None and src.text_field not in cols:
        err = f"column {src.text_field!r} not in {cols}"
        yield Record(src.path, None, {**meta, "error": err}, "invalid:missing_field")
        return

    def batches() -> Iterator[list[dict[str, Any]]]:
        buf: list[dict[str, Any]] = []
        for row in ds:
            buf.append(row)
            if len(buf) >= BATCH_ROWS:
                yield buf
                buf = []
        yield buf

    try:
        yield from _rows_from_batches(batches(), src.path, meta, src.text_field, "row")
    except Exception as e:  # a stream that breaks mid-way (network, corrupt shard)
        yield Record(f"{src.path}:error", None, {**meta, "error": f"{type(e).__name__}: {e}"}, "invalid:read")


# --------------------------------------------------------------------------- dispatch


def _read_all(src: SourceConfig) -> Iterator[Record]:
    base = {"source": src.name, "license": src.license}
    if src.kind == "builtin":
        if src.path != "pydocs":
            raise InputError(f"source {src.name!r}: unknown builtin corpus {src.path!r} (known: pydocs)")
        from tasks import pydocs

        for loc, text, meta in pydocs.iter_documents(src.include_packages):
            yield _check_text(text, loc, {**meta, **base})
        return
    if src.kind == "hf":
        yield from read_hf(src, base)
        return
    try:
        files = resolve_files(src.path, src.kind, src.glob)
    except FileNotFoundError as e:
        raise InputError(f"source {src.name!r}: {e}: fix its path in ingest.sources") from None
    if not files:
        raise InputError(
            f"source {src.name!r}: no {src.kind} files under {src.path} "
            f"(glob {src.glob or DEFAULT_GLOBS.get(src.kind)}): fix its path or glob in ingest.sources"
        )
    for f, name in files:
        if src.kind == "text":
            yield from read_text_file(f, name, base)
        elif src.kind == "jsonl":
            yield from read_jsonl_file(f, name, base, src.text_field)
        elif src.kind == "parquet":
            yield from read_parquet_file(f, name, base, src.text_field)
        elif src.kind == "csv":
            yield from read_csv_file(f, name, base, src.text_field)


def read_source(src: SourceConfig) -> Iterator[Record]:
    """All records of one source, documents and invalid ones, stopping after `limit` documents."""
    docs = 0
    for rec in _read_all(src):
        yield rec
        docs += rec.ok
        if src.limit is not None and docs >= src.limit:
            return


__all__ = ["Record", "read_source", "resolve_files", "DEFAULT_GLOBS"]
