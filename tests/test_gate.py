"""Gate semantics (TFX change thresholds, paired-bootstrap non-inferiority) and the gate step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmflow import events
from llmflow.config import ChangeThreshold, ConfigError, GateConfig, NonInferiority, Threshold, load_config
from llmflow.registry import Registry
from llmflow.step import run_step
from tasks import gate as G


def _samples(scores: list[float], metric: str = "rougeL") -> list[dict]:
    return [{"id": f"s{i}", "scores": {metric: x}} for i, x in enumerate(scores)]


def _noisy(n=200, seed=0):
    return np.random.default_rng(seed).uniform(0.3, 0.7, n)


# Value and champion checks alone (the reference points have tests of their own below).
NO_REFS = {"beat_base": False, "beat_baselines": [], "beat_unigram_bpb": False}
CFG = GateConfig(
    value_thresholds=[Threshold(metric="rougeL", min=0.1), Threshold(metric="val_bpb", max=4.0)],
    change_thresholds=[ChangeThreshold(metric="rougeL", absolute=-0.01)],
    bootstrap=500,
    **NO_REFS,
)


def _with_refs(scores, refs: dict[str, list[float]]) -> list[dict]:
    """Candidate samples carrying reference points' per-item scores, as evaluate writes them."""
    out = _samples(list(scores))
    for i, s in enumerate(out):
        s["baselines"] = {name: {"prediction": "x", "scores": {"rougeL": v[i]}} for name, v in refs.items()}
    return out


def test_first_model_is_judged_without_champion_checks():
    d = G.decide(CFG, {"rougeL": 0.3, "val_bpb": 3.0})
    assert d["passed"] and d["first_model"] and [c["kind"] for c in d["checks"]] == ["value", "value"]
    d = G.decide(CFG, {"rougeL": 0.05, "val_bpb": 3.0})
    assert not d["passed"] and d["reasons"] == ["rougeL = 0.05 < min 0.1"]
    d = G.decide(CFG, {"rougeL": 0.3, "val_bpb": 5.0})
    assert d["reasons"] == ["val_bpb = 5 > max 4"]


def test_missing_metric_fails():
    d = G.decide(CFG, {"rougeL": 0.3})
    assert not d["passed"] and d["reasons"] == ["val_bpb: missing"]
    d = G.decide(CFG, {"rougeL": 0.3, "val_bpb": float("nan")})
    assert not d["passed"]
    champ = {"metrics": {"val_bpb": 3.0}}  # the champion lacks rougeL
    d = G.decide(CFG, {"rougeL": 0.3, "val_bpb": 3.0}, champion=champ)
    assert not d["passed"] and d["reasons"] == ["rougeL: missing for the champion"]


def test_a_gate_with_nothing_to_check_is_a_config_error():
    with pytest.raises(ValueError, match="nothing to check"):
        GateConfig(**NO_REFS)
    with pytest.raises(ConfigError, match="nothing to check"):
        load_config(
            "smoke", ["gate.beat_base=false", "gate.beat_baselines=[]", "gate.beat_unigram_bpb=false"]
        )
    # change thresholds alone check nothing for a first model
    with pytest.raises(ValueError, match="nothing to check"):
        GateConfig(change_thresholds=[ChangeThreshold(metric="rougeL", absolute=0.0)], **NO_REFS)


def test_point_change_thresholds_follow_tfx_semantics():
    good = {"rougeL": 0.3, "val_bpb": 3.0}
    champ = {"metrics": {"rougeL": 0.305, "val_bpb": 2.9}}
    # higher_is_better: diff = -0.005 >= absolute -0.01 passes
    d = G.decide(CFG, good, champion=champ)
    assert d["passed"] and d["deltas"]["rougeL"] == pytest.approx(-0.005)
    # a measured drop of 0.03 fails absolute -0.01, however noisy the items (measured values)
    d = G.decide(CFG, {"rougeL": 0.275, "val_bpb": 3.0}, champion=champ)
    assert not d["passed"] and d["reasons"] == ["rougeL diff -0.03 fails absolute -0.01"]
    # a positive absolute demands a gain (TFX): diff -0.005 < +0.01 fails
    cfg = CFG.model_copy(update={"change_thresholds": [ChangeThreshold(metric="rougeL", absolute=0.01)]})
    assert not G.decide(cfg, good, champion=champ)["passed"]
    # lower_is_better with relative: diff/champion = +0.1/2.9 = +3.4% > +2% fails, > +5% passes
    for rel, ok in ((0.02, False), (0.05, True)):
        t = ChangeThreshold(metric="val_bpb", direction="lower_is_better", relative=rel)
        d = G.decide(CFG.model_copy(update={"change_thresholds": [t]}), good, champion=champ)
        assert d["passed"] is ok, d["reasons"]
        assert d["checks"][-1]["relative_diff"] == pytest.approx(0.1 / 2.9)


