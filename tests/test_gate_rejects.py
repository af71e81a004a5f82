"""The gate rejects the models it exists to reject, under the default config and both presets.

Real tiny models on the smoke data: a randomly initialised model, the pretrained model without
fine-tuning, and a fine-tune on shuffled targets. Each is evaluated on the task's held-out items
and gated; each must fail, for the reason that names what is wrong with it.
"""

from __future__ import annotations

import json

import pytest

from flows.pretrain import pretrain_flow
from llmflow.config import GateConfig, load_config
from llmflow.step import run_step
from llmflow.store import ArtifactStore, StepRef
from tasks import evaluate as E
from tasks import finetune as F
from tasks import gate as G
from tasks import pretrain as P
from tests.helpers import shuffled_targets_task

GATES = {
    "default": GateConfig(),
    "smoke": load_config("smoke").gate,
    "demo": load_config("demo").gate,
}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, prefect_harness):
    """The smoke pipeline up to pretraining, plus the smoke configs."""
    home = str(tmp_path_factory.mktemp("rejects") / "home")
    cfg = load_config("smoke")
    refs = {k: StepRef(**v) for k, v in pretrain_flow(config=cfg, home=home).items()}
    return cfg, ArtifactStore(home), refs


def _gate_all(store, cfg, model: StepRef, base: StepRef, refs, tag: str) -> dict[str, dict]:
    """Evaluate `model` on the held-out items (against `base`), then gate it under every config."""
    ev = run_step(
        "evaluate",
        E.VERSION,
        E.evaluate_step,
        cfg.evaluate,
        {"model": model, "base": base, "shards": refs["pack"], "task": refs["task_data"]},
        store=store,
        extra={"name": tag},
    )
    out = {}
    for name, gcfg in GATES.items():
        ref = run_step(
            "gate",
            G.VERSION,
            G.gate_step,
            gcfg,
            {"eval": ev, "model": model},
            store=store,
            extra={"name": f"{tag}-{name}", "champion": None},
        )
        out[name] = json.loads((store.local_path(ref) / "decision.json").read_text())
    return out


def _failed(decisions: dict[str, dict], reference: str) -> None:
    for name, d in decisions.items():
        assert not d["passed"], name
        assert not d["references"][reference]["passed"], (name, d["reasons"])


def test_a_randomly_initialised_model_is_rejected(upstream):
    cfg, store, refs = upstream
    # pretraining with a vanishing learning rate leaves the initial random weights
    random_cfg = cfg.pretrain.model_copy(update={"lr": 1e-12, "max_steps": 1, "eval_every": 1})
    rand = run_step(
        "pretrain",
        P.VERSION,
        P.pretrain_step,
        random_cfg,
        {"shards": refs["pack"], "tokenizer": refs["tokenizer"]},
        store=store,
    )
    decisions = _gate_all(store, cfg, rand, refs["pretrain"], refs, "random")
    _failed(decisions, "unigram")  # no context learned: worse than token frequencies
    _failed(decisions, "name_words")
    _failed(decisions, "base")


def test_the_pretrained_model_without_fine_tuning_is_rejected(upstream):
    cfg, store, refs = upstream
    decisions = _gate_all(store, cfg, refs["pretrain"], refs["pretrain"], refs, "not-tuned")
    _failed(decisions, "base")  # fine-tuning must help; here nothing was tuned
    for d in decisions.values():
        assert d["references"]["base"]["diff"] == 0.0


def test_a_fine_tune_on_shuffled_targets_is_rejected(upstream):
    cfg, store, refs = upstream
    shuffled = shuffled_targets_task(store, refs["task_data"])
    tuned = run_step(
        "finetune",
        F.VERSION,
        F.finetune_step,
        cfg.finetune,
        {"base": refs["pretrain"], "task": shuffled},
        store=store,
    )
    decisions = _gate_all(store, cfg, tuned, refs["pretrain"], refs, "shuffled")
    for d in decisions.values():
        assert not d["passed"]
        beaten = [r for r, c in d["references"].items() if r != "unigram" and c["passed"]]
        assert "name_words" not in beaten and "constant" not in beaten, d["reasons"]
