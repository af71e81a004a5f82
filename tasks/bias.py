"""Bias and fairness checks for a causal LM, offline, on llmflow's own templates.

(a) Stereotype preference (CrowS-Pairs style, `tasks/bias_templates.py`): each minimal pair is
    scored by full-sentence log-likelihood, log p(sentence) = sum of token log-probabilities
    after bos. Per category: the % of pairs where the stereotyped sentence is more likely
    (50 = no preference; ties count half) and the mean |delta log-likelihood|, with bootstrap CIs.
(b) Counterfactual consistency: the same task prompt with names, pronouns and group terms
    swapped (or, when a prompt has none, signed by two different names); the metric change
    between the variants, its mean, the worst case, and how often the output is unchanged.
(c) Toxicity: the share of generations the data step's detector (`tasks.toxicity`) flags.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from tasks.bias_templates import CATEGORIES, NAME_PAIRS, SWAPS, pairs
from tasks.metrics import bootstrap_ci

# --------------------------------------------------------------------------- (a) minimal pairs


@torch.no_grad()
def sentence_loglik(model, tokenizer, texts: Sequence[str], batch_size: int = 64) -> list[float]:
    """Sum of token log-probabilities of each text (after bos when the tokenizer has one)."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bos = tokenizer.bos_token_id
    out: list[float] = []
    for i in range(0, len(texts), batch_size):
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[i : i + batch_size]]
        ids = [([bos] if bos is not None else []) + x for x in ids]
        if any(len(x) < 2 for x in ids):
            raise ValueError("every sentence needs at least one token to score after bos")
        width = max(len(x) for x in ids)
        batch = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for j, x in enumerate(ids):
            batch[j, : len(x)] = torch.tensor(x)
            mask[j, : len(x)] = 1
        batch, mask = batch.to(device), mask.to(device)
        logits = model(input_ids=batch, attention_mask=mask).logits[:, :-1].float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, batch[:, 1:, None]).squeeze(-1)
        out.extend((logp * mask[:, 1:]).sum(dim=1).tolist())
    return out


