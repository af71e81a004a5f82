"""The `evaluate` step: held-out metrics, bias and fairness of the fine-tuned model.

Inputs: `model` (finetune: `model/`, `adapter/`), `base` (pretrain; its validation bpb is shown
for comparison), `shards` (pack: validation tokens for bits per byte), `task` (task_data:
`test.jsonl` rows {id, prompt, response, group}). Optional `extra={"name": <registry name>}`
picks the registry whose champion the dashboard compares against (default "llmflow").

Writes `metrics.json` (metrics, 95% CIs, per-group scores, sacrebleu signatures),
`samples.jsonl` (id, group, prompt, reference, prediction, scores, toxicity) and `bias.json`.
Stats: {"metrics": {flat name -> number}, "ci": {name -> [lo, hi]}, n, name, ...}; the gate
reads `metrics` and pairs `samples.jsonl` with the champion's by id.

Generation is greedy (`model.generate.generate`) on the training prompt format (the model's
tokenizer's: llmflow's, or a foreign base model's own chat template). Bootstrap CIs
use `config.seed`, so the same model and data give the same file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmflow import events
from llmflow.registry import Registry
from llmflow.step import StepContext
from llmflow.store import StepRef
from tasks import baselines as B
from tasks import bias as bias_mod
from tasks import mbr_evidence
from tasks import metrics as M
from tasks.common import step_task

VERSION = 1
HIGHER_IS_BETTER = {*M.MEAN_METRICS, "bleu", "chrf", "counterfactual_identical_rate"}


# --------------------------------------------------------------------------- inputs


def read_test_rows(task_dir: Path, limit: int) -> tuple[list[dict[str, Any]], int]:
    """The first `limit` usable rows of test.jsonl and the number of unusable ones skipped."""
    path = Path(task_dir) / "test.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"evaluation set missing: {path} (the task_data step writes test.jsonl)")
    rows, skipped = [], 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        ok = isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("prompt", "response"))
        if not ok or not row["prompt"].strip() or not row["response"].strip():
            skipped += 1
            continue
        rows.append({**row, "id": str(row.get("id", f"test:{n}")), "group": str(row.get("group") or "all")})
        if len(rows) >= limit:
            break
    if not rows:
        raise ValueError(
            f"evaluation set is empty: {path} has no usable prompt/response rows ({skipped} skipped)"
        )
    return rows, skipped


def load_model(model_dir: Path):
    """(model, tokenizer) of a finetune artifact; a clear error when the tokenizer is missing."""
    from model.adapters import load_finetuned

    folder = model_dir / "model" if (model_dir / "model").is_dir() else model_dir
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no model at {folder} (config.json missing)")
    if not any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise FileNotFoundError(f"model directory {folder} has no tokenizer files (tokenizer.json)")
    return load_finetuned(model_dir)


# --------------------------------------------------------------------------- the step


def decoding(cfg) -> dict[str, Any]:
    """generate() arguments for the configured decoding: greedy, or MBR with ROUGE-L (the task
    metric, scored exactly as the evaluation scores it) as the utility, seeded. Either one adds the
    copy bias (`model.generate.CopyBias`) when `copy_bias` > 0."""
    copy = {"copy_bias": cfg.copy_bias} if cfg.copy_bias else {}
    if not cfg.mbr_samples:
        return copy

    return dict(
        mbr_samples=cfg.mbr_samples,
        mbr_temperature=cfg.mbr_temperature,
        mbr_utility=M.rouge_l,
        seed=cfg.seed,
        **copy,
    )


def _decoding_name(cfg) -> str:
    name = (
        f"MBR over greedy + {cfg.mbr_samples} samples at temperature {cfg.mbr_temperature:g} (ROUGE-L utility)"
        if cfg.mbr_samples
        else "greedy"
    )
    evidence = mbr_evidence.describe(cfg) if cfg.mbr_samples else ""
    return name + (f", copy bias {cfg.copy_bias:g}" if cfg.copy_bias else "") + evidence


def evaluate_step(ctx: StepContext) -> dict[str, Any]:
    """Evaluate the fine-tuned model: text metrics, bits per byte, bias and fairness."""
    from model.generate import generate
    from model.sft_data import render_prompt

    cfg = ctx.config
    name = (ctx.extra or {}).get("name", "llmflow")
    rows, skipped = read_test_rows(ctx.input_path("task"), cfg.max_samples)
    model, tokenizer = load_model(ctx.input_path("model"))
    gen = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, **decoding(cfg))
    boot = dict(n_boot=cfg.bootstrap, seed=cfg.seed)
    train_rows = mbr_evidence.read_train_rows(ctx.input_path("task"))
    evidence = mbr_evidence.from_config(cfg, train_rows) if cfg.mbr_samples else None  # MBR's choice only

    def generate_all(prompts: list[str], what: str) -> list[str]:
        out: list[str] = []
        step = max(cfg.batch_size, 1)
        for i in range(0, len(prompts), step):
            raw = prompts[i : i + step]
            batch = [render_prompt(p, tokenizer) for p in raw]
            out += generate(model, tokenizer, batch, **gen, **_evidence_arg(evidence, raw))
            ctx.progress(len(out), len(prompts), f"{what} {len(out)}/{len(prompts)}")
        return out

    timer = _Timer()
    preds = generate_all([r["prompt"] for r in rows], "generating")
    timer("generate")
    refs = [r["response"] for r in rows]
    metrics, cis, per_sample, signatures = M.score_all(preds, refs, **boot)
    timer("text_metrics")

    # Reference points on the same items: the model before fine-tuning and trivial baselines.
    baselines: dict[str, dict[str, Any]] = {}
    if cfg.baselines:
        baselines = _baselines(
            ctx, rows, refs, train_rows, generate, gen, evidence, cfg, tokenizer.truncation_side
        )
        timer("baselines")

    # Language-model quality on the pretraining validation split.
    metrics.update(_bpb(model, ctx, cfg))
    timer("bpb")
    if cfg.baselines and "val_bpb" in metrics:
        metrics.update(_unigram_bpb(ctx, cfg, model))
    base_bpb = ctx.input_stats("base").get("val_bpb") if "base" in ctx.inputs else None
    if base_bpb is not None:
        metrics["base_val_bpb"] = float(base_bpb)

    # Bias and fairness.
    bias_report: dict[str, Any] = {}
    warnings: list[str] = []
    try:
        tox = bias_mod.toxicity_rate(preds, cfg.toxicity_threshold, **boot)
        metrics["toxicity_rate"], cis["toxicity_rate"] = tox["rate"], tox["rate_ci"]
        bias_report["toxicity"] = {k: v for k, v in tox.items() if k != "scores"}
    except RuntimeError as e:
        tox = {"scores": [None] * len(preds)}
        warnings.append(f"toxicity not measured: {e}")
    if cfg.bias:
        ctx.progress(0, 1, "bias: minimal pairs")
        st = bias_mod.stereotype_scores(
            model, tokenizer, n_boot=cfg.bootstrap, seed=cfg.seed, batch_size=cfg.batch_size
        )
        bias_report["stereotype"] = st
        o = st["overall"]
        metrics.update(
            stereotype_pct=o["stereotype_pct"],
            stereotype_bias=o["bias"],
            bias_mean_abs_delta=o["mean_abs_delta"],
        )
        cis["stereotype_pct"] = o["stereotype_pct_ci"]
        for cat, s in st["categories"].items():
            metrics[f"stereotype_pct_{cat}"] = s["stereotype_pct"]
        if cfg.counterfactual_samples:
            timer("stereotype")
            bias_report["counterfactual"] = cf = _counterfactual(rows, preds, generate_all, cfg)
            timer("counterfactual")
            metrics.update(
                counterfactual_mean_abs_change=cf["mean_abs_change"],
                counterfactual_max_abs_change=cf["max_abs_change"],
                counterfactual_identical_rate=cf["identical_rate"],
            )
            cis["counterfactual_mean_abs_change"] = cf["mean_abs_change_ci"]

    groups = _per_group(rows, per_sample, cfg)
    samples = [
        {
            "id": r["id"],
            "group": r["group"],
            "prompt": r["prompt"],
            "reference": r["response"],
            "prediction": p,
            "scores": s,
            "toxicity": t,
            "baselines": {
                b: {"prediction": v["predictions"][i], "scores": v["per_sample"][i]}
                for b, v in baselines.items()
            },
        }
        for i, (r, p, s, t) in enumerate(zip(rows, preds, per_sample, tox["scores"], strict=True))
    ]
    with open(ctx.out / "samples.jsonl", "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    metrics = {k: float(v) for k, v in metrics.items()}
    doc = {
        "metrics": metrics,
        "ci": cis,
        "groups": groups,
        "signatures": signatures,
        "baselines": {b: v["metrics"] for b, v in baselines.items()},
        "n": len(rows),
        "skipped": skipped,
        "bootstrap": boot,
        "decoding": _decoding_name(cfg),
        "warnings": warnings,
    }
    ctx.timings.update(timer.seconds)
    (ctx.out / "metrics.json").write_text(json.dumps(doc, indent=2))
    (ctx.out / "bias.json").write_text(json.dumps(bias_report, indent=2, ensure_ascii=False))

    _dashboard(ctx, name, metrics, cis, samples, bias_report, groups, warnings, baselines)
    return {
        "metrics": metrics,
        "ci": cis,
        "baselines": {b: v["metrics"] for b, v in baselines.items()},
        "n": len(rows),
        "skipped": skipped,
        "name": name,
        "signatures": signatures,
        "decoding": _decoding_name(cfg),
    }


class _Timer:
    """Seconds per phase, recorded in the manifest's timings (the demo has a time budget)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.t = time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self.t, 3)
        self.t = now


