"""Word tokens and n-gram hashes, shared by the repetition filters, decontamination and dedup.

* `tokens(text)`: lowercase ``\\w+`` words, so case, punctuation and whitespace edits do not
  break a match;
* `token_hashes(tokens)`: stable 32-bit CRC32 per token (stable across processes and runs, unlike
  Python's salted `hash`, so persisted signatures stay valid);
* `ngram_hashes(h, n)`: 64-bit hashes of every word n-gram, computed with numpy in one pass
  (the sum of the n shifted token-hash columns times fixed odd 64-bit constants, wrapping).
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache

import numpy as np

_WORD = re.compile(r"\w+")
# Fixed odd multipliers for combining token hashes into n-gram hashes (splitmix64 of 1..64).
_MASK64 = (1 << 64) - 1
ODD_MULTIPLIERS = np.array(
    [((((i + 1) * 0x9E3779B97F4A7C15) & _MASK64) >> 1 << 1) | 1 for i in range(64)], dtype=np.uint64
)


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def token_hashes(toks: list[str]) -> np.ndarray:
    return np.fromiter(map(zlib.crc32, map(str.encode, toks)), dtype=np.uint64, count=len(toks))


@lru_cache(maxsize=8)
def text_tokens(text: str) -> tuple[list[str], np.ndarray]:
    """(tokens, token hashes) of a text, memoized: filters, decontamination and MinHash of one
    document share one tokenization. Treat the results as read-only."""
    toks = tokens(text)
    h = token_hashes(toks)
    h.setflags(write=False)
    return toks, h


def ngram_hashes(h: np.ndarray, n: int) -> np.ndarray:
    """uint64 hashes of all word n-grams; a document shorter than n gives one n-gram (itself)."""
    if len(h) == 0:
        return np.empty(0, dtype=np.uint64)
    return next(iter_ngram_hashes(h, (min(n, len(h)),)))[1]


def iter_ngram_hashes(h: np.ndarray, ns: tuple[int, ...]):
    """Yield (n, hashes) for increasing n in `ns`, building each from the previous accumulator
    (one vector op per extra word instead of n). Stops at the first n longer than the text."""
    acc = np.zeros(len(h), dtype=np.uint64)
    k = 0
    with np.errstate(over="ignore"):
        for n in sorted(ns):
            if n > len(h):
                return
            while k < n:
                m = len(h) - k
                acc = acc[:m] + (h[k:] + np.uint64(k)) * ODD_MULTIPLIERS[k % 64]
                k += 1
            yield n, acc ^ (acc >> np.uint64(29))
