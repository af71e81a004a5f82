"""The prepare step end to end on tiny synthetic corpora (no Prefect): accounting, reasons,
dedup with duplicate_of, decontamination, PII counts, split, bad input, incremental dedup."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmflow.config import PrepareConfig
from llmflow.step import run_step
from llmflow.store import StepRef
from tasks.doc_pipeline import in_validation, process_table
from tasks.prepare import VERSION, prepare_step

WORDS = [
    "the",
    "parser",
    "reads",
    "a",
    "configuration",
    "file",
    "and",
    "returns",
    "a",
    "mapping",
    "of",
    "section",
    "names",
    "to",
    "values",
    "with",
    "defaults",
    "applied",
    "when",
    "a",
    "key",
    "is",
    "missing",
    "so",
    "that",
    "callers",
    "can",
    "rely",
    "on",
    "every",
    "option",
    "having",
    "a",
    "value",
    "and",
    "errors",
    "in",
    "the",
    "file",
    "are",
    "reported",
    "with",
    "the",
    "line",
    "number",
    "where",
    "they",
    "occur",
]


def prose(seed: int, n: int = 90) -> str:
    """Deterministic English-like paragraphs that pass the default quality filters."""
    out, k = [], seed
    for s in range(n // 15):
        sent = []
        for _ in range(15):
            k = (k * 1103515245 + 12345) % (1 << 31)
            sent.append(WORDS[k % len(WORDS)])
        out.append(" ".join(sent).capitalize() + f" number {seed} {s}.")
    return "\n".join(out)


def make_inputs(store, docs: list[dict], task_rows: dict[str, list[dict]] | None = None, name: str = "a"):
    rows = {
        "id": [d["id"] for d in docs],
        "text": [d["text"] for d in docs],
        "source": [d.get("source", "src") for d in docs],
        "meta": [json.dumps({"license": d.get("license", "MIT")}) for d in docs],
    }
    with store.write("ingest", f"ingest-{name}") as out:
        (out / "docs").mkdir()
        half = max(len(docs) // 2, 1)
        t = pa.table(rows)
        pq.write_table(t.slice(0, half), out / "docs" / "part-00000.parquet")
        pq.write_table(t.slice(half), out / "docs" / "part-00001.parquet")
    inputs = {
        "docs": StepRef(
            step="ingest", key=f"ingest-{name}", uri=store.artifact_path("ingest", f"ingest-{name}")
        )
    }
    if task_rows is not None:
        with store.write("task_data", f"task-{name}") as out:
            for split, items in task_rows.items():
                (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
        inputs["task"] = StepRef(
            step="task_data", key=f"task-{name}", uri=store.artifact_path("task_data", f"task-{name}")
        )
    return inputs


def read(ref_dir, split):
    return pq.read_table(ref_dir / split).to_pylist()


@pytest.fixture
def corpus():
    docs = [{"id": f"d{i}", "text": prose(i), "source": "web" if i % 2 else "books"} for i in range(40)]
    docs.append({"id": "exact", "text": docs[3]["text"].upper()})  # exact dup (case-insensitive key)
    near = docs[5]["text"].split()
    near[10] = "changed"
    docs.append({"id": "near", "text": " ".join(near)})
    docs.append({"id": "short", "text": "Too short to keep."})
    docs.append(
        {
            "id": "german",
            "text": "Der schnelle braune Fuchs springt über den faulen Hund und die Katze. " * 12,
        }
    )
    docs.append(
        {"id": "pii", "text": prose(99) + "\nWrite to jane.roe@example.org or call +1 415 555 0132 today."}
    )
    docs.append(
        {
            "id": "contam",
            "text": prose(77)
            + "\n"
            + "the secret test answer is forty two and nobody should train on this sentence at all",
        }
    )
    docs.append({"id": "toxic", "text": prose(55) + " fuck shit fuck shit fuck shit fuck shit"})
    docs.append({"id": "empty", "text": ""})
    docs.append({"id": "junk", "text": "\x00\x01\x02\ufffd" * 500})
    docs.append({"id": "mojibake", "text": prose(11).replace("parser", "cafÃ© parser")})
    return docs


def run(store, inputs, cfg=None, **kw):
    cfg = cfg or PrepareConfig()
    ref = run_step("prepare", VERSION, prepare_step, cfg, inputs, store=store, **kw)
    return ref, store.local_path(ref)


def test_prepare_accounts_for_every_document(store, corpus):
    task = {
        "test": [
            {
                "id": "t1",
                "prompt": "What is the answer?",
                "response": "the secret test answer is forty two and nobody should train on this",
                "group": "g",
            }
        ],
        "validation": [{"id": "v1", "prompt": "short", "response": "ok", "group": "g"}],
    }
    ref, out = run(store, make_inputs(store, corpus, task))
    s = ref.stats
    train, val, rej = read(out, "train"), read(out, "validation"), read(out, "rejects")
    kept_ids = [r["id"] for r in train + val]
    all_out = kept_ids + [r["id"] for r in rej]
    assert sorted(all_out) == sorted(d["id"] for d in corpus)  # input = kept + rejected, by id
    assert s["input"] == len(corpus) == s["kept"] + s["rejected"]
    reason = {r["id"]: r for r in rej}
    assert reason["exact"]["reason"] == "dedup" and reason["exact"]["duplicate_of"] == "d3"
    assert reason["near"]["reason"] == "dedup" and reason["near"]["duplicate_of"] == "d5"
    assert reason["short"]["reason"] == "filter:gopher_min_words"
    assert reason["german"]["reason"] == "filter:gopher_stop_words"  # Gopher runs before language ID
    assert reason["contam"]["reason"] == "decontaminated"
    assert reason["toxic"]["reason"] == "filter:toxicity"
    assert reason["empty"]["reason"] == "filter:empty"
    assert reason["junk"]["reason"].startswith("filter:")
    moji = next(r for r in train + val if r["id"] == "mojibake")  # repaired, not dropped
    assert "café" in moji["text"] and "Ã" not in moji["text"]
    pii_row = next(r for r in train + val if r["id"] == "pii")
    assert "<EMAIL>" in pii_row["text"] and "<PHONE>" in pii_row["text"] and "jane.roe" not in pii_row["text"]
    assert s["pii"]["email"] == 1 and s["pii"]["phone"] == 1
    assert s["rejects_by_reason"]["dedup"] == 2 and s["dedup"] == {**s["dedup"], "exact": 1, "near": 1}
    assert all(step["status"] == "ran" for step in s["steps"].values())
    assert s["steps"]["toxicity"]["dropped"] == {"filter:toxicity": 1}
    assert s["steps"]["decontaminate"]["dropped"] == {"decontaminated": 1}
    assert s["steps"]["dedup_exact"]["dropped"] == s["steps"]["dedup_minhash"]["dropped"] == {"dedup": 1}
    assert s["minhash"]["bands"] * s["minhash"]["rows"] <= 112
    assert {r["lang"] for r in train + val} == {"en"} and all(r["lang_score"] > 0.5 for r in train + val)
    assert all(r["q_words"] >= 50 for r in train + val)
    assert s["by_source"]["books"]["kept"] > 0 and s["by_license"]["MIT"]["kept"] == s["kept"]
    assert s["train_docs"] + s["validation_docs"] == s["kept"] and s["train_bytes"] > 0
    assert all(in_validation(r["id"], 0.02) for r in val) and not any(
        in_validation(r["id"], 0.02) for r in train
    )
    assert all(len(r["text"]) <= 2000 for r in rej)
    report = (out / "report.md").read_text()
    assert "filter:toxicity" in report and "duplicate of `d3`" in report


def test_sub_step_error_is_rejected_not_raised(store, corpus, monkeypatch):
    import tasks.doc_pipeline as prep

    def boom(text, types):
        if "number 7 " in text:
            raise RuntimeError("pii exploded")
        return (
            prep.redact.__wrapped__(text, types) if hasattr(prep.redact, "__wrapped__") else real(text, types)
        )

    real = prep.redact
    monkeypatch.setattr(prep, "redact", boom)
    ref, out = run(store, make_inputs(store, corpus[:10], name="err"))
    rej = {r["id"]: r["reason"] for r in read(out, "rejects")}
    assert rej["d7"] == "error:pii"
    assert ref.stats["errors"] == 1 and ref.stats["input"] == ref.stats["kept"] + ref.stats["rejected"]


def test_bad_input_does_not_crash():
    """Empty, binary junk, a huge single line, 400k words, lone surrogates, mixed scripts."""
    from tasks.doc_pipeline import DocPipeline, Rejected

    texts = [
        "",
        "\x00\x01\x02" * 100,
        "a" * 3_000_000,
        "word " * 400_000,
        prose(3).replace("parser", "pars\ud800er"),
        "日本語のテキスト and English mixed. " * 50,
    ]
    pipe = DocPipeline(PrepareConfig())
    out = []
    for text in texts:
        try:
            out.append(pipe(text))
        except Rejected as r:
            out.append(r.reason)
    assert out[0] == "filter:empty" and out[1] == "filter:empty"
    assert out[2] == "filter:max_chars"
    assert out[3].startswith("filter:gopher_")
    assert isinstance(out[4], dict) and "\ufffd" in out[4]["text"]  # lone surrogate replaced, kept
    out[4]["text"].encode("utf-8")  # writable
    assert isinstance(out[5], str) and out[5].startswith("filter:")


def test_incremental_dedup_against_previous_artifact(store):
    docs = [{"id": f"d{i}", "text": prose(i)} for i in range(10)]
    first, first_dir = run(store, make_inputs(store, docs, name="one"))
    assert (first_dir / "dedup" / "index.parquet").exists()
    new = [{"id": "copy", "text": prose(4)}, {"id": "fresh", "text": prose(1234)}]
    inputs = make_inputs(store, new, name="two")
    inputs["previous"] = first
    ref, out = run(store, inputs)
    rej = {r["id"]: r for r in read(out, "rejects")}
    assert rej["copy"]["reason"] == "dedup" and rej["copy"]["duplicate_of"] == "d4"
    assert ref.stats["kept"] == 1 and ref.stats["dedup"]["previous_index_docs"] == 10


def test_parallel_workers_give_the_same_result(store, corpus):
    a, a_dir = run(store, make_inputs(store, corpus, name="p1"))
    cfg = PrepareConfig(workers=2)
    b, b_dir = run(store, make_inputs(store, corpus, name="p1"), cfg=cfg)
    for split in ("train", "validation", "rejects"):
        assert sorted(r["id"] for r in read(a_dir, split)) == sorted(r["id"] for r in read(b_dir, split))
    assert a.stats["rejects_by_reason"] == b.stats["rejects_by_reason"]


def test_process_table_is_pure_and_switchable():
    cfg = PrepareConfig.model_validate(
        {
            "quality": {"enabled": False},
            "langid": {"enabled": False},
            "toxicity": {"enabled": False},
            "pii": {"enabled": False},
        }
    )
    t = pa.table(
        {"id": ["a", "b"], "text": ["tiny", "ja テキスト"], "source": ["s", "s"], "meta": ["{}", "{}"]}
    )
    kept, rejects, counts = process_table(t, cfg)
    assert kept.num_rows == 2 and rejects.num_rows == 0 and counts["input"] == 2
    assert kept.column("lang").to_pylist() == ["und", "und"]
