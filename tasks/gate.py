"""The `gate` step: decide whether the fine-tuned candidate may replace the champion.

Inputs: `eval` (evaluate: metrics.json, samples.jsonl, bias.json) and `model` (finetune).
`extra = {"name": <registry name>, "champion": <champion version or None>}`: the flow passes the
registry's current champion, so a new champion re-runs the gate (it is part of the key).

Checks (`decide`, a plain function), every one of which must pass:
- reference points that need no tuning, on the same held-out items (evaluate scores them): the
  model before fine-tuning (`base`: fine-tuning must help) and the task's trivial baselines
  (tasks/baselines.py). The candidate must beat each on `task_metric` by a one-sided paired
  bootstrap: the lower `confidence` bound of the mean per-item gain must exceed `min_gain`.
  And the language model must beat the unigram model's bits per byte (`beat_unigram_bpb`).
- value thresholds: `min <= value <= max` for each configured metric;
- with a champion, change thresholds with TFX model-validation semantics on the measured values:
  diff = challenger - champion, relative = diff / champion; higher_is_better passes when
  diff >= absolute and relative >= relative, lower_is_better when diff <= absolute and
  relative <= relative;
- with a champion, `noninferiority` tests (a named option): one-sided paired bootstrap on the
  items both evaluations share, passing when the challenger is at most `margin` worse.
- a metric or reference point that is missing fails its check.

The first model ever, or the champion itself gated again, has no champion checks. Every gated
candidate is registered (alias `challenger`); on pass with `promote`, it becomes the champion.
Output `decision.json`; stats {passed, promoted, version, reasons, champion}. A failed gate is not
an error of this step: the flow raises `GateFailed` after it, so the run ends Failed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from llmflow import events
from llmflow.config import GateConfig
from llmflow.registry import Registry
from llmflow.step import StepContext
from llmflow.store import ArtifactStore, StepRef
from tasks import metrics as M
from tasks.common import step_task
from tasks.model_card import render_card

VERSION = 1


# --------------------------------------------------------------------------- the decision


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) else None


def value_check(t, metrics: dict[str, Any]) -> dict[str, Any]:
    v = _num(metrics.get(t.metric))
    out = {"kind": "value", "metric": t.metric, "min": t.min, "max": t.max, "value": v}
    if v is None:
        return {**out, "passed": False, "reason": f"{t.metric}: missing"}
    if t.min is not None and v < t.min:
        return {**out, "passed": False, "reason": f"{t.metric} = {v:.4g} < min {t.min:g}"}
    if t.max is not None and v > t.max:
        return {**out, "passed": False, "reason": f"{t.metric} = {v:.4g} > max {t.max:g}"}
    return {**out, "passed": True, "reason": ""}


class GateFailed(RuntimeError):
    """The candidate did not pass the gate: the flow run ends Failed with the reasons.

    `summary` is the flow's step summary (what ran, what was cached), for the command line."""

    def __init__(self, name: str, version: Any, reasons: list[str], summary: dict[str, Any] | None = None):
        super().__init__(name, version, reasons)  # the summary stays out of repr and the run's log
        self.name, self.version, self.reasons, self.summary = name, version, list(reasons), summary or {}

    def __str__(self) -> str:
        return f"gate failed for {self.name} v{self.version}: " + "; ".join(self.reasons)


def raise_if_failed(gate_ref: StepRef | None, summary: dict[str, Any] | None = None) -> None:
    """Raise GateFailed when the gate step (ran or cached) decided against the candidate."""
    if gate_ref is not None and not gate_ref.stats.get("passed", False):
        s = gate_ref.stats
        reasons = s.get("reasons") or ["no reason recorded"]
        raise GateFailed(s.get("name", "llmflow"), s.get("version"), reasons, summary)


def _paired(metric: str, samples, other: dict[str, float | None]) -> tuple[list[float], list[float]]:
    """Per-item scores of the candidate and of another system on the items both have, by id."""
    a, b = [], []
    for s in samples or []:
        x, y = _num(s["scores"].get(metric)), _num(other.get(s["id"]))
        if x is not None and y is not None:
            a.append(x)
            b.append(y)
    return a, b


