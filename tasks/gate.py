"""The `gate` step: decide whether the fine-tuned candidate may replace the champion.

Inputs: `eval` (evaluate: metrics.json, samples.jsonl, bias.json) and `model` (finetune).
`extra = {"name": <registry name>, "champion": <champion version or None>}`: the flow passes the
registry's current champion, so a new champion re-runs the gate (it is part of the key).

Checks (`decide`, a plain function):
- value thresholds: `min <= value <= max` for each configured metric;
- change thresholds against the champion, with TFX model-validation semantics: diff =
  challenger - champion, relative = diff / champion; higher_is_better passes when
  diff >= absolute and relative >= relative, lower_is_better when diff <= absolute and
  relative <= relative. For metrics that are means of per-sample scores (ROUGE, EM, F1) and
  samples shared with the champion's evaluation (paired by id), the point diff is replaced by a
  paired bootstrap 95% CI: by default the candidate fails only when the whole CI is beyond the
  bound (worse beyond noise); `strict_noninferiority` requires the whole CI to clear it.
- the first model ever (no champion), or the champion itself gated again, is judged on value
  thresholds alone;
- a metric that is missing fails its check.

Every gated candidate is registered (alias `challenger`); on pass with `promote`, it becomes the
champion. Output `decision.json`; stats {passed, promoted, version, reasons, champion}.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

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


def _paired(metric: str, samples, champion_samples) -> tuple[list[float], list[float]]:
    if metric not in M.MEAN_METRICS or not samples or not champion_samples:
        return [], []
    champ = {s["id"]: s["scores"].get(metric) for s in champion_samples}
    a, b = [], []
    for s in samples:
        x, y = s["scores"].get(metric), champ.get(s["id"])
        if _num(x) is not None and _num(y) is not None:
            a.append(float(x))
            b.append(float(y))
    return a, b


def change_check(
    t, metrics: dict[str, Any], champion_metrics: dict[str, Any], samples, champion_samples, cfg: GateConfig
) -> dict[str, Any]:
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
    out["diff"] = diff
    out["relative_diff"] = diff / old if old != 0 else None
    a, b = _paired(t.metric, samples, champion_samples)
    if a and cfg.bootstrap > 0:
        pb = M.paired_bootstrap(a, b, cfg.bootstrap, cfg.seed)
        lo, hi = pb["ci"]
        # judge the end of the CI most favourable to the candidate (default) or least (strict)
        favourable = hi if sign > 0 else lo
        unfavourable = lo if sign > 0 else hi
        judged = unfavourable if cfg.strict_noninferiority else favourable
        out["paired"] = pb
        out["method"] = "paired_bootstrap_strict" if cfg.strict_noninferiority else "paired_bootstrap"
        base = pb["champion_mean"]
        rel = judged / base if base != 0 else None
    else:
        out["method"] = "point"
        judged, rel = diff, out["relative_diff"]
    reasons = []
    if t.absolute is not None and sign * judged < sign * t.absolute:
        reasons.append(f"{t.metric} diff {diff:+.4g} (judged {judged:+.4g}) fails absolute {t.absolute:+g}")
    if t.relative is not None and rel is not None and sign * rel < sign * t.relative:
        reasons.append(f"{t.metric} relative diff {rel:+.3%} fails relative {t.relative:+g}")
    return {**out, "passed": not reasons, "reason": "; ".join(reasons)}


def decide(
    cfg: GateConfig,
    metrics: dict[str, Any],
    samples: list[dict[str, Any]] | None = None,
    champion: dict[str, Any] | None = None,
    champion_samples: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """All checks and the verdict. `champion` is a registry entry (with `metrics`) or None."""
    checks = [value_check(t, metrics) for t in cfg.value_thresholds]
    if champion is not None:
        checks += [
            change_check(t, metrics, champion.get("metrics", {}), samples, champion_samples, cfg)
            for t in cfg.change_thresholds
        ]
    reasons = [c["reason"] for c in checks if not c["passed"]]
    return {
        "passed": not reasons,
        "first_model": champion is None,
        "reasons": reasons,
        "checks": checks,
        "values": {c["metric"]: c["value"] for c in checks},
        "deltas": {c["metric"]: c.get("diff") for c in checks if c["kind"] == "change"},
        "intervals": {c["metric"]: c["paired"]["ci"] for c in checks if "paired" in c},
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
        ctx.logger.info("the candidate is champion v%s: value thresholds only", champion["version"])
        champion = None
    champion_samples = None
    if champion is not None and champion.get("eval_key"):
        if ctx.store.exists("evaluate", champion["eval_key"]):
            champion_samples = read_samples(
                ctx.store.local_path(("evaluate", champion["eval_key"])) / "samples.jsonl"
            )
        else:
            ctx.logger.warning(
                "the champion's evaluation %s is gone: point estimates only", champion["eval_key"][:12]
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
                    "value",
                    "champion",
                    "diff",
                    "min",
                    "max",
                    "absolute",
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
        "name": name,
    }


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _markdown(d: dict[str, Any]) -> str:
    verdict = "PASSED" if d["passed"] else "FAILED"
    if d["champion"]:
        champ = f"v{d['champion']['version']}"
    elif d.get("candidate_is_champion"):
        champ = "the candidate itself (value thresholds only)"
    else:
        champ = "none (first model: value thresholds only)"
    lines = [
        f"# Gate {verdict}: `{d['name']}` v{d['version']}\n",
        f"- champion: {champ}",
        f"- promoted: {'yes' if d['promoted'] else 'no'}",
        f"- seed: {d['seed']}\n",
        "| check | metric | value | champion | diff | 95% CI of diff | bound | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in d["checks"]:
        if c["kind"] == "value":
            bound = " ".join(f"{k} {c[k]:g}" for k in ("min", "max") if c[k] is not None)
        else:
            bound = " ".join(f"{k} {c[k]:+g}" for k in ("absolute", "relative") if c[k] is not None)
        ci = c.get("paired", {}).get("ci")
        lines.append(
            f"| {c['kind']} | {c['metric']} | {_f(c['value'])} | {_f(c.get('champion'))} | {_f(c.get('diff'))} | "
            f"{f'[{ci[0]:+.4g}, {ci[1]:+.4g}]' if ci else ''} | {bound} | {'pass' if c['passed'] else 'FAIL: ' + c['reason']} |"
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