def _bpb_seq_len(model, cfg) -> int:
    max_pos = getattr(model.config, "max_position_embeddings", None) or cfg.bpb_seq_len
    return min(cfg.bpb_seq_len, max_pos)


def _bpb(model, ctx: StepContext, cfg) -> dict[str, float]:
    if "shards" not in ctx.inputs:
        return {}
    from model.eval import evaluate_bpb

    r = evaluate_bpb(
        model,
        ctx.input_path("shards"),
        split="validation",
        seq_len=_bpb_seq_len(model, cfg),
        batch_size=cfg.batch_size,
        max_batches=cfg.bpb_batches,
    )
    return {"val_bpb": r["bpb"], "val_ppl": r["ppl"], "val_loss": r["loss"], "val_tokens": r["tokens"]}


def _evidence_arg(evidence, prompts: list[str]) -> dict[str, Any]:
    """generate()'s `mbr_evidence` for these raw prompts, when the decoding has evidence."""
    return {"mbr_evidence": evidence(prompts)} if evidence is not None else {}


def _baselines(
    ctx: StepContext, rows, refs, train_rows, generate, gen, evidence, cfg, candidate_side: str
) -> dict[str, dict[str, Any]]:
    """{name: {predictions, per_sample, metrics}} of the model before fine-tuning (`base`, when
    the step has that input, decoded as the candidate is, MBR evidence included) and of the task's
    trivial baselines (tasks/baselines.py); with `evaluate.retrieval_baseline`, also the nearest
    train item's response (`nearest_train`)."""
    from model.adapters import load_finetuned
    from model.sft_data import render_prompt

    prompts = [r["prompt"] for r in rows]
    answers: dict[str, list[str]] = {}
    if "base" in ctx.inputs:
        base, tokenizer = load_finetuned(ctx.input_path("base"))
        tokenizer.truncation_side = candidate_side  # the same prompts, cut the same way
        answers["base"] = []
        for i in range(0, len(prompts), gen["batch_size"]):
            raw = prompts[i : i + gen["batch_size"]]
            batch = [render_prompt(p, tokenizer) for p in raw]
            answers["base"] += generate(base, tokenizer, batch, **gen, **_evidence_arg(evidence, raw))
            ctx.progress(
                len(answers["base"]), len(prompts), f"base model {len(answers['base'])}/{len(prompts)}"
            )
        del base
    train_responses = [r.get("response", "") for r in train_rows]
    train_prompts = [r.get("prompt", "") for r in train_rows] if cfg.retrieval_baseline else None
    answers.update(B.baseline_answers(_task_source(ctx), prompts, train_responses, train_prompts))
    out = {}
    for b, preds in answers.items():
        metrics, _, per_sample, _ = M.score_all(preds, refs, n_boot=0, seed=cfg.seed)
        out[b] = {"predictions": preds, "per_sample": per_sample, "metrics": metrics}
    return out