def reference_checks(cfg: GateConfig, metrics: dict[str, Any], samples) -> list[dict[str, Any]]:
    """The candidate against the model before fine-tuning and the task's trivial baselines."""
    available = sorted({b for s in samples or [] for b in s.get("baselines", {})})
    wanted = (["base"] if cfg.beat_base else []) + (
        [b for b in available if b != "base"] if cfg.beat_baselines is None else list(cfg.beat_baselines)
    )
    checks = []
    for ref in wanted:
        out: dict[str, Any] = {
            "kind": "reference",
            "metric": cfg.task_metric,
            "reference": ref,
            "min_gain": cfg.min_gain,
        }
        other = {
            s["id"]: s["baselines"][ref]["scores"].get(cfg.task_metric)
            for s in samples or []
            if ref in s.get("baselines", {})
        }
        a, b = _paired(cfg.task_metric, samples, other)
        if not a:
            needs = (
                "evaluate.baselines and evaluate.retrieval_baseline"
                if ref == "nearest_train"
                else "evaluate.baselines"
            )
            why = f"not evaluated ({needs} must be on)" if ref not in available else "no paired items"
            checks.append({**out, "value": None, "passed": False, "reason": f"{ref}: {why}"})
            continue
        test = M.paired_lower_bound(a, b, cfg.bootstrap, cfg.seed, cfg.confidence)
        passed = test["lower"] > cfg.min_gain
        reason = (
            ""
            if passed
            else f"does not beat {ref}: {cfg.task_metric} {np.mean(a):.4f} vs {np.mean(b):.4f}, gain "
            f"{test['diff']:+.4f} with {cfg.confidence:.0%} lower bound {test['lower']:+.4f} <= {cfg.min_gain:g}"
        )
        checks.append(
            {
                **out,
                "value": float(np.mean(a)),
                "other": float(np.mean(b)),
                "diff": test["diff"],
                "paired": test,
                "passed": passed,
                "reason": reason,
            }
        )
    if cfg.beat_unigram_bpb:
        v, u = _num(metrics.get("val_bpb")), _num(metrics.get("val_bpb_unigram"))
        out = {"kind": "reference", "metric": "val_bpb", "reference": "unigram", "value": v, "other": u}
        if v is None or u is None:
            checks.append({**out, "passed": False, "reason": "val_bpb against the unigram model: missing"})
        else:
            ok = v < u
            reason = "" if ok else f"val_bpb {v:.4f} does not beat the unigram model's {u:.4f}"
            checks.append({**out, "diff": v - u, "passed": ok, "reason": reason})
    return checks


def change_check(t, metrics: dict[str, Any], champion_metrics: dict[str, Any]) -> dict[str, Any]:
    """TFX change threshold on the measured values of challenger and champion."""
    new, old = _num(metrics.get(t.metric)), _num(champion_metrics.get(t.metric))
    out: dict[str, Any] = {
        "kind": "change",
        "metric": t.metric,
        "direction": t.direction,
        "absolute": t.absolute,
        "relative": t.relative,
        "value": new,
        "champion": old,
    }
    if new is None or old is None:
        who = "candidate" if new is None else "champion"
        return {**out, "passed": False, "reason": f"{t.metric}: missing for the {who}"}
    sign = 1.0 if t.direction == "higher_is_better" else -1.0
    diff = new - old
    rel = diff / old if old != 0 else None
    out.update(diff=diff, relative_diff=rel)
    reasons = []
    if t.absolute is not None and sign * diff < sign * t.absolute:
        reasons.append(f"{t.metric} diff {diff:+.4g} fails absolute {t.absolute:+g}")
    if t.relative is not None and rel is not None and sign * rel < sign * t.relative:
        reasons.append(f"{t.metric} relative diff {rel:+.3%} fails relative {t.relative:+g}")
    return {**out, "passed": not reasons, "reason": "; ".join(reasons)}


def noninferiority_check(t, metrics, champion_metrics, samples, champion_samples, cfg) -> dict[str, Any]:
    """One-sided paired bootstrap against the champion: at most `margin` worse at `confidence`."""
    out: dict[str, Any] = {
        "kind": "noninferiority",
        "metric": t.metric,
        "margin": t.margin,
        "value": _num(metrics.get(t.metric)),
        "champion": _num(champion_metrics.get(t.metric)),
    }
    champ = {s["id"]: s["scores"].get(t.metric) for s in champion_samples or []}
    a, b = _paired(t.metric, samples, champ)
    if not a:
        return {**out, "passed": False, "reason": f"{t.metric}: no per-item scores shared with the champion"}
    test = M.paired_lower_bound(a, b, cfg.bootstrap, cfg.seed, t.confidence)
    passed = test["lower"] >= -t.margin
    reason = (
        ""
        if passed
        else f"{t.metric} may be worse than the champion's by more than {t.margin:g}: diff "
        f"{test['diff']:+.4f}, {t.confidence:.0%} lower bound {test['lower']:+.4f}"
    )
    return {**out, "diff": test["diff"], "paired": test, "passed": passed, "reason": reason}


