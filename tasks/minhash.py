"""MinHash signatures of a text's word-n-gram shingles, bit-compatible with datasketch.

`shingles(text, n)` is the set a signature summarizes: sorted unique 32-bit n-gram hashes
(tasks/ngrams.py). `Signer` uses datasketch's own ``affine32`` permutations (`MinHash(num_perm,
seed).permutations`, MurmurHash3 pre-mix, ``a*h+b mod 2^32``), applied to all shingles of a
document at once as a (shingles x num_perm) numpy matrix, so each signature equals what
`datasketch.MinHash.update_batch` would give for the same shingle hashes. Bands and rows come
from datasketch's own parameter choice (`datasketch.lsh._optimal_param`); `jaccard` is the true
similarity the signatures estimate.
"""

from __future__ import annotations

import numpy as np
from datasketch import MinHash
from datasketch.lsh import _optimal_param

from tasks.ngrams import ngram_hashes, text_tokens

SCHEME = "affine32"


def shingles(text: str, n: int) -> np.ndarray:
    """Sorted unique 32-bit word-n-gram hashes of a text (the MinHash input set)."""
    g = ngram_hashes(text_tokens(text)[1], n)
    return np.unique((g ^ (g >> np.uint64(32))).astype(np.uint32))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


class Signer:
    """Vectorized MinHash signatures, bit-compatible with datasketch's affine32 scheme."""

    def __init__(self, num_perm: int, seed: int = 1, chunk: int = 4096):
        self.num_perm, self.seed, self.chunk = num_perm, seed, chunk
        self.permutations = MinHash(num_perm=num_perm, seed=seed).permutations  # (2, num_perm) uint32
        self._a = self.permutations[0][None, :]
        self._b = self.permutations[1][None, :]

    def __call__(self, shingle_set: np.ndarray) -> np.ndarray:
        sig = np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        for i in range(0, len(shingle_set), self.chunk):  # bounded memory on huge documents
            hv = shingle_set[i : i + self.chunk].astype(np.uint32)[:, None]
            hv = hv ^ (hv >> np.uint32(16))
            hv = hv * np.uint32(0x85EBCA6B)
            hv = hv ^ (hv >> np.uint32(13))
            hv = hv * np.uint32(0xC2B2AE35)
            hv = hv ^ (hv >> np.uint32(16))
            np.minimum(sig, (hv * self._a + self._b).min(axis=0), out=sig)
        return sig

    def minhash(self, sig: np.ndarray) -> MinHash:
        return MinHash(hashvalues=sig, permutations=self.permutations, scheme=SCHEME, seed=self.seed)


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimizing datasketch's equally weighted false-positive/negative error."""
    return _optimal_param(threshold, num_perm, 0.5, 0.5)
