"""Text-generation metrics and bootstrap confidence intervals: plain functions, no torch.

- ROUGE-1/2/L/Lsum with `rouge-score` (Porter stemming on). Its default tokenizer keeps only
  `[a-z0-9]`, which turns any non-ASCII reference into nothing; `UnicodeTokenizer` keeps Unicode
  letters and digits and is identical to the default on ASCII text. The corpus score is the plain
  mean of per-sample F-measures (not rouge-score's unseeded BootstrapAggregator).
- BLEU and chrF with `sacrebleu` (corpus level, 0-100, its signature recorded); sentence-level
  scores are kept per sample for paired tests.
- Exact match and token F1 with SQuAD v1.1 normalisation (lower case, no punctuation, no
  articles, single spaces), in [0, 1].
- Bootstrap 95% CIs (percentile method, fixed seed), and a paired bootstrap for the difference
  of two systems on the same samples.

Empty predictions are scored, not refused: they get 0 for every metric unless the reference is
empty too (SQuAD's rule: two empty answers match).
"""

from __future__ import annotations

import collections
import functools
import re
import string
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import sacrebleu
from nltk.stem import porter
from rouge_score import rouge_scorer, tokenizers

from model.mbr import rouge_l_tokens

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# Per-sample scores whose mean is the corpus score (paired tests use these).
MEAN_METRICS = (*ROUGE_TYPES, "exact_match", "f1")


# --------------------------------------------------------------------------- ROUGE


class UnicodeTokenizer(tokenizers.Tokenizer):
    """rouge-score's tokenizer, but keeping Unicode letters and digits.

    Lower case, split on anything that is not a letter or digit, Porter-stem ASCII words longer
    than three characters. On ASCII text the tokens equal rouge-score's DefaultTokenizer.
    """

    _word = re.compile(r"[^\W_]+", re.UNICODE)

    def __init__(self, use_stemmer: bool = True):
        self._stemmer = porter.PorterStemmer() if use_stemmer else None

    def tokenize(self, text: str) -> list[str]:
        tokens = self._word.findall(text.lower())
        if self._stemmer is None:
            return tokens
        return [self._stemmer.stem(t) if len(t) > 3 and t.isascii() else t for t in tokens]


def _rouge_lsum_text(text: str) -> str:
    # rougeLsum splits summaries on newlines; treat each line as a sentence.
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def rouge(predictions: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """Per-sample ROUGE F-measures: [{"rouge1", "rouge2", "rougeL", "rougeLsum"}, ...]."""
    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True, tokenizer=UnicodeTokenizer())
    out = []
    for pred, ref in zip(predictions, references, strict=True):
        s = scorer.score(_rouge_lsum_text(ref), _rouge_lsum_text(pred))
        out.append({k: float(s[k].fmeasure) for k in ROUGE_TYPES})
    return out


@functools.lru_cache(maxsize=1)
def _tokenizer() -> UnicodeTokenizer:
    return UnicodeTokenizer(use_stemmer=True)


@functools.lru_cache(maxsize=1 << 16)
def _rouge_tokens(text: str) -> tuple[str, ...]:
    """The tokens `rouge` scores `text` by (UnicodeTokenizer, stemming on), once per distinct text."""
    return tuple(_tokenizer().tokenize(text))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F of one pair, exactly as `rouge` scores it (tested equal to rouge-score), fast
    enough to be the utility of MBR decoding, which compares every pair of candidates: each text
    is tokenized and stemmed once (cached), and the LCS is bit-parallel (`model.mbr.lcs_length`)."""
    return rouge_l_tokens(_rouge_tokens(prediction), _rouge_tokens(reference))


# --------------------------------------------------------------------------- SQuAD EM / F1


def normalize_answer(text: str) -> str:
    """SQuAD v1.1: lower case, remove punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1; two empty answers score 1, one empty answer scores 0."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------- sacrebleu


def _sacre(kind: str):
    return sacrebleu.BLEU() if kind == "bleu" else sacrebleu.CHRF()


