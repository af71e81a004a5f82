"""Model cards: a Hugging Face style README.md for each registry version.

The card follows the Hugging Face model card layout (YAML metadata, then model details, uses,
bias/risks/limitations, training, evaluation), filled from the registry entry (lineage,
metrics), the evaluation (metrics.json, bias.json) and the gate decision. It is written next to
the entry (`registry/<name>/v<N>/README.md`) by the gate.

What it says about the pretraining data comes from the manifests of the `ingest` and `prepare`
artifacts in the entry's lineage (`data_records`): the data steps that ran, those turned off, what
each dropped, and the languages kept (the `language:` metadata). Nothing recorded, nothing claimed.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from llmflow.store import ArtifactStore

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


# prepare's sub-steps (its stats["steps"]), in run order, as the card names them
_DATA_STEPS = {
    "normalize": "normalisation",
    "quality": "quality filters",
    "langid": "language ID",
    "toxicity": "toxicity filter",
    "decontaminate": "decontamination against the task's held-out items",
    "pii": "PII redaction",
    "dedup_exact": "exact deduplication",
    "dedup_minhash": "MinHash near-deduplication",
}


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else "—" if x is None else str(x)


def data_records(store: ArtifactStore, artifacts: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The manifests (config, stats) of the lineage's `ingest` and `prepare` artifacts, by step;
    a step missing from the lineage or the store is absent."""
    out = {}
    for step in ("ingest", "prepare"):
        key = artifacts.get(step)
        manifest = store.manifest(step, key) if key else None
        if manifest is not None:
            out[step] = {
                "key": key,
                "config": manifest.get("config") or {},
                "stats": manifest.get("stats") or {},
            }
    return out


def kept_languages(prepare: dict[str, Any] | None) -> list[str]:
    """Languages of the kept documents, most documents first; none when language ID did not run."""
    stats = (prepare or {}).get("stats") or {}
    if (stats.get("steps") or {}).get("langid", {}).get("status") != "ran":
        return []
    by_lang = stats.get("by_language") or {}
    return sorted((lang for lang in by_lang if lang != "und"), key=lambda lang: (-by_lang[lang], lang))


