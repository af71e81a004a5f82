"""Exact and near (MinHash + LSH) deduplication, with an index that can be persisted and resumed.

Tokens and n-gram hashes (also used by the repetition filters and decontamination):

* `tokens(text)`: lowercase ``\\w+`` words, so case, punctuation and whitespace edits do not
  break a match;
* `token_hashes(tokens)`: stable 32-bit CRC32 per token (stable across processes and runs, unlike
  Python's salted `hash`, so persisted signatures stay valid);
* `ngram_hashes(h, n)`: 64-bit hashes of every word n-gram, computed with numpy in one pass
  (the sum of the n shifted token-hash columns times fixed odd 64-bit constants, wrapping).

MinHash signatures use datasketch's own ``affine32`` permutations (`MinHash(num_perm, seed)
.permutations`, MurmurHash3 pre-mix, ``a*h+b mod 2^32``), applied to all shingles of a document
at once as a (shingles x num_perm) numpy matrix, so each signature equals what
`datasketch.MinHash.update_batch` would give for the same shingle hashes, and the index is a
plain `datasketch.MinHashLSH`.

`Deduper` keeps the first document of each cluster and answers ``duplicate_of`` for the others:
exact duplicates by a hash of the normalized text, near duplicates by LSH candidates. When
`verify_jaccard` is on, LSH retrieves candidates at a lower `candidate_threshold` (higher
recall) and each candidate is confirmed by the true Jaccard of the shingle sets (kept docs'
shingles live in a bounded cache; past it, the MinHash estimate decides), which restores
precision. `save`/`load` persist the kept ids, exact hashes and signatures as Parquet; the LSH
tables are rebuilt from the signatures on load (cheap, deterministic, and nothing is
unpickled), so an incremental run dedups new documents against all earlier kept ones.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasketch import MinHash, MinHashLSH
from datasketch.lsh import _optimal_param

_WORD = re.compile(r"\w+")
_WS = re.compile(r"\s+")
# Fixed odd multipliers for combining token hashes into n-gram hashes (splitmix64 of 1..64).
_MASK64 = (1 << 64) - 1
_MULT = np.array(
    [((((i + 1) * 0x9E3779B97F4A7C15) & _MASK64) >> 1 << 1) | 1 for i in range(64)], dtype=np.uint64
)
_SCHEME = "affine32"


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
                acc = acc[:m] + (h[k:] + np.uint64(k)) * _MULT[k % 64]
                k += 1
            yield n, acc ^ (acc >> np.uint64(29))


def shingles(text: str, n: int) -> np.ndarray:
    """Sorted unique 32-bit word-n-gram hashes of a text (the MinHash input set)."""
    g = ngram_hashes(text_tokens(text)[1], n)
    return np.unique((g ^ (g >> np.uint64(32))).astype(np.uint32))


def exact_hash(text: str) -> str:
    """Hash of the text with case and whitespace runs normalized (exact-duplicate key)."""
    return hashlib.blake2b(
        _WS.sub(" ", text.lower()).strip().encode("utf-8", "replace"), digest_size=16
    ).hexdigest()


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
        return MinHash(hashvalues=sig, permutations=self.permutations, scheme=_SCHEME, seed=self.seed)


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimizing datasketch's equally weighted false-positive/negative error."""
    return _optimal_param(threshold, num_perm, 0.5, 0.5)


@dataclass
class Match:
    duplicate_of: str
    kind: str  # "exact" | "near"
    similarity: float