def corpus_sacrebleu(
    kind: str,
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    n_boot: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Corpus BLEU or chrF (0-100) with its signature, per-sample sentence scores and a CI.

    `references` is one reference per prediction, or sacrebleu's list of reference streams
    (several references per prediction). The CI resamples sacrebleu's sufficient statistics per segment (as sacrebleu's own
    significance module does), so it is a CI of the corpus score, not of a mean of sentences.
    """
    if kind not in ("bleu", "chrf"):
        raise ValueError(f"unknown sacrebleu metric {kind!r} (bleu or chrf)")
    multi = bool(references) and not isinstance(references[0], str)
    refs = [list(stream) for stream in references] if multi else [list(references)]
    for stream in refs:
        _check_pairs(predictions, stream)
    metric = _sacre(kind)
    preds = list(predictions)
    score = metric.corpus_score(preds, refs).score
    signature = str(metric.get_signature())
    sentence_metric = sacrebleu.BLEU(effective_order=True) if kind == "bleu" else _sacre(kind)
    per_sample = [
        float(sentence_metric.sentence_score(p, [s[i] for s in refs]).score) for i, p in enumerate(preds)
    ]
    out: dict[str, Any] = {"score": float(score), "signature": signature, "per_sample": per_sample}
    if n_boot > 0 and preds:
        stats = np.asarray(metric._extract_corpus_statistics(preds, refs), dtype=np.float64)
        idx = np.random.default_rng(seed).integers(0, len(preds), size=(n_boot, len(preds)))
        boot = np.array([metric._compute_score_from_stats(stats[i].sum(0)).score for i in idx])
        out["ci"] = _percentile_ci(boot)
    return out


# --------------------------------------------------------------------------- bootstrap


def _percentile_ci(values: np.ndarray, level: float = 0.95) -> list[float]:
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def bootstrap_ci(
    values: Sequence[float],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    stat: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[float]:
    """Percentile bootstrap CI of the mean (or `stat(resamples) -> per-resample values`)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if n_boot <= 0:
        m = float(x.mean())
        return [m, m]
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    boot = stat(x[idx]) if stat is not None else x[idx].mean(axis=1)
    return _percentile_ci(boot, level)


def paired_bootstrap(
    challenger: Sequence[float],
    champion: Sequence[float],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Mean difference challenger - champion on the same samples, with its bootstrap CI.

    Both systems are resampled with the same indices, so per-sample difficulty cancels out.
    """
    a, b = np.asarray(challenger, dtype=np.float64), np.asarray(champion, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired bootstrap needs two equal, non-empty score lists ({a.size} vs {b.size})")
    diff = a - b
    return {
        "diff": float(diff.mean()),
        "ci": bootstrap_ci(diff, n_boot, seed, level),
        "champion_mean": float(b.mean()),
        "n": int(a.size),
        "n_boot": int(n_boot),
        "seed": int(seed),
    }


def paired_lower_bound(
    challenger: Sequence[float], other: Sequence[float], n_boot: int, seed: int, confidence: float
) -> dict[str, Any]:
    """One-sided paired bootstrap: the mean gain challenger - other and the lower bound that the
    gain exceeds with probability `confidence` (the (1 - confidence) quantile of resampled means)."""
    pb = paired_bootstrap(challenger, other, n_boot, seed, level=2 * confidence - 1)
    return {
        "diff": pb["diff"],
        "lower": pb["ci"][0],
        "confidence": confidence,
        "n": pb["n"],
        "n_boot": n_boot,
    }


# --------------------------------------------------------------------------- all together


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    bad = [i for i, t in enumerate([*predictions, *references]) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"predictions and references must be strings (item {bad[0]} is not)")


def score_all(
    predictions: Sequence[str], references: Sequence[str], n_boot: int = 1000, seed: int = 0
) -> tuple[dict[str, float], dict[str, list[float]], list[dict[str, float]], dict[str, str]]:
    """Every text metric at once: (corpus metrics, 95% CIs, per-sample scores, signatures).

    Corpus ROUGE/EM/F1 are means of the per-sample scores; BLEU/chrF are sacrebleu corpus
    scores. Per-sample records carry sentence BLEU/chrF too (for worst-sample tables and paired
    tests), which do not average to the corpus scores.
    """
    _check_pairs(predictions, references)
    if not predictions:
        raise ValueError("no predictions to score")
    per_sample = rouge(predictions, references)
    for rec, p, r in zip(per_sample, predictions, references, strict=True):
        rec["exact_match"] = exact_match(p, r)
        rec["f1"] = token_f1(p, r)
    metrics: dict[str, float] = {}
    cis: dict[str, list[float]] = {}
    for k in MEAN_METRICS:
        values = [rec[k] for rec in per_sample]
        metrics[k] = float(np.mean(values))
        cis[k] = bootstrap_ci(values, n_boot, seed)
    signatures = {}
    for kind in ("bleu", "chrf"):
        res = corpus_sacrebleu(kind, predictions, references, n_boot, seed)
        metrics[kind] = res["score"]
        cis[kind] = res.get("ci", [res["score"], res["score"]])
        signatures[kind] = res["signature"]
        for rec, s in zip(per_sample, res["per_sample"], strict=True):
            rec[kind] = s
    return metrics, cis, per_sample, signatures