def test_noninferiority_is_a_named_paired_bootstrap_option():
    base = _noisy()
    champ_s = _samples(base.tolist())
    champ = {"metrics": {"rougeL": float(base.mean()), "val_bpb": 3.0}}
    cfg = CFG.model_copy(
        update={"change_thresholds": [], "noninferiority": [NonInferiority(metric="rougeL", margin=0.02)]}
    )

    def run(new: np.ndarray):
        return G.decide(
            cfg, {"rougeL": float(new.mean()), "val_bpb": 3.0}, _samples(new.tolist()), champ, champ_s
        )

    assert run(base + 0.05)["passed"]
    same = run(base)
    assert same["passed"] and same["checks"][-1]["paired"]["lower"] == pytest.approx(0.0)
    worse = run(np.clip(base - 0.05, 0, 1))
    assert not worse["passed"] and "worse than the champion's by more than 0.02" in worse["reasons"][0]
    # within the margin on average, but too noisy to show it at 95%: fails
    rng = np.random.default_rng(3)
    noise = rng.uniform(-0.25, 0.25, base.size)
    noisy = run(base - 0.015 + noise - noise.mean())
    assert not noisy["passed"] and noisy["checks"][-1]["diff"] > -0.02
    assert run(base - 0.015 + noise - noise.mean()) == noisy  # the same seed, the same decision


def test_reference_points_must_be_beaten_by_a_one_sided_paired_bootstrap():
    cfg = GateConfig(bootstrap=500, beat_unigram_bpb=False)  # base and every baseline
    cand = _noisy(183)
    metrics = {"rougeL": float(cand.mean())}
    below = np.clip(cand - 0.08 + np.random.default_rng(1).uniform(-0.05, 0.05, cand.size), 0, 1)
    d = G.decide(cfg, metrics, _with_refs(cand, {"base": below, "constant": below * 0.5}))
    assert d["passed"], d["reasons"]
    assert [c["reference"] for c in d["checks"]] == ["base", "constant"]
    assert all(c["paired"]["lower"] > 0 for c in d["checks"])
    # identical to the model before fine-tuning: fine-tuning did not help
    d = G.decide(cfg, metrics, _with_refs(cand, {"base": cand, "constant": below}))
    assert not d["passed"] and d["reasons"][0].startswith("does not beat base")
    # ahead on average but within noise of a baseline: not beaten at 95%
    rng = np.random.default_rng(5)
    noise = rng.uniform(-0.3, 0.3, cand.size)
    close = np.clip(cand - 0.01 + noise - noise.mean(), 0, 1)
    d = G.decide(cfg, metrics, _with_refs(cand, {"base": below, "constant": close}))
    check = d["checks"][1]
    assert not d["passed"] and check["diff"] > 0 and check["paired"]["lower"] <= 0
    # a demanded margin: beating the baseline by 0.08 on average is not a gain of 0.1
    d = G.decide(
        cfg.model_copy(update={"min_gain": 0.1}),
        metrics,
        _with_refs(cand, {"base": below, "constant": below}),
    )
    assert not d["passed"]
    # a reference point the evaluation lacks fails its check; one not asked for is not checked
    d = G.decide(cfg, metrics, _with_refs(cand, {"constant": below}))
    assert not d["passed"] and d["reasons"] == ["base: not evaluated (evaluate.baselines must be on)"]
    only = cfg.model_copy(update={"beat_base": False, "beat_baselines": ["constant"]})
    assert G.decide(only, metrics, _with_refs(cand, {"constant": below, "name_words": cand + 0.5}))["passed"]


def test_the_language_model_must_beat_the_unigram_model():
    cfg = GateConfig(beat_base=False, beat_baselines=[], bootstrap=100)
    assert G.decide(cfg, {"val_bpb": 2.1, "val_bpb_unigram": 3.9})["passed"]
    d = G.decide(cfg, {"val_bpb": 4.4, "val_bpb_unigram": 4.0})
    assert not d["passed"] and d["reasons"] == ["val_bpb 4.4000 does not beat the unigram model's 4.0000"]
    d = G.decide(cfg, {"val_bpb": 2.1})
    assert not d["passed"] and "missing" in d["reasons"][0]


# --------------------------------------------------------------------------- the step


def _fake(store, step, key, files: dict[str, str], stats=None, inputs=None):
    with store.write(step, key, {"inputs": inputs or {}}) as out:
        for rel, text in files.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text(text)
    if stats is not None:  # write stats into the manifest like run_step does
        m = store.manifest(step, key)
        m["stats"] = stats
        store.write_json(m, "artifacts", step, key, "manifest.json")
    return store.ref(step, key, status="ran")


