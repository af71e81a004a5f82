"""The prepare fan-out under Prefect: one mapped `prepare_shard` task per ingest shard.

Adding a source recomputes only that source's shards; the same data flow runs unchanged on a
local Dask cluster (prefect-dask) and gives the same train/validation/rejects as the default
thread runner; input = kept + rejected, by id, in both.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_prepare import prose

from flows.data import data_flow
from llmflow.config import PipelineConfig, RunnerConfig
from llmflow.step import run_step
from llmflow.store import ArtifactStore
from tasks.ingest import ingest_step
from tasks.prepare import (
    SHARD_VERSION,
    VERSION,
    prepare_shard_step,
    prepare_step,
    shard_config,
    split_into_shards,
)
from tasks.task_data import task_data_step

under_prefect = pytest.mark.usefixtures("prefect_harness")


def write_jsonl(path: Path, rows: list) -> Path:
    rows = [r if isinstance(r, dict) else {"text": r} for r in rows]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    web = [prose(i) for i in range(30)]
    web += [web[2].upper(), "Too short to keep."]  # an exact duplicate across shards, a reject
    near = web[5].split()
    near[10] = "changed"
    books = [prose(100 + i) for i in range(16)] + [web[7], " ".join(near)]  # cross-source dups
    books.append(prose(77) + "\nthe secret test answer is forty two and nobody should train on this sentence")
    task = [
        {"prompt": f"Question {i}?", "response": f"answer number {i} is given here in words"}
        for i in range(30)
    ] + [  # in several groups, so that some land in test/validation
        {
            "prompt": f"What {i}?",
            "response": "the secret test answer is forty two and nobody should train on this",
        }
        for i in range(4)
    ]
    return {
        "web": write_jsonl(d / "web.jsonl", web),
        "books": write_jsonl(d / "books.jsonl", books),
        "task": write_jsonl(d / "task.jsonl", task),
    }


def config(sources, names: list[str]) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "ingest": {
                "sources": [{"name": n, "kind": "jsonl", "path": str(sources[n])} for n in names],
                "shard_docs": 12,
            },
            # Every task example is a test example, so the contaminated document is found.
            "task_data": {"source": str(sources["task"]), "test_fraction": 0.45, "validation_fraction": 0.45},
            "prepare": {"validation_fraction": 0.2},
        }
    )


def outputs(home: str, summary: dict) -> dict[str, dict[str, tuple]]:
    """id -> (split or reject reason, duplicate_of), checking input = kept + rejected, by id."""
    store = ArtifactStore(home)
    docs = store.local_path(("ingest", summary["ingest"]["key"])) / "docs"
    out = store.local_path(("prepare", summary["prepare"]["key"]))
    where: dict[str, tuple] = {}
    for split in ("train", "validation"):
        for i in pq.read_table(out / split, columns=["id"]).column("id").to_pylist():
            assert i not in where
            where[i] = (split, None)
    for r in pq.read_table(out / "rejects", columns=["id", "reason", "duplicate_of"]).to_pylist():
        assert r["id"] not in where
        where[r["id"]] = (r["reason"], r["duplicate_of"])
    input_ids = pq.read_table(docs, columns=["id"]).column("id").to_pylist()
    assert sorted(where) == sorted(input_ids)  # input = kept + rejected, by id
    return where


def shard_manifests(home: str) -> dict[str, float]:
    return {m["key"]: m["created"] for m in ArtifactStore(home).list("prepare_shard")}


def shard_workers(home: str) -> set[int]:
    return {int(m["stats"]["worker"].rsplit("/", 1)[1]) for m in ArtifactStore(home).list("prepare_shard")}


@pytest.mark.slow
@under_prefect
def test_adding_a_source_recomputes_only_its_shards(tmp_path, sources):
    home = str(tmp_path / "home")
    first = data_flow(config=config(sources, ["web"]), home=home)
    assert first["ingest"]["stats"]["shards"] == 3 and first["prepare"]["status"] == "ran"
    before = shard_manifests(home)
    assert len(before) == 3
    where = outputs(home, first)
    assert sum(r == "dedup" for r, _ in where.values()) == 1

    second = data_flow(config=config(sources, ["web", "books"]), home=home)
    assert second["ingest"]["stats"]["shards"] == 5 and second["prepare"]["status"] == "ran"
    after = shard_manifests(home)
    assert len(after) == 5
    assert {k: after[k] for k in before} == before  # the web shards were not recomputed
    where = outputs(home, second)
    reasons = [r for r, _ in where.values()]
    assert reasons.count("dedup") == 3 and reasons.count("decontaminated") == 1
    # The new source's copies of web documents are deduplicated against the cached web shards.
    assert sorted(d[:4] for r, d in where.values() if r == "dedup") == ["web:"] * 3
    assert second["prepare"]["stats"]["by_source"]["books"] == {"kept": 15, "rejected": 4}

    third = data_flow(config=config(sources, ["web", "books"]), home=home)
    assert all(ref["status"] == "cached" for ref in third.values())
    assert shard_manifests(home) == after

    # Settings of the global phase (split, dedup threshold) re-run prepare, not the shards.
    cfg = config(sources, ["web", "books"])
    cfg.prepare.validation_fraction = 0.3
    cfg.prepare.dedup.minhash.threshold = 0.7
    fourth = data_flow(config=cfg, home=home)
    assert fourth["prepare"]["status"] == "ran" and shard_manifests(home) == after
    assert fourth["prepare"]["stats"]["validation_docs"] > second["prepare"]["stats"]["validation_docs"]


@pytest.mark.slow
@under_prefect
def test_dask_runner_gives_the_same_result(tmp_path, sources):
    cfg = config(sources, ["web", "books"])
    t0 = time.time()
    threads = data_flow(config=cfg, home=str(tmp_path / "threads"))
    t1 = time.time()
    cfg.runner = RunnerConfig(kind="dask", workers=2)  # a local cluster of two worker processes
    on_dask_ = data_flow(config=cfg, home=str(tmp_path / "dask"))
    t2 = time.time()
    print(f"threads {t1 - t0:.1f}s, dask {t2 - t1:.1f}s")
    assert on_dask_["prepare"]["status"] == "ran" and len(shard_manifests(str(tmp_path / "dask"))) == 5
    assert shard_workers(str(tmp_path / "threads")) == {os.getpid()}  # threads of this process
    dask_pids = shard_workers(str(tmp_path / "dask"))
    assert dask_pids and os.getpid() not in dask_pids  # the Dask worker processes did the work
    assert {k: v["key"] for k, v in on_dask_.items()} == {k: v["key"] for k, v in threads.items()}
    a, b = outputs(str(tmp_path / "threads"), threads), outputs(str(tmp_path / "dask"), on_dask_)
    assert a == b and sum(r == "dedup" for r, _ in b.values()) == 3
    for k in ("input", "kept", "rejected", "train_docs", "validation_docs", "rejects_by_reason"):
        assert threads["prepare"]["stats"][k] == on_dask_["prepare"]["stats"][k], k


def test_sharded_steps_equal_the_in_step_path(tmp_path, sources):
    """Without Prefect: prepare_shard per shard + prepare over them == prepare alone."""
    cfg = config(sources, ["web", "books"])
    store = ArtifactStore(tmp_path / "home")
    docs = run_step("ingest", 1, ingest_step, cfg.ingest, store=store)
    task = run_step("task_data", 1, task_data_step, cfg.task_data, store=store)
    whole = run_step("prepare", VERSION, prepare_step, cfg.prepare, {"docs": docs, "task": task}, store=store)
    pieces = split_into_shards(docs, store)
    assert len(pieces) == 5 and split_into_shards(docs, store) == pieces  # content-addressed
    part_cfg = shard_config(cfg.prepare)
    shards = [
        run_step(
            "prepare_shard",
            SHARD_VERSION,
            prepare_shard_step,
            part_cfg,
            {"docs": p, "task": task},
            store=store,
        )
        for p in pieces
    ]
    inputs = {"docs": docs, "task": task, **{f"shard-{i:05d}": s for i, s in enumerate(shards)}}
    sharded = run_step("prepare", VERSION, prepare_step, cfg.prepare, inputs, store=store)
    assert sharded.key != whole.key
    for split in ("train", "validation", "rejects"):
        a = pq.read_table(store.local_path(whole) / split).sort_by("id")
        b = pq.read_table(store.local_path(sharded) / split).sort_by("id")
        assert a.equals(b), split
    assert whole.stats["decontamination_ngrams"] == sharded.stats["decontamination_ngrams"] > 0
    assert whole.stats["pii"] == sharded.stats["pii"]
    assert whole.stats["steps"] == sharded.stats["steps"]  # the record of what ran, for the model card
    # Shards made under another per-shard config are refused, not silently mixed in.
    other = cfg.prepare.model_copy(
        update={"toxicity": cfg.prepare.toxicity.model_copy(update={"enabled": False})}
    )
    with pytest.raises(ValueError, match="not made with this config"):
        run_step("prepare", VERSION, prepare_step, other, inputs, store=store)
