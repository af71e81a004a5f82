"""The numpy stores behind `Deduper`'s index: a few bytes per kept document, no Python objects.

The LSH index is not datasketch's `MinHashLSH` (a `bytes` key and a Python `set` per bucket and
band: ~5.5 KB per kept document) but the same banding in numpy: `band_keys` mixes each band of a
signature into one 64-bit key, and a `MultiIndex` keeps the keys of all bands in one sorted table
(12 bytes per band and document). `GrowingArray` holds the per-document columns and
`ShingleBuffer` the shingle sets that verify a near-duplicate by its true Jaccard.
"""

from __future__ import annotations

import numpy as np

from tasks.ngrams import ODD_MULTIPLIERS

_ROW = np.arange(64, dtype=np.uint64)
with np.errstate(over="ignore"):
    _BAND = np.arange(1024, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 key per LSH band: a mix of the band's `rows` signature values and the band
    number (so all bands share one table). Equal bands give equal keys; `Deduper.candidates`
    confirms a key hit on the values themselves, so a 64-bit collision never makes a candidate."""
    x = sig[: bands * rows].astype(np.uint64).reshape(bands, rows)
    with np.errstate(over="ignore"):
        h = ((x + _ROW[:rows]) * ODD_MULTIPLIERS[:rows]).sum(axis=1)
        h ^= _BAND[:bands]
        h ^= h >> np.uint64(31)  # splitmix64 finalizer
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


class GrowingArray:
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
        self.values = GrowingArray(np.uint32)
        self.offsets = GrowingArray(np.int64)
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
