"""Minimum Bayes risk (MBR) decoding: sample several answers, keep the one the others agree with.

Greedy decoding returns the single most likely continuation, which for a small model is often
a fluent answer about the wrong thing. MBR (Kumar & Byrne 2004; for summarisation and
translation with sampled candidates, Eikema & Aziz 2020, Freitag et al. 2022) draws N samples,
adds the greedy answer, and returns the candidate with the highest mean utility against all the
others: the answer closest to what the model "usually" says. The utility is a similarity between
two answers; the default is ROUGE-L F (rouge-score, stemming on), the task metric of the
built-in task, so MBR here optimises the metric the gate checks. That is the method's point and
also its known risk (the answers can drift toward what the utility rewards), so the evaluation
reports BLEU, chrF and exact match beside it, and the model card says which decoding was used.

`choose` can also weigh evidence that is not the model's: pseudo-references with a weight each
(tasks/mbr_evidence.py builds them: the function's name as words, the nearest train items'
responses). They only re-rank; the answer is always one of the model's candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

Utility = Callable[[str, str], float]
Evidence = Sequence[tuple[float, Sequence[str]]]  # (weight, pseudo-references) groups for `choose`


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences, bit-parallel (Allison &
    Dix 1986, in Hyyro's 2004 form): one pass over `b` with a few integer operations per token on
    bit vectors the length of `a`, instead of rouge-score's len(a) x len(b) table in Python."""
    if len(a) < len(b):
        a, b = b, a
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l_tokens(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F of two token sequences, computed as rouge-score computes it (0 if either is empty)."""
    if not prediction or not reference:
        return 0.0
    lcs = lcs_length(reference, prediction)
    precision, recall = lcs / len(prediction), lcs / len(reference)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


@lru_cache(maxsize=1)
def _tokenizer():
    from rouge_score import tokenizers

    return tokenizers.DefaultTokenizer(use_stemmer=True)


@lru_cache(maxsize=1 << 16)
def _tokens(text: str) -> tuple[str, ...]:
    return tuple(_tokenizer().tokenize(text))


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F between two answers (symmetric), as rouge-score scores it with stemming: each
    text tokenized once (cached), the LCS bit-parallel (`lcs_length`)."""
    return rouge_l_tokens(_tokens(a), _tokens(b))


def utility_sums(candidates: Sequence[str], utility: Utility | None = None) -> list[float]:
    """Per candidate, its summed utility against every other candidate (identical candidates
    score 1.0 and each pair is scored once)."""
    util = utility or rouge_l
    cache: dict[tuple[str, str], float] = {}

    def u(a: str, b: str) -> float:
        key = (a, b) if a <= b else (b, a)
        if key not in cache:
            cache[key] = 1.0 if a == b else util(a, b)
        return cache[key]

    return [sum(u(a, b) for j, b in enumerate(candidates) if j != i) for i, a in enumerate(candidates)]


def choose(candidates: Sequence[str], utility: Utility | None = None, evidence: Evidence = ()) -> str:
    """The candidate with the highest mean utility against the other candidates (ties: the first).

    Identical candidates are scored once; an empty candidate can win only if most are empty.
    `evidence` adds pseudo-references that are not the model's samples: groups of
    `(weight, texts)`, each adding weight x the candidate's mean utility against the group's texts
    to its score (an empty group adds nothing). The answer is still one of `candidates`.
    """
    if not candidates:
        raise ValueError("MBR needs at least one candidate")
    sums = utility_sums(candidates, utility)
    groups = [(w, list(texts)) for w, texts in evidence if w and texts]
    if groups:
        util = utility or rouge_l
        n = max(1, len(candidates) - 1)
        sums = [
            s / n + sum(w * sum(util(c, t) for t in texts) / len(texts) for w, texts in groups)
            for s, c in zip(sums, candidates, strict=True)
        ]
    return candidates[max(range(len(sums)), key=lambda i: (sums[i], -i))]
