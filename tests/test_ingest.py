"""Readers and the ingest step: every record is a document or a reject with `invalid:<why>`."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmflow.config import IngestConfig, InputError, SourceConfig
from llmflow.step import run_step
from llmflow.store import ArtifactStore
from tasks.ingest import ingest_step
from tasks.readers import read_source

LONG = "The quick brown fox jumps over the lazy dog. " * 3


def records(**kw):
    src = SourceConfig(name=kw.pop("name", "s"), **kw)
    return list(read_source(src))


def reasons(recs):
    return sorted(r.reason for r in recs if not r.ok)


# --------------------------------------------------------------------------- readers


def test_text_folder_is_recursive_and_picks_txt_and_md(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("first document")
    (tmp_path / "two.md").write_text("# second\n\ndocument")
    (tmp_path / "skip.py").write_text("print('not text')")
    recs = records(kind="text", path=str(tmp_path), license="CC-BY-4.0")
    assert [r.meta["path"] for r in recs] == ["a/one.txt", "two.md"]
    assert all(r.ok for r in recs)
    assert recs[0].text == "first document"
    assert recs[0].meta["license"] == "CC-BY-4.0"
    assert recs[0].meta["file"] == str((tmp_path / "a" / "one.txt").resolve())


def test_text_glob_option_and_glob_path(tmp_path: Path):
    (tmp_path / "x.txt").write_text("x text")
    (tmp_path / "y.md").write_text("y text")
    assert [r.text for r in records(kind="text", path=str(tmp_path), glob="*.md")] == ["y text"]
    assert [r.text for r in records(kind="text", path=str(tmp_path / "*.txt"))] == ["x text"]
    assert [r.text for r in records(kind="text", path=str(tmp_path / "x.txt"))] == ["x text"]


def test_text_invalid_decode_and_empty(tmp_path: Path):
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 latin-1 bytes \xff\xfe")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.md").write_text("  \n\n ")
    recs = records(kind="text", path=str(tmp_path))
    by_path = {r.meta["path"]: r.reason for r in recs}
    assert by_path == {"bad.txt": "invalid:decode", "blank.md": "invalid:empty", "empty.txt": "invalid:empty"}
    bad = next(r for r in recs if r.meta["path"] == "bad.txt")
    assert "caf" in bad.text  # kept (with replacement characters) for the rejects file


def test_jsonl_fields_and_every_invalid_kind(tmp_path: Path):
    lines = [
        json.dumps({"body": "good one", "lang": "en", "tags": ["x"]}).encode(),
        b'{"body": "unterminated',
        json.dumps({"other": "no body"}).encode(),
        json.dumps({"body": 42}).encode(),
        json.dumps({"body": "   "}).encode(),
        b"",  # blank separator line: not a record
        b'{"body": "bad \xff byte"}',
        json.dumps(["not", "an", "object"]).encode(),
        json.dumps({"body": "good two"}).encode(),
    ]
    f = tmp_path / "d.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    recs = records(kind="jsonl", path=str(f), text_field="body", license="MIT")
    assert len(recs) == 8  # every non-blank line: kept or rejected, never dropped
    assert [r.text for r in recs if r.ok] == ["good one", "good two"]
    assert reasons(recs) == sorted(
        [
            "invalid:json",
            "invalid:missing_field",
            "invalid:type",
            "invalid:empty",
            "invalid:decode",
            "invalid:json",
        ]
    )
    first = recs[0]
    assert first.meta["line"] == 1 and first.meta["lang"] == "en" and "tags" not in first.meta
    assert first.meta["license"] == "MIT"
    assert recs[1].meta["line"] == 2 and "error" in recs[1].meta


def test_empty_jsonl_file_is_rejected(tmp_path: Path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    recs = records(kind="jsonl", path=str(tmp_path))
    assert [(r.reason, r.meta["path"]) for r in recs] == [("invalid:empty", "e.jsonl")]


def test_parquet_reader_streams_batches(tmp_path: Path):
    table = pa.table({"text": [f"doc {i}" for i in range(2500)] + [None, ""], "n": list(range(2502))})
    pq.write_table(table, tmp_path / "p.parquet", row_group_size=500)
    recs = records(kind="parquet", path=str(tmp_path))
    assert len(recs) == 2502
    assert recs[2499].text == "doc 2499" and recs[2499].meta["n"] == 2499 and recs[2499].meta["row"] == 2499
    assert reasons(recs) == ["invalid:empty", "invalid:missing_field"]


def test_parquet_wrong_type_missing_column_and_corrupt(tmp_path: Path):
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "nocol.parquet")
    (tmp_path / "corrupt.parquet").write_bytes(b"not parquet at all")
    recs = records(kind="parquet", path=str(tmp_path))
    assert reasons(recs) == ["invalid:missing_field", "invalid:read", "invalid:type", "invalid:type"]


def test_csv_reader_large_fields_and_bad_rows(tmp_path: Path):
    big = "word " * 100_000  # above csv's default 128 KB field limit
    f = tmp_path / "c.csv"
    f.write_bytes(
        b'text,label\n"multi\nline, quoted",a\n' + big.encode() + b",b\n,c\n" + b"bad \xff bytes,d\n"
    )
    recs = records(kind="csv", path=str(f))
    assert [r.text for r in recs if r.ok] == ["multi\nline, quoted", big]
    assert recs[0].meta["label"] == "a" and recs[0].meta["row"] == 0
    assert reasons(recs) == ["invalid:decode", "invalid:empty"]
    (tmp_path / "nocol.csv").write_text("body\nx\n")
    assert reasons(records(kind="csv", path=str(tmp_path / "nocol.csv"))) == ["invalid:missing_field"]


def test_csv_quote_never_closed_is_one_reject_not_merged_rows(tmp_path: Path):
    f = tmp_path / "q.csv"
    f.write_text('text,label\nfirst,a\n"open quote,b\nthird,c\nfourth,d\n')
    recs = records(kind="csv", path=str(f))
    assert [r.text for r in recs if r.ok] == ["first"]
    (bad,) = [r for r in recs if not r.ok]
    assert bad.reason == "invalid:csv" and bad.meta["lines"] == "3-5"
    assert bad.text == '"open quote,b\nthird,c\nfourth,d\n'  # the raw rows it swallowed, kept
    # a stray quote rejects its own row only; reading goes on at the next line
    f.write_text('text,label\n"stray" quote,a\nnext,b\n"fine, quoted\nover two lines",c\n')
    recs = records(kind="csv", path=str(f))
    assert [r.text for r in recs if r.ok] == ["next", "fine, quoted\nover two lines"]
    assert reasons(recs) == ["invalid:csv"] and recs[0].text == '"stray" quote,a\n'


def test_limit_counts_documents(tmp_path: Path):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"t{i}"}) for i in range(10)))
    assert len(records(kind="jsonl", path=str(f), limit=3)) == 3


def test_missing_path_is_an_input_error_naming_the_source(tmp_path: Path):
    with pytest.raises(InputError, match="source 's': no such file.*fix its path"):
        records(kind="text", path=str(tmp_path / "nope"))
    with pytest.raises(InputError, match="no text files"):
        records(kind="text", path=str(tmp_path))


def test_hf_save_to_disk_and_local_jsonl(tmp_path: Path):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"content": ["alpha doc", "beta doc", ""], "id": [1, 2, 3]}),
            "test": datasets.Dataset.from_dict({"content": ["held out"], "id": [9]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    recs = records(kind="hf", path=str(tmp_path / "saved"), text_field="content", license="Apache-2.0")
    assert [r.text for r in recs if r.ok] == ["alpha doc", "beta doc"]
    assert reasons(recs) == ["invalid:empty"]
    assert (
        recs[0].meta["id"] == 1
        and recs[0].meta["split"] == "train"
        and recs[0].meta["license"] == "Apache-2.0"
    )
    test = records(kind="hf", path=str(tmp_path / "saved"), text_field="content", split="test")
    assert [r.text for r in test] == ["held out"]

    f = tmp_path / "local.jsonl"
    f.write_text(json.dumps({"text": "from json"}) + "\n" + json.dumps({"text": "second"}) + "\n")
    assert [r.text for r in records(kind="hf", path=str(f))] == ["from json", "second"]
    assert reasons(records(kind="hf", path=str(f), text_field="nope")) == ["invalid:missing_field"]
    assert reasons(records(kind="hf", path=str(tmp_path / "saved"), split="nosuch")) == ["invalid:read"]


# --------------------------------------------------------------------------- the step


def _read_parquets(folder: Path) -> list[dict]:
    return [row for f in sorted(folder.glob("part-*.parquet")) for row in pq.read_table(f).to_pylist()]


def test_ingest_step_shards_rejects_stats_and_stable_ids(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "d.jsonl").write_text(
        "\n".join([json.dumps({"text": f"{LONG} number {i}"}) for i in range(23)] + ["{broken", '{"x": 1}'])
    )
    (data / "t").mkdir()
    (data / "t" / "a.txt").write_text("a text file")
    (data / "t" / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    cfg = IngestConfig(
        sources=[
            SourceConfig(name="j", kind="jsonl", path=str(data / "d.jsonl"), license="MIT"),
            SourceConfig(name="t", kind="text", path=str(data / "t"), license="CC0-1.0"),
        ],
        shard_docs=5,
    )
    store = ArtifactStore(tmp_path / "home")
    ref = run_step("ingest", 1, ingest_step, cfg, store=store)
    st = ref.stats
    assert st["documents"] == 24 and st["rejected"] == 3
    assert st["shards"] == 6  # per source, at most 5 per shard: 23 docs -> 5 shards, 1 doc -> 1
    assert st["by_source"] == {"j": 23, "t": 1}
    assert st["by_license"] == {"MIT": 23, "CC0-1.0": 1}
    assert st["rejects_by_reason"] == {"invalid:json": 1, "invalid:missing_field": 1, "invalid:decode": 1}
    assert store.manifest("ingest", ref.key)["stats"] == st

    out = store.local_path(ref)
    docs = _read_parquets(out / "docs")
    assert all(len(pq.read_table(f)) <= 5 for f in (out / "docs").glob("*.parquet"))
    assert len(docs) == 24 and len({d["id"] for d in docs}) == 24
    assert sum(len(d["text"].encode()) for d in docs) == st["bytes"]
    meta = json.loads(docs[0]["meta"])
    assert meta["license"] == "MIT" and meta["line"] == 1 and docs[0]["source"] == "j"
    rej = _read_parquets(out / "rejects")
    assert sorted(r["reason"] for r in rej) == ["invalid:decode", "invalid:json", "invalid:missing_field"]
    assert {"id", "source", "reason", "meta", "text"} <= set(rej[0])
    assert "Ingest" in (out / "report.md").read_text() and "CC0-1.0" in (out / "report.md").read_text()

    again = run_step("ingest", 1, ingest_step, cfg, store=ArtifactStore(tmp_path / "home2"))
    assert again.key == ref.key
    assert [d["id"] for d in _read_parquets(Path(again.uri) / "docs")] == [d["id"] for d in docs]
    assert run_step("ingest", 1, ingest_step, cfg, store=store).status == "cached"


def test_ingest_cuts_reject_text_and_fails_clearly_without_documents(tmp_path: Path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"text": 5}) + "\n" + "{" + "x" * 5000 + "\n")
    cfg = IngestConfig(sources=[SourceConfig(name="j", kind="jsonl", path=str(f))])
    with pytest.raises(InputError, match=r"source 'j' .* gave no documents.*invalid:json 1, invalid:type 1"):
        run_step("ingest", 1, ingest_step, cfg, store=ArtifactStore(tmp_path / "h"))
    f.write_text(json.dumps({"text": "fine"}) + "\n" + "{" + "x" * 5000 + "\n")
    ref = run_step("ingest", 1, ingest_step, cfg, store=ArtifactStore(tmp_path / "h"))
    rej = _read_parquets(Path(ref.uri) / "rejects")
    assert len(rej[0]["text"]) == 2000


def test_fingerprint_changes_when_source_files_change(tmp_path: Path):
    from tasks.ingest import fingerprint

    (tmp_path / "a.txt").write_text("one")
    cfg = IngestConfig(sources=[SourceConfig(name="t", kind="text", path=str(tmp_path))])
    first = fingerprint(cfg)
    assert fingerprint(cfg) == first
    (tmp_path / "b.md").write_text("two")
    second = fingerprint(cfg)
    assert second != first
    (tmp_path / "a.txt").write_text("one, edited")
    assert fingerprint(cfg) != second
    builtin = IngestConfig()
    assert fingerprint(builtin)["pydocs"].startswith("python-")


def test_adding_a_source_rereads_only_that_source(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "1.txt").write_text("first source text")
    (tmp_path / "b" / "2.txt").write_text("second source text")
    a = SourceConfig(name="a", kind="text", path=str(tmp_path / "a"), license="MIT")
    b = SourceConfig(name="b", kind="text", path=str(tmp_path / "b"), license="CC0-1.0")
    store = ArtifactStore(tmp_path / "home")
    one = run_step("ingest", 1, ingest_step, IngestConfig(sources=[a]), store=store)
    assert one.stats["sources_cached"] == 0
    two = run_step("ingest", 1, ingest_step, IngestConfig(sources=[a, b]), store=store)
    assert two.key != one.key and two.stats["sources_cached"] == 1
    assert two.stats["by_source"] == {"a": 1, "b": 1} and two.stats["by_license"] == {"MIT": 1, "CC0-1.0": 1}
    ids = [d["id"] for d in _read_parquets(Path(two.uri) / "docs")]
    assert ids[0] == _read_parquets(Path(one.uri) / "docs")[0]["id"] and len(ids) == 2
    (tmp_path / "a" / "1.txt").write_text("first source text, edited")
    three = run_step("ingest", 1, ingest_step, IngestConfig(sources=[a, b]), store=store, force=True)
    assert three.stats["sources_cached"] == 1  # a changed and is re-read; b is reused
    assert "edited" in _read_parquets(Path(three.uri) / "docs")[0]["text"]


def test_a_full_disk_mid_step_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch):
    import errno
    import os

    import tasks.ingest

    for i in range(3):
        (tmp_path / "src" / f"{i}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "src" / f"{i}.txt").write_text(f"document {i}")
    cfg = IngestConfig(
        sources=[SourceConfig(name="t", kind="text", path=str(tmp_path / "src"))], shard_docs=1
    )
    store = ArtifactStore(tmp_path / "home")
    write_table, calls = pq.write_table, []

    def second_write_fills_the_disk(table, where, **kw):
        calls.append(where)
        if len(calls) == 2:
            Path(where).write_bytes(b"PAR1 half a shard")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
        write_table(table, where, **kw)

    monkeypatch.setattr(tasks.ingest.pq, "write_table", second_write_fills_the_disk)
    with pytest.raises(OSError) as e:
        run_step("ingest", 1, ingest_step, cfg, store=store)
    assert e.value.errno == errno.ENOSPC
    artifacts = tmp_path / "home" / "artifacts"
    assert store.list("ingest") == [] and store.list("ingest_source") == []
    assert [p for p in artifacts.rglob("*") if p.is_file()] == []  # staging removed, shards included
    monkeypatch.undo()  # space freed: the next run builds it whole
    ref = run_step("ingest", 1, ingest_step, cfg, store=store)
    assert ref.status == "ran" and ref.stats["documents"] == 3
