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
`datasketch.MinHash.update_batch` would give for the same shingle hashes. Bands and rows come
from datasketch's own parameter choice (`datasketch.lsh._optimal_param`).

`Deduper` keeps the first document of each cluster and answers ``duplicate_of`` for the others:
exact duplicates by a hash of the normalized text, near duplicates by LSH candidates. The LSH
index is not datasketch's `MinHashLSH` (a `bytes` key and a Python `set` per bucket and band:
~5.5 KB per kept document) but the same banding in numpy: one sorted table of 64-bit band keys
(`band_keys`, 12 bytes per band and document), each hit confirmed on the stored signature, so
its candidate set equals `MinHashLSH(params=(bands, rows))`'s (tested). The whole index is
~650 bytes per kept document at 112 permutations, nearly all of it the signature.

When `verify_jaccard` is on, LSH retrieves candidates at a lower `candidate_threshold` (higher
recall) and each candidate is confirmed by the true Jaccard of the shingle sets, which restores
precision. Kept documents' shingles are not held in memory by `prepare`: the index keeps a
reference per document and re-reads the candidate's shingles from its shard's work file (see
`tasks.prepare.ShardShingles`); without shingles the MinHash estimate decides. `save`/`load`
persist the kept ids, exact-hash keys and signatures as Parquet; the band table is rebuilt from
the signatures on load (nothing is unpickled), so an incremental run dedups new documents
against all earlier kept ones.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasketch import MinHash
from datasketch.lsh import _optimal_param