def _n(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"`{k}` {n:,}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _data_section(records: dict[str, dict[str, Any]]) -> list[str]:
    """The pretraining data as its steps recorded it (markdown lines)."""
    prep = records.get("prepare")
    if prep is None:
        return [
            "No llmflow data step is in this model's lineage (or its records are gone): nothing is "
            "claimed here about the data the base model was trained on.",
        ]
    out: list[str] = []
    ing = records.get("ingest")
    if ing is not None and "documents" in ing["stats"]:
        st = ing["stats"]
        sources = ", ".join(f"{k} ({v:,})" for k, v in (st.get("by_source") or {}).items())
        out += [
            f"Ingest (artifact `{ing['key'][:16]}`) read {_n(st.get('documents', 0), 'document')}"
            + (f" from {sources}" if sources else "")
            + f" and rejected {_n(st.get('rejected', 0), 'record')}"
            + (f" ({_counts(st['rejects_by_reason'])})" if st.get("rejects_by_reason") else "")
            + ".",
            "",
        ]
    st, cfg = prep["stats"], prep["config"]
    out += [
        f"The data step (`prepare` artifact `{prep['key'][:16]}`) took {st.get('input', 0):,} documents "
        f"and kept {st.get('kept', 0):,} (train {st.get('train_docs', 0):,}, validation "
        f"{st.get('validation_docs', 0):,}); it dropped {st.get('rejected', 0):,}:",
        "",
    ]
    steps = st.get("steps")
    if not steps:
        return out + [
            "This artifact does not record which of its sub-steps ran (it predates that record). "
            f"Documents dropped by reason: {_counts(st.get('rejects_by_reason') or {}) or 'none'}.",
        ]
    out += ["| data step | ran | what it did |", "|---|---|---|"]
    covered: set[str] = set()
    for name, label in _DATA_STEPS.items():
        s = steps.get(name)
        if s is None:
            continue
        status = s["status"]
        ran = {"ran": "yes", "off": "no: turned off in the config"}.get(status, f"no: {status}")
        dropped = s.get("dropped") or {}
        covered |= set(dropped)
        if status != "ran" or (name == "normalize" and not dropped):
            did = "—"
        elif name.startswith("dedup"):
            did = f"removed {_n(sum(dropped.values()), 'duplicate')}"
        elif name == "pii":
            pii = st.get("pii") or {}
            did = _n(sum(pii.values()), "redaction") + (f" ({_counts(pii)})" if any(pii.values()) else "")
        else:
            did = f"dropped {sum(dropped.values()):,}" + (f" ({_counts(dropped)})" if dropped else "")
        if name == "langid" and status == "ran":
            allow = (cfg.get("langid") or {}).get("allow") or []
            label += f" (allowed: {', '.join(allow)})" if allow else " (any language)"
        if name == "decontaminate" and status == "ran":
            did += f"; {_n(st.get('decontamination_ngrams', 0), 'n-gram')} of the task's items indexed"
        out.append(f"| {label} | {ran} | {did} |")
    other = {
        r: n for r, n in (st.get("rejects_by_reason") or {}).items() if r not in covered and r != "dedup"
    }
    if other:
        out += ["", f"Dropped outside these steps: {_counts(other)}."]
    langs = kept_languages(prep)
    by_lang = st.get("by_language") or {}
    out += [
        "",
        "Languages of the kept documents: "
        + (", ".join(f"{lang} ({by_lang[lang]:,})" for lang in langs) if langs else "not identified")
        + ("." if steps.get("langid", {}).get("status") == "ran" else " (language ID did not run)."),
    ]
    return out


def _card_licence(licence: str | None) -> str:
    """The card's `license:` for a fine-tune of a base under `licence`: the same identifier, or
    "other" when the base's is not stated or not one identifier."""
    if not licence or " " in licence or "," in licence:
        return "other"
    return licence


def render_card(
    entry: dict[str, Any],
    evaluation: dict[str, Any] | None = None,
    bias: dict[str, Any] | None = None,
    decision: dict[str, Any] | None = None,
    store: ArtifactStore | None = None,
) -> str:
    """The README.md text for one registry entry; `store` holds the artifacts of its lineage."""
    evaluation, bias, decision = evaluation or {}, bias or {}, decision or {}
    lineage = entry.get("lineage") or {}
    cfg = lineage.get("finetune_config") or {}
    arts = lineage.get("artifacts") or {}
    records = data_records(store, arts) if store is not None else {}
    languages = kept_languages(records.get("prepare"))
    metrics = entry.get("metrics") or evaluation.get("metrics") or {}
    cis = evaluation.get("ci") or {}
    brought = lineage.get("base_model") or {}
    meta = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "license": _card_licence(brought.get("license")) if brought else "other",
        **({"base_model": brought["hub"]} if brought.get("hub") else {}),
        **({"language": languages} if languages else {}),
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
        (
            f"A causal language model built on `{brought.get('source')}`, "
            + ("further pretrained and " if "pretrain" in arts else "")
            + "fine-tuned by llmflow on a "
            if brought
            else "A small causal language model pretrained from scratch and fine-tuned by llmflow on a "
            if "pretrain" in arts
            else "A causal language model fine-tuned by llmflow on a "
        )
        + "prompt -> response task. Aliases: "
        + (", ".join(entry.get("aliases") or []) or "none")
        + ".",
        "",
        "## Model details",
        "",
        f"- Fine-tuning method: {cfg.get('method', 'unknown')}",
        f"- Model files: `{entry.get('model_path')}` (load with `AutoModelForCausalLM.from_pretrained`, "
        "or `model.adapters.load_finetuned` for prompt tuning)",
        *(
            [
                f"- Base model: `{brought.get('source')}`"
                + (
                    f" (hub revision `{brought['revision']}`)"
                    if brought.get("revision")
                    else " (a local directory)"
                )
                + f", {brought.get('model_type')} architecture, licence: {brought.get('license') or 'not stated by its card or config'}",
            ]
            if brought
            else []
        ),
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
        "### Pretraining data",
        "",
        *_data_section(records),
        "",
        "## Training procedure",
        "",
        "```json",
        json.dumps(cfg, indent=2, sort_keys=True),
        "```",
        "",
        "## Evaluation",
        "",
        f"Held-out test split, {evaluation.get('n', '?')} samples, {evaluation.get('decoding', 'greedy')} decoding; 95% bootstrap "
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
    refs = evaluation.get("baselines") or {}
    if refs:
        out += [
            "",
            "Against reference points on the same items (the model before fine-tuning, trivial answers):",
            "",
            "| answer | ROUGE-L | BLEU | chrF | exact match |",
            "|---|---|---|---|---|",
        ]
        for name, m in {"this model": metrics, **refs}.items():
            out.append(
                f"| {name} | {_fmt(m.get('rougeL'))} | {_fmt(m.get('bleu'))} | {_fmt(m.get('chrf'))} | "
                f"{_fmt(m.get('exact_match'))} |"
            )
    if decision:
        out += [
            "",
            f"Gate: {'passed' if decision.get('passed') else 'failed'}"
            + (f" ({'; '.join(decision.get('reasons') or [])})" if decision.get("reasons") else "")
            + (
                f", compared with champion v{decision['champion']['version']}"
                if decision.get("champion")
                else ", first model (no champion checks)"
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