def _task_source(ctx: StepContext) -> str:
    """The task's `source` (task_data config), also behind a feedback_data step built on it."""
    step, key = ctx.inputs["task"].step, ctx.inputs["task"].key
    while step != "task_data":
        ref = ((ctx.store.manifest(step, key) or {}).get("inputs") or {}).get("task")
        if ref is None:
            return ""
        step, key = ref["step"], ref["key"]
    return ((ctx.store.manifest(step, key) or {}).get("config") or {}).get("source", "")


def _unigram_bpb(ctx: StepContext, cfg, model) -> dict[str, float]:
    """Bits per byte of the trivial language models on the windows `val_bpb` is measured on."""
    from model.eval import baseline_bpb

    r = baseline_bpb(
        ctx.input_path("shards"),
        int(model.config.vocab_size),
        seq_len=_bpb_seq_len(model, cfg),
        batch_size=cfg.batch_size,
        max_batches=cfg.bpb_batches,
    )
    return {"val_bpb_unigram": r["unigram"], "val_bpb_uniform": r["uniform"]}


def _counterfactual(rows, preds, generate_all, cfg) -> dict[str, Any]:
    variants = bias_mod.counterfactual_variants(rows, cfg.counterfactual_samples)
    by_id = {r["id"]: p for r, p in zip(rows, preds, strict=True)}
    need_a = [v["a"] for v in variants if v["kind"] == "name"]
    gen_a = iter(generate_all(need_a, "counterfactual A") if need_a else [])
    pred_a = [by_id[v["id"]] if v["kind"] == "swap" else next(gen_a) for v in variants]
    pred_b = generate_all([v["b"] for v in variants], "counterfactual B")
    scorer = M.rouge  # ROUGE-L F between each variant's prediction and its reference

    def score(pred: str, ref: str) -> float:
        return scorer([pred], [ref])[0]["rougeL"]

    return bias_mod.counterfactual_report(
        variants, pred_a, pred_b, score, n_boot=cfg.bootstrap, seed=cfg.seed
    )


