"""The smoke pipeline end to end under Prefect, then again with every step cached."""

from __future__ import annotations

import json

import pytest

from flows.pipeline import STEPS, pipeline
from llmflow.config import load_config
from llmflow.registry import Registry
from llmflow.store import ArtifactStore
from tasks.gate import GateFailed


def _failed_run(cfg, home):
    """Run the pipeline flow, expecting the gate to fail it: (final state, step summary)."""
    state = pipeline(config=cfg, home=home, return_state=True)
    assert state.is_failed(), state
    with pytest.raises(GateFailed) as e:
        state.result()
    return state, e.value.summary


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_smoke_pipeline_runs_then_is_fully_cached(tmp_path):
    home = str(tmp_path / "home")
    cfg = load_config("smoke")

    # The smoke model (12 pretraining steps) is no better than the task's trivial baselines, so
    # the gate rejects it: the run ends Failed with the reasons, every artifact kept.
    state, first = _failed_run(cfg, home)
    assert list(first) == STEPS
    assert all(ref["status"] == "ran" for ref in first.values()), {k: v["status"] for k, v in first.items()}
    assert state.message.startswith("Flow run encountered an exception: GateFailed: gate failed for smoke v1")

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
    assert decision["passed"] is False and decision["first_model"]
    refs = decision["references"]
    assert set(refs) == {"base", "constant", "first_sentence", "name_words", "unigram"}
    assert not refs["name_words"]["passed"] and refs["name_words"]["other"] > metrics["rougeL"]
    reg = Registry(store, cfg.name)
    assert reg.champion() is None and reg.get("challenger")["version"] == 1
    assert reg.get(1)["gate"] == {"passed": False, "reasons": decision["reasons"]}

    _, second = _failed_run(cfg, home)  # the same decision, from the cache
    assert all(ref["status"] == "cached" for ref in second.values()), {
        k: v["status"] for k, v in second.items()
    }
    assert {k: v["key"] for k, v in second.items()} == {k: v["key"] for k, v in first.items()}

    # Changing one step's config recomputes that step and what depends on it, nothing upstream.
    cfg2 = load_config("smoke", ["finetune.max_steps=3"])
    _, third = _failed_run(cfg2, home)
    upstream = ["ingest", "task_data", "prepare", "tokenizer", "pack", "pretrain"]
    assert all(third[s]["status"] == "cached" for s in upstream)
    assert all(third[s]["status"] == "ran" for s in ["finetune", "evaluate"])
