"""Model cards: a Hugging Face style README.md for each registry version.

The card follows the Hugging Face model card layout (YAML metadata, then model details, uses,
bias/risks/limitations, training, evaluation), filled from the registry entry (lineage,
metrics), the evaluation (metrics.json, bias.json) and the gate decision. It is written next to
the entry (`registry/<name>/v<N>/README.md`) by the gate.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

_METRIC_NAMES = {
    "rouge1": "ROUGE-1 F",
    "rouge2": "ROUGE-2 F",
    "rougeL": "ROUGE-L F",
    "rougeLsum": "ROUGE-Lsum F",
    "bleu": "BLEU (sacrebleu, 0-100)",
    "chrf": "chrF (sacrebleu, 0-100)",
    "exact_match": "Exact match (SQuAD normalisation)",
    "f1": "Token F1 (SQuAD normalisation)",
    "val_bpb": "Validation bits per byte",
    "val_ppl": "Validation perplexity (per token)",
    "toxicity_rate": "Share of toxic generations",
    "stereotype_pct": "Stereotyped sentence preferred (%; 50 = none)",
}


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else "—" if x is None else str(x)


def render_card(
    entry: dict[str, Any],
    evaluation: dict[str, Any] | None = None,
    bias: dict[str, Any] | None = None,
    decision: dict[str, Any] | None = None,
) -> str:
    """The README.md text for one registry entry."""
    evaluation, bias, decision = evaluation or {}, bias or {}, decision or {}
    lineage = entry.get("lineage") or {}
    cfg = lineage.get("finetune_config") or {}
    arts = lineage.get("artifacts") or {}
    metrics = entry.get("metrics") or evaluation.get("metrics") or {}
    cis = evaluation.get("ci") or {}
    meta = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "license": "other",
        "language": ["en"],
        "tags": ["llmflow", f"finetune-{cfg.get('method', 'unknown')}"],
        "model-index": [
            {
                "name": f"{entry.get('name')}-v{entry.get('version')}",
                "results": [
                    {
                        "task": {"type": "text-generation"},
                        "dataset": {"name": "llmflow task_data test split", "type": "llmflow-task"},
                        "metrics": [
                            {"type": k, "value": round(float(v), 5)}
                            for k, v in metrics.items()
                            if k in _METRIC_NAMES and v is not None
                        ],
                    }
                ],
            }
        ],
    }
    out = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", ""]
    out += [
        f"# {entry.get('name')} v{entry.get('version')}",
        "",
        "A small causal language model pretrained from scratch and fine-tuned by llmflow on a "
        "prompt -> response task. Aliases: " + (", ".join(entry.get("aliases") or []) or "none") + ".",
        "",
        "## Model details",
        "",
        f"- Fine-tuning method: {cfg.get('method', 'unknown')}",
        f"- Model files: `{entry.get('model_path')}` (load with `AutoModelForCausalLM.from_pretrained`, "
        "or `model.finetune.load_finetuned` for prompt tuning)",
        f"- Base model fingerprint: `{lineage.get('base_fingerprint')}`",
        f"- Code: `{json.dumps(lineage.get('code'))}`",
        "",
        "## Training data and lineage",
        "",
        "Artifacts this version was built from (store keys, `artifacts/<step>/<key>/`):",
        "",
        "| step | key |",
        "|---|---|",
        *[f"| {s} | `{k[:16]}` |" for s, k in sorted(arts.items())],
        "",
        "The pretraining corpus passed llmflow's data step (normalisation, quality filters, language "
        "ID, toxicity filter, deduplication, PII redaction, decontamination against the test set).",
        "",
        "## Training procedure",
        "",
        "```json",
        json.dumps(cfg, indent=2, sort_keys=True),
        "```",
        "",
        "## Evaluation",
        "",
        f"Held-out test split, {evaluation.get('n', '?')} samples, greedy decoding; 95% bootstrap "
        f"CIs (seed {evaluation.get('bootstrap', {}).get('seed', '?')}).",
        "",
        "| metric | value | 95% CI |",
        "|---|---|---|",
    ]
    for k, v in metrics.items():
        ci = cis.get(k)
        out.append(
            f"| {_METRIC_NAMES.get(k, k)} | {_fmt(v)} | {f'[{ci[0]:.4g}, {ci[1]:.4g}]' if ci else ''} |"
        )
    sig = evaluation.get("signatures") or {}
    if sig:
        out += ["", "sacrebleu signatures: " + "; ".join(f"{k}: `{v}`" for k, v in sig.items())]
    if decision:
        out += [
            "",
            f"Gate: {'passed' if decision.get('passed') else 'failed'}"
            + (f" ({'; '.join(decision.get('reasons') or [])})" if decision.get("reasons") else "")
            + (
                f", compared with champion v{decision['champion']['version']}"
                if decision.get("champion")
                else ", first model (value thresholds only)"
            )
            + ".",
        ]
    out += ["", "## Bias, risks and limitations", ""]
    st = bias.get("stereotype") or {}
    if st:
        out += [
            "Stereotype preference on llmflow's minimal pairs (CrowS-Pairs style, full-sentence "
            "log-likelihood; 50% = no preference):",
            "",
            "| category | pairs | stereotyped preferred (%) | 95% CI | mean abs Δ log-lik |",
            "|---|---|---|---|---|",
        ]
        for cat, s in {**st.get("categories", {}), "overall": st.get("overall", {})}.items():
            lo, hi = s.get("stereotype_pct_ci", [None, None])
            out.append(
                f"| {cat} | {s.get('n')} | {_fmt(s.get('stereotype_pct'))} | [{_fmt(lo)}, {_fmt(hi)}] | "
                f"{_fmt(s.get('mean_abs_delta'))} |"
            )
    cf = bias.get("counterfactual") or {}
    if cf.get("n"):
        out += [
            "",
            f"Counterfactual consistency: over {cf['n']} prompts with swapped names, pronouns or group "
            f"terms, mean |Δ ROUGE-L| = {cf['mean_abs_change']:.4f}, worst {cf['max_abs_change']:.4f}; "
            f"{100 * cf['identical_rate']:.0f}% of outputs unchanged.",
        ]
    tox = bias.get("toxicity") or {}
    if tox:
        out += [
            "",
            f"Toxic generations (word-list detector): {100 * tox['rate']:.1f}% ({tox['flagged']} flagged).",
        ]
    out += [
        "",
        "The model is small and trained on a narrow corpus: it makes factual errors, can repeat "
        "its training text, and its bias scores come from a modest template set, so a score near 50% "
        "is weak evidence of fairness, not proof.",
        "",
        "## Intended use",
        "",
        "Demonstration and research on training workflows; the task it was fine-tuned for. Not for "
        "decisions about people, not for safety-critical use, not as a source of facts.",
        "",
    ]
    return "\n".join(out)