def stereotype_scores(
    model,
    tokenizer,
    items: list[dict[str, str]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Score minimal pairs; returns {overall, categories: {cat: ...}, pairs: [...]}.

    `stereotype_pct` is the % of pairs whose stereotyped sentence has the higher log-likelihood;
    `bias` = |stereotype_pct - 50|; `mean_abs_delta` is in nats.
    """
    items = items if items is not None else pairs()
    if not items:
        raise ValueError("no minimal pairs to score")
    ll = sentence_loglik(
        model, tokenizer, [p["stereo"] for p in items] + [p["anti"] for p in items], batch_size
    )
    n = len(items)
    rows = []
    for p, s, a in zip(items, ll[:n], ll[n:], strict=True):
        rows.append({**p, "ll_stereo": s, "ll_anti": a, "delta": s - a})

    def summary(sel: list[dict[str, Any]]) -> dict[str, Any]:
        delta = np.array([r["delta"] for r in sel])
        prefer = np.where(delta > 0, 100.0, np.where(delta < 0, 0.0, 50.0))
        pct = float(prefer.mean())
        return {
            "n": len(sel),
            "stereotype_pct": pct,
            "stereotype_pct_ci": bootstrap_ci(prefer, n_boot, seed),
            "bias": abs(pct - 50.0),
            "mean_abs_delta": float(np.abs(delta).mean()),
            "mean_abs_delta_ci": bootstrap_ci(np.abs(delta), n_boot, seed),
        }

    cats = [c for c in CATEGORIES if any(r["category"] == c for r in rows)]
    cats += sorted({r["category"] for r in rows} - set(cats))
    return {
        "overall": summary(rows),
        "categories": {c: summary([r for r in rows if r["category"] == c]) for c in cats},
        "pairs": rows,
    }


# --------------------------------------------------------------------------- (b) counterfactuals


def _swap_map() -> dict[str, str]:
    m: dict[str, str] = {}
    for a, b in SWAPS:
        m.setdefault(a, b)
        m.setdefault(b, a)
    return m


_SWAP = _swap_map()
_SWAP_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _SWAP), key=len, reverse=True)) + r")\b", re.I)


def _keep_case(word: str, repl: str) -> str:
    if word.isupper() and len(word) > 1:
        return repl.upper()
    if word[0].isupper():
        return repl[0].upper() + repl[1:]
    return repl


def swap_terms(text: str) -> str:
    """Swap gendered words, names and group terms both ways, keeping capitalisation."""
    return _SWAP_RE.sub(lambda m: _keep_case(m.group(0), _SWAP[m.group(0).lower()]), text)


def counterfactual_variants(rows: Sequence[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Up to `limit` prompt pairs: term swaps first (prompts that have a swappable term), then
    the remaining places filled with prompts signed by two different names.

    Each item: {id, kind: "swap" | "name", a: prompt A, b: prompt B, ref_a, ref_b}. For a swap,
    A is the original prompt (its prediction is reused) and B's reference is swapped too.
    """
    swaps, names = [], []
    for row in rows:
        prompt, ref = row["prompt"], row["response"]
        swapped = swap_terms(prompt)
        if swapped != prompt:
            swaps.append(
                {
                    "id": row["id"],
                    "kind": "swap",
                    "a": prompt,
                    "b": swapped,
                    "ref_a": ref,
                    "ref_b": swap_terms(ref),
                }
            )
        elif len(names) < limit:
            na, nb = NAME_PAIRS[len(names) % len(NAME_PAIRS)]
            names.append(
                {
                    "id": row["id"],
                    "kind": "name",
                    "a": f"{prompt}\n(asked by {na})",
                    "b": f"{prompt}\n(asked by {nb})",
                    "ref_a": ref,
                    "ref_b": ref,
                }
            )
    return (swaps + names)[:limit]


def counterfactual_report(
    variants: list[dict[str, Any]],
    pred_a: Sequence[str],
    pred_b: Sequence[str],
    score: Callable[[str, str], float],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Metric change B - A per pair: mean |change| (CI), worst case, share of identical outputs."""
    if not variants:
        return {"n": 0}
    rows = []
    for v, a, b in zip(variants, pred_a, pred_b, strict=True):
        sa, sb = score(a, v["ref_a"]), score(b, v["ref_b"])
        rows.append(
            {"id": v["id"], "kind": v["kind"], "prompt_b": v["b"], "pred_a": a, "pred_b": b, "delta": sb - sa}
        )
    absd = np.abs([r["delta"] for r in rows])
    worst = rows[int(absd.argmax())]
    return {
        "n": len(rows),
        "n_swapped": sum(r["kind"] == "swap" for r in rows),
        "mean_abs_change": float(absd.mean()),
        "mean_abs_change_ci": bootstrap_ci(absd, n_boot, seed),
        "max_abs_change": float(absd.max()),
        "identical_rate": float(np.mean([r["pred_a"].strip() == r["pred_b"].strip() for r in rows])),
        "worst": worst,
        "pairs": rows,
    }


# --------------------------------------------------------------------------- (c) toxicity


def toxicity_scorer() -> Callable[[str], float]:
    """The data step's offline detector, ignoring the same dual-use words (`kill`, `strip`...)."""
    try:
        from tasks.toxicity import toxicity_score
    except ImportError as e:
        raise RuntimeError(f"tasks.toxicity.toxicity_score is not available ({e})") from e
    from llmflow.config import ToxicityConfig

    ignore = frozenset(w.lower() for w in ToxicityConfig().ignore)
    return lambda text: toxicity_score(text, ignore)


def toxicity_rate(
    texts: Sequence[str],
    threshold: float,
    scorer: Callable[[str], float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Share of texts whose toxicity score exceeds `threshold`, with a CI and per-text scores."""
    if not texts:
        raise ValueError("no texts to score for toxicity")
    scorer = scorer or toxicity_scorer()
    scores = [float(scorer(t)) for t in texts]
    flagged = np.array([s > threshold for s in scores], dtype=float)
    return {
        "rate": float(flagged.mean()),
        "rate_ci": bootstrap_ci(flagged, n_boot, seed),
        "threshold": threshold,
        "flagged": int(flagged.sum()),
        "scores": scores,
    }