class Deduper:
    """Streaming dedup: `check(...)` answers a `Match` for a duplicate, else records the doc as kept."""

    def __init__(
        self,
        num_perm: int = 112,
        threshold: float = 0.8,
        candidate_threshold: float | None = None,
        verify_jaccard: bool = True,
        exact: bool = True,
        near: bool = True,
        cache_docs: int = 50_000,
        seed: int = 1,
    ):
        if candidate_threshold is None:
            candidate_threshold = max(threshold - 0.2, 0.05) if verify_jaccard else threshold
        self.num_perm, self.threshold, self.verify = num_perm, threshold, verify_jaccard
        self.exact, self.near = exact, near
        self.signer = Signer(num_perm, seed)
        self.bands, self.rows = lsh_params(candidate_threshold, num_perm)
        self.lsh = MinHashLSH(num_perm=num_perm, params=(self.bands, self.rows))
        self.hashes: dict[str, str] = {}  # exact hash -> kept id
        self.kept_ids: list[str] = []
        self.kept_hashes: list[str] = []
        self.kept_sigs: list[np.ndarray] = []
        self._sig_of: dict[str, int] = {}
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_docs = cache_docs
        self.verified_by_estimate = 0

    def check(
        self, doc_id: str, ehash: str, sig: np.ndarray | None, shingle_set: np.ndarray | None
    ) -> Match | None:
        if self.exact and ehash in self.hashes:
            return Match(self.hashes[ehash], "exact", 1.0)
        if self.near and sig is not None:
            mh = self.signer.minhash(sig)
            best: Match | None = None
            for cand in self.lsh.query(mh):
                sim = self._similarity(cand, sig, shingle_set)
                if sim >= self.threshold and (best is None or sim > best.similarity):
                    best = Match(cand, "near", sim)
            if best is not None:
                return best
        self.add(doc_id, ehash, sig, shingle_set)
        return None

    def _similarity(self, cand: str, sig: np.ndarray, shingle_set: np.ndarray | None) -> float:
        other = self._cache.get(cand)
        if self.verify and shingle_set is not None and other is not None:
            return jaccard(shingle_set, other)
        if self.verify:
            self.verified_by_estimate += 1
        return float(np.mean(self.kept_sigs[self._sig_of[cand]] == sig))

    def add(self, doc_id: str, ehash: str, sig: np.ndarray | None, shingle_set: np.ndarray | None) -> None:
        if self.exact:
            self.hashes.setdefault(ehash, doc_id)
        if self.near and sig is not None:
            if doc_id in self._sig_of:
                return
            self._sig_of[doc_id] = len(self.kept_sigs)
            self.kept_ids.append(doc_id)
            self.kept_hashes.append(ehash)
            self.kept_sigs.append(np.asarray(sig, dtype=np.uint32))
            self.lsh.insert(doc_id, self.signer.minhash(sig), check_duplication=False)
            if shingle_set is not None and self.verify and self.cache_docs > 0:
                self._cache[doc_id] = shingle_set
                if len(self._cache) > self.cache_docs:
                    self._cache.popitem(last=False)
        elif not self.near:
            self.kept_ids.append(doc_id)
            self.kept_hashes.append(ehash)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        """Kept ids, exact hashes and signatures (Parquet) + the parameters in the schema metadata."""
        n = len(self.kept_ids)
        sigs = np.stack(self.kept_sigs) if self.kept_sigs else np.zeros((0, self.num_perm), np.uint32)
        if len(sigs) != n:  # exact-only index
            sigs = np.zeros((n, self.num_perm), np.uint32)
        table = pa.table(
            {
                "id": pa.array(self.kept_ids, pa.string()),
                "exact_hash": pa.array(self.kept_hashes, pa.string()),
                "signature": pa.FixedSizeListArray.from_arrays(
                    pa.array(sigs.reshape(-1), pa.uint32()), self.num_perm
                ),
            }
        )
        meta = {
            "num_perm": str(self.num_perm),
            "seed": str(self.signer.seed),
            "scheme": _SCHEME,
            "bands": str(self.bands),
            "rows": str(self.rows),
            "near": str(self.near),
        }
        pq.write_table(table.replace_schema_metadata(meta), str(path))

    def load(self, path: str | Path) -> int:
        """Seed this index with a saved one (same num_perm/seed). Returns the documents loaded."""
        table = pq.read_table(str(path))
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        if (
            int(meta.get("num_perm", self.num_perm)) != self.num_perm
            or int(meta.get("seed", 1)) != self.signer.seed
        ):
            raise ValueError(
                f"dedup index {path} was built with num_perm={meta.get('num_perm')} seed={meta.get('seed')}, "
                f"this run uses num_perm={self.num_perm} seed={self.signer.seed}: rebuild it without the previous index"
            )
        ids = table.column("id").to_pylist()
        hashes = table.column("exact_hash").to_pylist()
        near = meta.get("near", "True") == "True"
        sigs = (
            table.column("signature").combine_chunks().flatten().to_numpy().reshape(len(ids), self.num_perm)
        )
        for i, (doc_id, h) in enumerate(zip(ids, hashes, strict=True)):
            self.add(doc_id, h, sigs[i] if near else None, None)
        return len(ids)
