"""The smoke pipeline end to end under Prefect, then again with every step cached."""

from __future__ import annotations

import json
import time

import pytest

from flows.pipeline import STEPS, pipeline
from llmflow.config import load_config
from llmflow.registry import Registry
from llmflow.store import ArtifactStore


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_smoke_pipeline_runs_then_is_fully_cached(tmp_path):
    home = str(tmp_path / "home")
    cfg = load_config("smoke")

    t0 = time.time()
    first = pipeline(config=cfg, home=home)
    first_seconds = time.time() - t0
    assert list(first) == STEPS
    assert all(ref["status"] == "ran" for ref in first.values()), {k: v["status"] for k, v in first.items()}

    store = ArtifactStore(home)
    # Every step published a complete artifact with its manifest.
    for step, ref in first.items():
        assert store.exists(step, ref["key"]), step
    # Real work happened: documents kept, tokens packed, a model that loads, metrics computed.
    assert first["prepare"]["stats"]["kept"] > 0
    assert first["pack"]["stats"]["train_tokens"] > 1000
    assert first["pretrain"]["stats"]["val_bpb"] > 0
    metrics = first["evaluate"]["stats"]["metrics"]
    assert 0.0 <= metrics["rougeL"] <= 1.0 and metrics["val_bpb"] > 0
    decision = json.loads((store.local_path(("gate", first["gate"]["key"])) / "decision.json").read_text())
    assert "passed" in decision
    if first["gate"]["stats"]["passed"]:
        assert Registry(store, cfg.name).champion() is not None

    t1 = time.time()
    second = pipeline(config=cfg, home=home)
    second_seconds = time.time() - t1
    assert all(ref["status"] == "cached" for ref in second.values()), {
        k: v["status"] for k, v in second.items()
    }
    assert {k: v["key"] for k, v in second.items()} == {k: v["key"] for k, v in first.items()}
    assert second_seconds < first_seconds

    # Changing one step's config recomputes that step and what depends on it, nothing upstream.
    cfg2 = load_config("smoke", ["finetune.max_steps=3"])
    third = pipeline(config=cfg2, home=home)
    upstream = ["ingest", "task_data", "prepare", "tokenizer", "pack", "pretrain"]
    assert all(third[s]["status"] == "cached" for s in upstream)
    assert all(third[s]["status"] == "ran" for s in ["finetune", "evaluate"])