def decide(
    cfg: GateConfig,
    metrics: dict[str, Any],
    samples: list[dict[str, Any]] | None = None,
    champion: dict[str, Any] | None = None,
    champion_samples: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """All checks and the verdict. `champion` is a registry entry (with `metrics`) or None."""
    checks = reference_checks(cfg, metrics, samples)
    checks += [value_check(t, metrics) for t in cfg.value_thresholds]
    if champion is not None:
        cm = champion.get("metrics", {})
        checks += [change_check(t, metrics, cm) for t in cfg.change_thresholds]
        checks += [
            noninferiority_check(t, metrics, cm, samples, champion_samples, cfg) for t in cfg.noninferiority
        ]
    if not checks:  # the config validator makes this unreachable; never pass on nothing
        checks.append(
            {"kind": "none", "metric": "", "value": None, "passed": False, "reason": "nothing checked"}
        )
    reasons = [c["reason"] for c in checks if not c["passed"]]
    return {
        "passed": not reasons,
        "first_model": champion is None,
        "reasons": reasons,
        "checks": checks,
        "values": {c["metric"]: c["value"] for c in checks if c["kind"] in ("value", "change")},
        "deltas": {c["metric"]: c.get("diff") for c in checks if c["kind"] == "change"},
        "references": {
            c["reference"]: {
                **{k: c.get(k) for k in ("metric", "value", "other", "diff", "passed")},
                "lower": (c.get("paired") or {}).get("lower"),
            }
            for c in checks
            if c["kind"] == "reference"
        },
        "thresholds": cfg.model_dump(mode="json"),
        "seed": cfg.seed,
    }


# --------------------------------------------------------------------------- the step


def read_samples(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def lineage(store: ArtifactStore, step: str, key: str) -> dict[str, Any]:
    """Every upstream artifact of (step, key) by step name: {step: key} (from the manifests)."""
    out: dict[str, str] = {}
    todo = [(step, key)]
    while todo:
        s, k = todo.pop()
        m = store.manifest(s, k) or {}
        for ref in (m.get("inputs") or {}).values():
            if ref["step"] not in out:
                out[ref["step"]] = ref["key"]
                todo.append((ref["step"], ref["key"]))
    return out


def gate_step(ctx: StepContext) -> dict[str, Any]:
    """Judge the candidate against thresholds and the champion; register and maybe promote it."""
    cfg = ctx.config
    extra = ctx.extra or {}
    eval_ref, model_ref = ctx.inputs["eval"], ctx.inputs["model"]
    name = extra.get("name") or eval_ref.stats.get("name") or "llmflow"
    eval_dir, model_dir = ctx.input_path("eval"), ctx.input_path("model")
    doc = json.loads((eval_dir / "metrics.json").read_text())
    metrics, samples = doc["metrics"], read_samples(eval_dir / "samples.jsonl")
    reg = Registry(ctx.store, name)
    champion = reg.get(extra["champion"]) if extra.get("champion") is not None else None
    is_champion = champion is not None and champion["finetune_key"] == model_ref.key
    if is_champion:  # re-gating the champion itself: a comparison with itself means nothing
        ctx.logger.info("the candidate is champion v%s: no champion checks", champion["version"])
        champion = None
    champion_samples = None
    if champion is not None and champion.get("eval_key"):
        if ctx.store.exists("evaluate", champion["eval_key"]):
            champion_samples = read_samples(
                ctx.store.local_path(("evaluate", champion["eval_key"])) / "samples.jsonl"
            )
        else:
            ctx.logger.warning(
                "the champion's evaluation %s is gone: its paired tests cannot run", champion["eval_key"][:12]
            )

    decision = decide(cfg, metrics, samples, champion, champion_samples)
    decision.update(
        name=name,
        candidate={"finetune_key": model_ref.key, "eval_key": eval_ref.key},
        champion=None
        if champion is None
        else {"version": champion["version"], "eval_key": champion.get("eval_key")},
        candidate_is_champion=is_champion,
    )

    bias = _read_json(eval_dir / "bias.json")
    ft_lineage = _read_json(model_dir / "lineage.json")
    entry_lineage = {
        "artifacts": {"finetune": model_ref.key, **lineage(ctx.store, "finetune", model_ref.key)},
        "finetune_config": ft_lineage.get("config"),
        "code": ft_lineage.get("code"),
        "base_fingerprint": ft_lineage.get("base_fingerprint"),
        "base_model": ft_lineage.get("base_model"),
    }
    model_path = str(model_dir / "model")
    before = reg.champion()
    version = reg.register(
        model_ref.key,
        model_path,
        eval_key=eval_ref.key,
        metrics=metrics,
        lineage=entry_lineage,
        gate={"passed": decision["passed"], "reasons": decision["reasons"]},
    )
    promoted = False
    if decision["passed"] and cfg.promote:
        promoted = before is None or before["version"] != version
        reg.promote(version)
    entry = reg.get(version)
    reg.write_card(version, render_card(entry, doc, bias, decision, store=ctx.store))
    decision.update(version=version, promoted=promoted)
    (ctx.out / "decision.json").write_text(json.dumps(decision, indent=2, default=str))
    ctx.report(_markdown(decision), name="decision")
    ctx.table(
        [
            {
                k: c.get(k)
                for k in (
                    "kind",
                    "metric",
                    "reference",
                    "value",
                    "other",
                    "champion",
                    "diff",
                    "passed",
                    "reason",
                )
            }
            for c in decision["checks"]
        ],
        name="gate-checks",
    )
    return {
        "passed": decision["passed"],
        "promoted": promoted,
        "version": version,
        "reasons": decision["reasons"],
        "champion": decision["champion"],
        "references": decision["references"],
        "confidence": cfg.confidence,
        "name": name,
    }


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _bound(c: dict[str, Any]) -> str:
    if c["kind"] == "value":
        return " ".join(f"{k} {c[k]:g}" for k in ("min", "max") if c[k] is not None)
    if c["kind"] == "change":
        return " ".join(f"{k} {c[k]:+g}" for k in ("absolute", "relative") if c[k] is not None)
    if c["kind"] == "noninferiority":
        return f"margin {c['margin']:g}"
    if "paired" in c:
        return f"{c['paired']['confidence']:.0%} lower bound of gain > {c.get('min_gain', 0):g}"
    return "below" if c.get("reference") == "unigram" else ""


def _markdown(d: dict[str, Any]) -> str:
    verdict = "PASSED" if d["passed"] else "FAILED"
    if d["champion"]:
        champ = f"v{d['champion']['version']}"
    elif d.get("candidate_is_champion"):
        champ = "the candidate itself (no champion checks)"
    else:
        champ = "none (first model: no champion checks)"
    lines = [f"# Gate {verdict}: `{d['name']}` v{d['version']}\n"]
    if d["reasons"]:
        lines += ["Why it failed:\n", *[f"- {r}" for r in d["reasons"]], ""]
    lines += [
        f"- champion: {champ}",
        f"- promoted: {'yes' if d['promoted'] else 'no'}",
        f"- seed: {d['seed']}\n",
        "| check | metric | candidate | against | value there | diff | lower bound | bound | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in d["checks"]:
        against = c.get("reference") or ("champion" if c["kind"] in ("change", "noninferiority") else "")
        other = c.get("other", c.get("champion"))
        lower = c.get("paired", {}).get("lower")
        lines.append(
            f"| {c['kind']} | {c['metric']} | {_f(c['value'])} | {against} | {_f(other)} | {_f(c.get('diff'))} | "
            f"{_f(lower)} | {_bound(c)} | {'pass' if c['passed'] else 'FAIL: ' + c['reason']} |"
        )
    return "\n".join(lines) + "\n"


def _f(x: Any) -> str:
    return "—" if x is None else f"{x:.4g}"


def _events(ref: StepRef) -> list[tuple[str, str, dict[str, Any]]]:
    s = ref.stats
    resource = events.resource_id("model", s.get("name", "llmflow"))
    payload = {"version": s.get("version"), "key": ref.key, "reasons": s.get("reasons", [])}
    out = [(events.GATE_PASSED if s.get("passed") else events.GATE_FAILED, resource, payload)]
    if s.get("promoted"):
        out.append((events.MODEL_PROMOTED, resource, {"version": s.get("version"), "key": ref.key}))
    return out


gate = step_task("gate", VERSION, gate_step, events=_events)