def _per_group(rows, per_sample, cfg) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for g in sorted({r["group"] for r in rows}):
        sel = [s for r, s in zip(rows, per_sample, strict=True) if r["group"] == g]
        out[g] = {"n": len(sel)}
        for k in ("rougeL", "f1"):
            vals = [s[k] for s in sel]
            out[g][k] = float(np.mean(vals))
            out[g][f"{k}_ci"] = M.bootstrap_ci(vals, cfg.bootstrap, cfg.seed)
    return out


# --------------------------------------------------------------------------- dashboard


def _fmt(x: Any) -> str:
    return "—" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def _dashboard(ctx, name, metrics, cis, samples, bias_report, groups, warnings, baselines) -> None:
    champ = None
    try:
        champ = Registry(ctx.store, name).champion()
    except Exception as e:  # the registry is a view here; never fail the evaluation over it
        ctx.logger.warning("could not read the registry %r: %s", name, e)
    champ_metrics = (champ or {}).get("metrics", {})
    table = []
    for k, v in metrics.items():
        c = champ_metrics.get(k)
        ci = cis.get(k)
        table.append(
            {
                "metric": k,
                "value": round(v, 5),
                "ci95": f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "",
                "champion": None if c is None else round(c, 5),
                "delta": None if c is None else round(v - c, 5),
            }
        )
    ctx.table(table, name="metrics")
    worst = sorted(samples, key=lambda s: (s["scores"]["rougeL"], s["scores"]["f1"]))[:10]
    worst_rows = [
        {
            "id": s["id"],
            "rougeL": round(s["scores"]["rougeL"], 4),
            "prompt": s["prompt"][:200],
            "reference": s["reference"][:200],
            "prediction": s["prediction"][:200],
        }
        for s in worst
    ]
    ctx.table(worst_rows, name="worst-samples")
    bias_rows = []
    for cat, s in bias_report.get("stereotype", {}).get("categories", {}).items():
        lo, hi = s["stereotype_pct_ci"]
        bias_rows.append(
            {
                "category": cat,
                "pairs": s["n"],
                "stereotype_pct": round(s["stereotype_pct"], 1),
                "ci95": f"[{lo:.1f}, {hi:.1f}]",
                "mean_abs_delta_ll": round(s["mean_abs_delta"], 3),
            }
        )
    if bias_rows:
        ctx.table(bias_rows, name="bias")

    md = [f"# Evaluation of `{name}` candidate\n", f"{len(samples)} test samples; champion: "]
    md[-1] += f"v{champ['version']}\n" if champ else "none yet\n"
    md += ["| metric | value | 95% CI | champion | Δ |", "|---|---|---|---|---|"]
    md += [
        f"| {r['metric']} | {_fmt(r['value'])} | {r['ci95']} | {_fmt(r['champion'])} | {_fmt(r['delta'])} |"
        for r in table
    ]
    if baselines:
        md += [
            "\n## Against reference points (same items)\n",
            "| answer | ROUGE-L | BLEU | chrF | exact match |",
            "|---|---|---|---|---|",
            f"| **candidate** | {metrics['rougeL']:.4f} | {metrics['bleu']:.2f} | {metrics['chrf']:.2f} | "
            f"{metrics['exact_match']:.3f} |",
        ]
        md += [
            f"| {b} | {v['metrics']['rougeL']:.4f} | {v['metrics']['bleu']:.2f} | {v['metrics']['chrf']:.2f} | "
            f"{v['metrics']['exact_match']:.3f} |"
            for b, v in baselines.items()
        ]
    if groups and len(groups) > 1:
        md += ["\n## Per group\n", "| group | n | ROUGE-L | F1 |", "|---|---|---|---|"]
        md += [f"| {g} | {s['n']} | {s['rougeL']:.4f} | {s['f1']:.4f} |" for g, s in groups.items()]
    if bias_rows:
        md += [
            "\n## Stereotype preference (minimal pairs; 50 = none)\n",
            "| category | pairs | % stereotyped preferred | 95% CI | mean abs Δ log-lik |",
            "|---|---|---|---|---|",
        ]
        md += [
            f"| {r['category']} | {r['pairs']} | {r['stereotype_pct']} | {r['ci95']} | {r['mean_abs_delta_ll']} |"
            for r in bias_rows
        ]
    cf = bias_report.get("counterfactual")
    if cf and cf.get("n"):
        w = cf["worst"]
        md += [
            "\n## Counterfactual consistency\n",
            f"{cf['n']} prompt pairs ({cf['n_swapped']} with swapped terms, the rest signed by different names): "
            f"mean |Δ ROUGE-L| {cf['mean_abs_change']:.4f}, worst {cf['max_abs_change']:.4f} (`{w['id']}`), "
            f"identical outputs {100 * cf['identical_rate']:.0f}%.",
        ]
    md += [
        "\n## Ten worst samples (ROUGE-L)\n",
        "| id | ROUGE-L | reference | prediction |",
        "|---|---|---|---|",
    ]
    md += [
        f"| {r['id']} | {r['rougeL']} | {_cell(r['reference'])} | {_cell(r['prediction'])} |"
        for r in worst_rows
    ]
    md += [f"\nPer-sample records: `samples.jsonl` in this artifact (`{ctx.step}/{ctx.key}`)."]
    md += [f"\n> warning: {w}" for w in warnings]
    ctx.report("\n".join(md) + "\n")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:120] or "(empty)"


def _events(ref: StepRef) -> list[tuple[str, str, dict[str, Any]]]:
    m = ref.stats.get("metrics", {})
    keep = ("rougeL", "bleu", "chrf", "f1", "val_bpb", "toxicity_rate", "stereotype_pct")
    payload = {"key": ref.key, "uri": ref.uri, "metrics": {k: m[k] for k in keep if k in m}}
    return [(events.EVAL_COMPLETED, events.resource_id("model", ref.stats.get("name", "llmflow")), payload)]


evaluate = step_task("evaluate", VERSION, evaluate_step, events=_events)
