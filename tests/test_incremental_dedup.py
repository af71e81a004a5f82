"""Incremental dedup across runs: a refresh dedups new documents against the persisted index of
the earlier runs, keeps what they kept, and counts each cluster's documents once."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_prepare import make_inputs, prose, read, run

from flows.data import data_flow
from llmflow.config import PipelineConfig
from llmflow.store import ArtifactStore, StepRef
from tasks.dedup_history import head


def near(text: str, k: int = 1) -> str:
    """`text` with `k` words changed: word-5-gram Jaccard 0.91 for k=1 (0.82 for k=2)."""
    words = text.split()
    for i in range(k):
        words[7 + 11 * i] = "changed"
    return " ".join(words)


def kept(out) -> dict[str, dict]:
    return {r["id"]: r for r in read(out, "train") + read(out, "validation")}


def test_a_refresh_drops_new_duplicates_of_earlier_runs_and_keeps_new_documents(store):
    old = [{"id": f"d{i}", "text": prose(i), "source": "web"} for i in range(12)]
    old.append({"id": "d5-copy", "text": prose(5).upper(), "source": "web"})  # run 1's own duplicate
    first, first_dir = run(store, make_inputs(store, old, name="one"))
    assert set(kept(first_dir)) == {f"d{i}" for i in range(12)}
    assert kept(first_dir)["d5"]["cluster_size"] == 2 and kept(first_dir)["d0"]["cluster_size"] == 1

    new = [
        {"id": "exact-of-d3", "text": prose(3).replace("\n", "  \n "), "source": "news"},
        {"id": "near-of-d7", "text": near(prose(7)), "source": "news"},
        {"id": "near-of-d5", "text": near(prose(5)), "source": "news"},
        {"id": "fresh-1", "text": prose(501), "source": "news"},
        {"id": "fresh-2", "text": prose(502), "source": "news"},
    ]
    # The new source comes first: without the index its copies would be kept and d3, d5, d7 dropped.
    inputs = make_inputs(store, new + old, name="two")
    alone, alone_dir = run(store, inputs)
    assert {"exact-of-d3", "near-of-d7"} <= set(kept(alone_dir)) and "d3" not in kept(alone_dir)

    inputs["previous"] = first
    second, out = run(store, inputs)
    rej = {r["id"]: r for r in read(out, "rejects")}
    assert rej["exact-of-d3"]["reason"] == "dedup" and rej["exact-of-d3"]["duplicate_of"] == "d3"
    assert rej["near-of-d7"]["duplicate_of"] == "d7" and rej["near-of-d5"]["duplicate_of"] == "d5"
    assert rej["d5-copy"]["duplicate_of"] == "d5"
    k = kept(out)
    assert set(k) == {f"d{i}" for i in range(12)} | {"fresh-1", "fresh-2"}  # run 1's kept stay kept
    assert all(r["cluster_id"] == i for i, r in k.items())
    sizes = {i: r["cluster_size"] for i, r in k.items()}
    assert sizes["d5"] == 3 and sizes["d3"] == 2 and sizes["d7"] == 2  # d5-copy counted once
    assert sizes["fresh-1"] == sizes["d0"] == 1
    d = second.stats["dedup"]
    assert d["previous_index_docs"] == 12 and d["previous_seen_again"] == 12
    assert d["duplicates_of_previous"] == 4 and d["index_docs"] == 14
    assert second.stats["minhash"]["verified_by_estimate"] == 0  # run 1's documents, read again, verify
    assert second.stats["input"] == second.stats["kept"] + second.stats["rejected"]

    # A third run on the same documents: nothing new, every cluster the same size.
    inputs3 = make_inputs(store, new + old, name="three")
    inputs3["previous"] = second
    _, out3 = run(store, inputs3)
    assert {i: r["cluster_size"] for i, r in kept(out3).items()} == sizes


def test_yesterdays_duplicate_stays_dropped_when_its_original_is_gone(store):
    """The index remembers what earlier runs kept, even when the corpus no longer holds it."""
    base = prose(42)
    docs = [{"id": "original", "text": base}] + [{"id": f"o{i}", "text": prose(i)} for i in range(5)]
    docs.append({"id": "copy", "text": near(base)})
    first, first_dir = run(store, make_inputs(store, docs, name="day1"))
    assert "copy" not in kept(first_dir)

    rotated = [d for d in docs if d["id"] != "original"]  # the source rotated the original out
    inputs = make_inputs(store, rotated, name="day2")
    _, without = run(store, inputs)
    assert "copy" in kept(without)  # a plain run re-admits it
    inputs["previous"] = first
    ref, out = run(store, inputs)
    rej = {r["id"]: r for r in read(out, "rejects")}
    assert rej["copy"]["reason"] == "dedup" and rej["copy"]["duplicate_of"] == "original"
    assert ref.stats["minhash"]["verified_by_estimate"] == 1  # the original's shingles are gone


def test_an_index_with_other_minhash_settings_is_refused(store):
    from llmflow.config import PrepareConfig

    docs = [{"id": f"d{i}", "text": prose(i)} for i in range(4)]
    first, _ = run(store, make_inputs(store, docs, name="a"))
    inputs = make_inputs(store, docs, name="b")
    inputs["previous"] = first
    cfg = PrepareConfig.model_validate({"dedup": {"minhash": {"num_perm": 128}}})
    with pytest.raises(ValueError, match="num_perm=112.*rebuild it without the previous index"):
        run(store, inputs, cfg=cfg)


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_data_flow_chains_incremental_runs_and_reuses_an_unchanged_one(tmp_path):
    """The data flow (data-refresh's) with incremental dedup: the second run takes the first's
    artifact as `previous`; a rerun with nothing new is a cache hit on the chain's head."""
    web = write_jsonl(tmp_path / "web.jsonl", [prose(i) for i in range(10)])
    task = tmp_path / "task.jsonl"
    task.write_text(
        "".join(json.dumps({"prompt": f"Q{i}?", "response": f"answer {i}"}) + "\n" for i in range(20))
    )
    home = str(tmp_path / "home")

    def cfg(*paths: Path) -> PipelineConfig:
        return PipelineConfig.model_validate(
            {
                "ingest": {"sources": [{"name": p.stem, "kind": "jsonl", "path": str(p)} for p in paths]},
                "task_data": {"source": str(task)},
                "prepare": {"dedup": {"incremental": True}, "decontaminate": {"enabled": False}},
            }
        )

    one = data_flow(config=cfg(web), home=home)
    store = ArtifactStore(home)
    assert head(store, "llmflow").key == one["prepare"]["key"]
    news = write_jsonl(tmp_path / "news.jsonl", [prose(3).upper(), near(prose(6)), prose(900)])
    two = data_flow(config=cfg(news, web), home=home)
    m = store.manifest("prepare", two["prepare"]["key"])
    assert m["inputs"]["previous"]["key"] == one["prepare"]["key"]
    assert head(store, "llmflow").key == two["prepare"]["key"]
    out = store.local_path(("prepare", two["prepare"]["key"]))
    rej = pq.read_table(
        out / "rejects", columns=["source", "file", "line", "reason", "duplicate_of"]
    ).to_pylist()
    dups = sorted(
        (r["file"], r["line"], r["duplicate_of"].split(":")[0]) for r in rej if r["reason"] == "dedup"
    )
    assert dups == [("news.jsonl", 1, "web"), ("news.jsonl", 2, "web")]
    assert two["prepare"]["stats"]["kept"] == 11

    three = data_flow(config=cfg(news, web), home=home)
    assert three["prepare"]["key"] == two["prepare"]["key"] and three["prepare"]["status"] == "cached"


def test_turning_incremental_on_reuses_every_shard():
    from llmflow.config import PrepareConfig
    from tasks.prepare import shard_config

    on = PrepareConfig.model_validate({"dedup": {"incremental": True}})
    assert shard_config(on) == shard_config(PrepareConfig())  # only the global dedup re-runs


def test_an_erasure_request_ends_the_chain(store):
    """After `llmflow forget`, the next incremental run starts a new index: the old one holds the
    hashes of the erased documents."""
    from llmflow.config import PrepareConfig
    from llmflow.erasure import new_request, record
    from tasks.dedup_history import previous_prepare, record_head

    cfg = PrepareConfig()
    docs = StepRef(step="ingest", key="d" * 64, uri="")
    with store.write("prepare", "p" * 64, {"stats": {}}) as out:
        (out / "x.txt").write_text("x")
    head_ref = store.ref("prepare", "p" * 64)
    record_head(store, "llmflow", head_ref)
    assert previous_prepare(store, "llmflow", cfg, docs, None) == head_ref
    record(store, new_request("source", ["web"], "erase"))
    assert previous_prepare(store, "llmflow", cfg, docs, None) is None