_WORD = re.compile(r"\w+")
_WS = re.compile(r"\s+")
# Fixed odd multipliers for combining token hashes into n-gram hashes (splitmix64 of 1..64).
_MASK64 = (1 << 64) - 1
_MULT = np.array(
    [((((i + 1) * 0x9E3779B97F4A7C15) & _MASK64) >> 1 << 1) | 1 for i in range(64)], dtype=np.uint64
)
_SCHEME = "affine32"
_ROW = np.arange(64, dtype=np.uint64)
with np.errstate(over="ignore"):
    _BAND = np.arange(1024, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)


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


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 key per LSH band: a mix of the band's `rows` signature values and the band
    number (so all bands share one table). Equal bands give equal keys; `BandIndex` confirms a
    key hit on the values themselves, so a 64-bit collision never makes a candidate."""
    x = sig[: bands * rows].astype(np.uint64).reshape(bands, rows)
    with np.errstate(over="ignore"):
        h = ((x + _ROW[:rows]) * _MULT[:rows]).sum(axis=1)
        h ^= _BAND[:bands]
        h ^= h >> np.uint64(31)  # splitmix64 finalizer
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


class _Grow:
    """A growable numpy array (rows of `shape`), amortized O(1) append; `.a` is the filled view."""

    def __init__(self, dtype, shape: tuple[int, ...] = (), fill=0):
        self.dtype, self.shape, self.fill, self.n = np.dtype(dtype), shape, fill, 0
        self._buf = np.full((16, *shape), fill, self.dtype)

    def append(self, row) -> int:
        if self.n == len(self._buf):
            buf = np.full((len(self._buf) * 3 // 2 + 16, *self.shape), self.fill, self.dtype)
            buf[: self.n] = self._buf
            self._buf = buf
        self._buf[self.n] = row
        self.n += 1
        return self.n - 1

    @property
    def a(self) -> np.ndarray:
        return self._buf[: self.n]

    def __len__(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        return self._buf.nbytes


class MultiIndex:
    """uint64 key -> int32 values, many per key: a sorted main array (12 bytes an entry) plus a
    small dict tail of at most `tail` entries, merged into the main one when it fills (one O(n)
    insert of a sorted run). A lookup is one `searchsorted` pair plus dict gets."""

    def __init__(self, tail: int = 16384):
        self.keys = np.empty(0, np.uint64)
        self.vals = np.empty(0, np.int32)
        self.tail = tail
        self._t: dict[int, list[int]] = {}
        self._tn = 0

    def __len__(self) -> int:
        return len(self.keys) + self._tn

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.vals.nbytes + 120 * self._tn  # tail: bounded dict

    def add(self, keys: np.ndarray, val: int) -> None:
        for k in keys.tolist():
            self._t.setdefault(k, []).append(val)
        self._tn += len(keys)
        if self._tn >= self.tail:
            self.flush()

    def flush(self) -> None:
        if not self._tn:
            return
        keys = np.fromiter((k for k, vs in self._t.items() for _ in vs), np.uint64, self._tn)
        vals = np.fromiter((v for vs in self._t.values() for v in vs), np.int32, self._tn)
        order = np.argsort(keys, kind="stable")
        keys, vals = keys[order], vals[order]
        pos = np.searchsorted(self.keys, keys, side="right")  # after equal keys: insertion order
        self.keys = np.insert(self.keys, pos, keys)
        self.vals = np.insert(self.vals, pos, vals)
        self._t, self._tn = {}, 0

    def get(self, keys: np.ndarray) -> np.ndarray:
        """All values stored under any of `keys` (with repeats), oldest first per key."""
        lo = np.searchsorted(self.keys, keys, side="left")
        hi = np.searchsorted(self.keys, keys, side="right")
        out = [v for i in np.flatnonzero(hi > lo).tolist() for v in self.vals[lo[i] : hi[i]].tolist()]
        if self._tn:
            for k in keys.tolist():
                out += self._t.get(k, ())
        return np.array(out, np.int32)


class ShingleBuffer:
    """Sorted uint32 shingle sets in one flat growable buffer (4 bytes a shingle): the default
    verification store of a standalone `Deduper`; `ref` is the set's ordinal."""

    def __init__(self) -> None:
        self.values = _Grow(np.uint32)
        self.offsets = _Grow(np.int64)
        self.offsets.append(0)
        self._data = np.empty(0, np.uint32)

    def add(self, sh: np.ndarray) -> int:
        end = self.offsets.a[-1] + len(sh)
        if end > len(self.values._buf):
            buf = np.empty(max(end, len(self.values._buf) * 3 // 2 + 1024), np.uint32)
            buf[: self.values.n] = self.values.a
            self.values._buf = buf
        self.values._buf[self.values.n : end] = sh
        self.values.n = int(end)
        return self.offsets.append(end) - 1

    def __call__(self, ref: int) -> np.ndarray:
        o = self.offsets.a
        return self.values._buf[o[ref] : o[ref + 1]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.offsets.nbytes


def _exact_key(ehash: str) -> tuple[int, int]:
    d = hashlib.blake2b(ehash.encode("utf-8", "replace"), digest_size=16).digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")


class Deduper:
    """Streaming dedup: `check(...)` answers a `Match` for a duplicate, else records the doc as kept.

    Everything per kept document lives in numpy arrays, not Python objects, so the index costs
    about `num_perm * 4 + bands * 12 + 40` bytes plus the id's UTF-8 per kept document:

    * ids: one UTF-8 buffer + offsets; exact hashes: 128-bit keys in a `MultiIndex`;
    * signatures: one (kept, num_perm) uint32 array (band confirmation, MinHash estimate);
    * LSH: one `MultiIndex` of `band_keys` -> kept ordinal for all bands. A candidate is a kept
      document with at least one band exactly equal to the query's: the candidate set of a
      `datasketch.MinHashLSH(params=(bands, rows))` over the same signatures;
    * verification: each kept document's `ref` (int64) into a shingle store. By default an
      in-memory `ShingleBuffer` of the first `cache_docs` documents; pass `shingles_of` (a callable
      ref -> sorted uint32 array, or None) to re-read them from disk instead (`tasks.prepare`
      re-reads the shard's `_shingles` column). Without shingles the MinHash estimate decides.
    """

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
        shingles_of=None,
    ):
        if candidate_threshold is None:
            candidate_threshold = max(threshold - 0.2, 0.05) if verify_jaccard else threshold
        self.num_perm, self.threshold, self.verify = num_perm, threshold, verify_jaccard
        self.exact, self.near = exact, near
        self.signer = Signer(num_perm, seed)
        self.bands, self.rows = lsh_params(candidate_threshold, num_perm)
        self.cache_docs = cache_docs
        self.shingles_of = shingles_of
        self._buffer = ShingleBuffer()
        self._ids = bytearray()
        self._id_end = _Grow(np.int64)
        self._exact_hi = _Grow(np.uint64)
        self._exact_lo = _Grow(np.uint64)
        self._exact = MultiIndex()
        self._sigs = _Grow(np.uint32, (num_perm,))
        self._has_sig = _Grow(np.bool_)
        self._refs = _Grow(np.int64, fill=-1)
        self._lsh = MultiIndex()
        self.verified_by_estimate = 0
        self.shingle_rereads = 0

    def __len__(self) -> int:
        return len(self._id_end)

    def id(self, i: int) -> str:
        e = self._id_end.a
        return self._ids[(e[i - 1] if i else 0) : e[i]].decode("utf-8")

    @property
    def kept_ids(self) -> list[str]:
        return [self.id(i) for i in range(len(self))]

    @property
    def nbytes(self) -> int:
        """Bytes held by the index (allocated capacity), the verification buffer included."""
        return len(self._ids) + sum(
            g.nbytes
            for g in (self._id_end, self._exact_hi, self._exact_lo, self._exact, self._sigs, self._has_sig, self._refs)
        ) + self._lsh.nbytes + self._buffer.nbytes  # fmt: skip

    def forget_shingles(self) -> None:
        """Drop the external shingle store and every reference into it (the MinHash estimate
        decides for those documents from now on)."""
        if self.shingles_of is not None:
            self._refs.a[:] = -1
            self.shingles_of = None

    def candidates(self, sig: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """Kept ordinals sharing at least one whole band with `sig` (sorted, unique)."""
        keys = band_keys(sig, self.bands, self.rows) if keys is None else keys
        c = np.unique(self._lsh.get(keys))
        if len(c):
            n = self.bands * self.rows
            q = np.asarray(sig[:n]).reshape(self.bands, self.rows)
            same = (self._sigs.a[c, :n].reshape(len(c), self.bands, self.rows) == q).all(axis=2).any(axis=1)
            c = c[same]
        return c

    def check(
        self,
        doc_id: str,
        ehash: str,
        sig: np.ndarray | None,
        shingle_set: np.ndarray | None,
        ref: int = -1,
    ) -> Match | None:
        """`ref`: where `shingles_of` finds this document's shingles if it is kept (-1: nowhere)."""
        key = _exact_key(ehash) if self.exact else None
        if key is not None:
            for i in self._exact.get(np.array([key[0]], np.uint64)).tolist():
                if int(self._exact_lo.a[i]) == key[1]:
                    return Match(self.id(int(i)), "exact", 1.0)
        bkeys = None
        if self.near and sig is not None:
            bkeys = band_keys(sig, self.bands, self.rows)
            best: Match | None = None
            for cand in self.candidates(sig, bkeys).tolist():  # oldest first: ties go to the earliest kept
                sim = self._similarity(cand, sig, shingle_set)
                if sim >= self.threshold and (best is None or sim > best.similarity):
                    best = Match(self.id(cand), "near", sim)
            if best is not None:
                return best
        self._add(doc_id, key, sig, shingle_set, ref, bkeys)
        return None

    def _similarity(self, cand: int, sig: np.ndarray, shingle_set: np.ndarray | None) -> float:
        if self.verify and shingle_set is not None:
            ref = int(self._refs.a[cand])
            other = None if ref < 0 else (self.shingles_of or self._buffer)(ref)
            if other is not None:
                return jaccard(shingle_set, other)
        if self.verify:
            self.verified_by_estimate += 1
        return float(np.mean(self._sigs.a[cand] == sig))

    def add(self, doc_id: str, ehash: str, sig: np.ndarray | None, shingle_set: np.ndarray | None) -> None:
        """Record a kept document without checking it."""
        self._add(doc_id, _exact_key(ehash) if self.exact else None, sig, shingle_set, -1)

    def _add(self, doc_id, key, sig, shingle_set, ref: int, bkeys=None) -> None:
        i = len(self)
        self._ids += doc_id.encode("utf-8")
        self._id_end.append(len(self._ids))
        self._exact_hi.append(key[0] if key else 0)
        self._exact_lo.append(key[1] if key else 0)
        if key is not None:
            self._exact.add(np.array([key[0]], np.uint64), i)
        has = self.near and sig is not None
        self._has_sig.append(has)
        self._sigs.append(sig if has else 0)
        if has:
            self._lsh.add(band_keys(sig, self.bands, self.rows) if bkeys is None else bkeys, i)
        if (
            has and self.verify and shingle_set is not None and ref < 0 and self.shingles_of is None
            and len(self._buffer) < self.cache_docs
        ):  # fmt: skip
            ref = self._buffer.add(shingle_set)
        self._refs.append(ref if has and self.verify else -1)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        """Kept ids, exact-hash keys and signatures (Parquet) + the parameters in the schema
        metadata. The band table is rebuilt from the signatures on load (cheap, deterministic)."""
        n = len(self)
        keys = np.stack([self._exact_hi.a, self._exact_lo.a], axis=1) if n else np.zeros((0, 2), np.uint64)
        e = self._id_end.a
        table = pa.table(
            {
                "id": pa.StringArray.from_buffers(
                    n, pa.py_buffer(np.concatenate([[0], e]).astype(np.int32)), pa.py_buffer(bytes(self._ids))
                )
                if len(self._ids) < 2**31
                else pa.array(self.kept_ids, pa.large_string()),
                "exact_key": pa.FixedSizeBinaryArray.from_buffers(
                    pa.binary(16), n, [None, pa.py_buffer(keys.tobytes())]
                ),
                "has_signature": pa.array(self._has_sig.a, pa.bool_()),
                "signature": pa.FixedSizeListArray.from_arrays(
                    pa.array(self._sigs.a.reshape(-1), pa.uint32()), self.num_perm
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
            "exact": str(self.exact),
            "format": "2",
        }
        pq.write_table(table.replace_schema_metadata(meta), str(path))

    def load(self, path: str | Path) -> int:
        """Seed this index with a saved one (same num_perm/seed). Returns the documents loaded.
        Reads both this format and the first one (`exact_hash` strings, no `has_signature`)."""
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
        n = table.num_rows
        ids = table.column("id").to_pylist()
        if "exact_key" in table.column_names:
            raw = table.column("exact_key").combine_chunks()
            keys = np.frombuffer(raw.buffers()[1], np.uint64)[2 * raw.offset : 2 * (raw.offset + n)].reshape(
                n, 2
            )
            keys = keys if meta.get("exact", "True") == "True" else None
        else:
            keys = np.array([_exact_key(h) for h in table.column("exact_hash").to_pylist()], np.uint64)
        near = meta.get("near", "True") == "True"
        has = (
            table.column("has_signature").to_numpy(zero_copy_only=False)
            if "has_signature" in table.column_names
            else np.full(n, near)
        )
        sigs = table.column("signature").combine_chunks().flatten().to_numpy().reshape(n, self.num_perm)
        for i, doc_id in enumerate(ids):
            key = None if keys is None or not self.exact else (int(keys[i, 0]), int(keys[i, 1]))
            self._add(doc_id, key, sigs[i] if has[i] else None, None, -1)
        return n