def _candidate(store, tag: str, scores: list[float], bpb: float = 3.0):
    model = _fake(
        store,
        "finetune",
        f"ft-{tag}",
        {
            "model/config.json": "{}",
            "lineage.json": json.dumps({"config": {"method": "lora"}, "code": {"git_commit": "abc"}}),
        },
        inputs={"base": {"step": "pretrain", "key": "pre-1"}, "task": {"step": "task_data", "key": "task-1"}},
    )
    metrics = {"rougeL": float(np.mean(scores)), "val_bpb": bpb, "stereotype_pct": 55.0}
    ev = _fake(
        store,
        "evaluate",
        f"ev-{tag}",
        {
            "metrics.json": json.dumps({"metrics": metrics, "ci": {}, "n": len(scores)}),
            "samples.jsonl": "".join(json.dumps(s) + "\n" for s in _samples(scores)),
            "bias.json": json.dumps(
                {"stereotype": {"overall": {"n": 1, "stereotype_pct": 55.0}, "categories": {}}}
            ),
        },
        stats={"metrics": metrics, "name": "demo"},
    )
    return model, ev


def _gate(store, model, ev, champion):
    return run_step(
        "gate",
        1,
        G.gate_step,
        CFG,
        {"eval": ev, "model": model},
        store=store,
        extra={"name": "demo", "champion": champion},
    )


def test_gate_step_registers_promotes_and_compares_with_the_champion(store):
    base = _noisy(60).tolist()
    reg = Registry(store, "demo")
    m1, e1 = _candidate(store, "1", base)
    r1 = _gate(store, m1, e1, None)
    assert r1.stats["passed"] and r1.stats["promoted"] and r1.stats["version"] == 1
    champ = reg.champion()
    assert champ["version"] == 1 and champ["eval_key"] == "ev-1"
    assert champ["model_path"].endswith("model") and champ["lineage"]["artifacts"]["pretrain"] == "pre-1"
    card = Path(reg.card_path(1)).read_text()
    assert card.startswith("---\n") and "## Bias, risks and limitations" in card and "first model" in card
    decision = json.loads((store.local_path(r1) / "decision.json").read_text())
    assert decision["first_model"] and decision["seed"] == CFG.seed and "thresholds" in decision

    # a clearly worse challenger fails against v1 and stays challenger
    m2, e2 = _candidate(store, "2", [max(0.0, x - 0.2) for x in base])
    r2 = _gate(store, m2, e2, 1)
    assert not r2.stats["passed"] and not r2.stats["promoted"] and r2.stats["version"] == 2
    assert reg.champion()["version"] == 1 and reg.get("challenger")["version"] == 2
    d2 = json.loads((store.local_path(r2) / "decision.json").read_text())
    assert d2["champion"]["version"] == 1 and d2["deltas"]["rougeL"] < -0.1
    assert "FAIL" in (store.local_path(r2) / "decision.md").read_text()
    names = [e for e, _, _ in G._events(r2)]
    assert names == [events.GATE_FAILED]

    # a better one is promoted; rollback restores v1
    m3, e3 = _candidate(store, "3", [min(1.0, x + 0.1) for x in base])
    r3 = _gate(store, m3, e3, 1)
    assert r3.stats["promoted"] and reg.champion()["version"] == 3
    assert [e for e, _, _ in G._events(r3)] == [events.GATE_PASSED, events.MODEL_PROMOTED]
    assert G._events(r3)[0][1] == "llmflow.model.demo"
    assert reg.rollback()["version"] == 1

    # gating the same fine-tune artifact again returns its existing version
    r1b = run_step(
        "gate",
        1,
        G.gate_step,
        CFG,
        {"eval": e1, "model": m1},
        store=store,
        extra={"name": "demo", "champion": 1},
    )
    assert r1b.stats["version"] == 1 and r1b.stats["passed"] and not r1b.stats["promoted"]
    # the champion gated again has no champion checks, even under a gain-demanding bound
    demanding = CFG.model_copy(
        update={"change_thresholds": [ChangeThreshold(metric="rougeL", absolute=0.05)]}
    )
    r1c = run_step(
        "gate",
        1,
        G.gate_step,
        demanding,
        {"eval": e1, "model": m1},
        store=store,
        extra={"name": "demo", "champion": 1},
    )
    d1c = json.loads((store.local_path(r1c) / "decision.json").read_text())
    assert r1c.stats["passed"] and d1c["candidate_is_champion"] and d1c["champion"] is None
    assert len(reg.list()) == 3


def test_gate_failed_keeps_its_summary_out_of_the_log_but_through_pickling():
    """The flow run's log line is the exception's repr: reasons, not the whole step summary."""
    import pickle

    e = G.GateFailed("m", 2, ["does not beat constant"], {"gate": {"uri": "/x"}})
    assert repr(e) == "GateFailed('m', 2, ['does not beat constant'])"
    assert str(e) == "gate failed for m v2: does not beat constant"
    assert pickle.loads(pickle.dumps(e)).summary == {"gate": {"uri": "/x"}}
