"""Exact and near (MinHash + LSH) deduplication, with an index that can be persisted and resumed.

`Deduper` keeps the first document of each cluster and answers ``duplicate_of`` for the others:
exact duplicates by a hash of the normalized text (`exact_hash`), near duplicates by LSH
candidates over MinHash signatures (tasks/minhash.py), each hit confirmed on the stored
signature, so its candidate set equals `MinHashLSH(params=(bands, rows))`'s (tested). The index
lives in numpy arrays (tasks/dedup_index.py): ~650 bytes per kept document at 112 permutations,
nearly all of it the signature.

When `verify_jaccard` is on, LSH retrieves candidates at a lower `candidate_threshold` (higher
recall) and each candidate is confirmed by the true Jaccard of the shingle sets, which restores
precision. Kept documents' shingles are not held in memory by `prepare`: the index keeps a
reference per document and re-reads the candidate's shingles from its shard's work file (see
`tasks.global_dedup.ShardShingles`); without shingles the MinHash estimate decides. `save`/`load`
persist the kept ids, exact-hash keys, signatures and cluster sizes as Parquet; the band table is
rebuilt from the signatures on load (nothing is unpickled), so an incremental run dedups new
documents against all earlier kept ones.

Clusters: a kept document founds one; a duplicate joins the kept document it matches (its
`duplicate_of`, the cluster's id). A cluster's size counts its distinct documents by id, over the
runs of an incremental chain: `save` also writes the ids (64-bit hashes) of the duplicates seen
so far (`members.parquet` beside the index), so a document seen again on a later run is not
counted twice. A document kept by an earlier run and seen again (same id) is kept, not matched
against itself; that keeps yesterday's training set stable when a new source comes first.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.dedup_index import GrowingArray, MultiIndex, ShingleBuffer, band_keys
from tasks.minhash import SCHEME, Signer, jaccard, lsh_params

_WS = re.compile(r"\s+")


def exact_hash(text: str) -> str:
    """Hash of the text with case and whitespace runs normalized (exact-duplicate key)."""
    return hashlib.blake2b(
        _WS.sub(" ", text.lower()).strip().encode("utf-8", "replace"), digest_size=16
    ).hexdigest()


@dataclass
class Match:
    duplicate_of: str
    kind: str  # "exact" | "near"
    similarity: float
    cluster: int = -1  # the kept document's ordinal in the index


def _id_key(doc_id: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(doc_id.encode("utf-8", "replace"), digest_size=8).digest(), "little"
    )


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
      ref -> sorted uint32 array, or None) to re-read them from disk instead (`tasks.global_dedup`
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
        self._id_end = GrowingArray(np.int64)
        self._exact_hi = GrowingArray(np.uint64)
        self._exact_lo = GrowingArray(np.uint64)
        self._exact = MultiIndex()
        self._sigs = GrowingArray(np.uint32, (num_perm,))
        self._has_sig = GrowingArray(np.bool_)
        self._refs = GrowingArray(np.int64, fill=-1)
        self._lsh = MultiIndex()
        self._size = GrowingArray(np.int64)  # distinct documents per cluster (kept ordinal)
        self._members = GrowingArray(np.uint64)  # id keys of this run's duplicates
        self._seen_members = np.empty(0, np.uint64)  # sorted id keys of earlier runs' duplicates
        self._prev_keys = np.empty(0, np.uint64)  # sorted id keys of the loaded kept documents
        self._prev_ords = np.empty(0, np.int64)
        self.loaded = 0  # kept documents loaded from an earlier run (ordinals 0..loaded-1)
        self.last = -1  # the cluster the last checked document founded, joined or was kept in
        self.seen_again = 0  # loaded documents checked again (kept: the same document)
        self.against_previous = 0  # duplicates of a loaded document
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
            for g in (
                self._id_end, self._exact_hi, self._exact_lo, self._exact, self._sigs, self._has_sig,
                self._refs, self._size, self._members, self._seen_members, self._prev_keys, self._prev_ords,
            )
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
        """`ref`: where `shingles_of` finds this document's shingles if it is kept (-1: nowhere).
        Afterwards `last` is the ordinal of the cluster the document founded, joined or is kept in."""
        if self.loaded and (i := self.seen(doc_id, ref, shingle_set)) >= 0:  # kept by an earlier run
            self.seen_again += 1
            self.last = i
            return None
        bkeys = band_keys(sig, self.bands, self.rows) if self.near and sig is not None else None
        m = self._match(ehash, sig, shingle_set, bkeys)
        if m is not None:
            self.last = m.cluster
            self.against_previous += m.cluster < self.loaded
            idk = _id_key(doc_id)
            i = np.searchsorted(self._seen_members, idk)
            if i == len(self._seen_members) or self._seen_members[i] != idk:  # not counted before
                self._size.a[m.cluster] += 1
                self._members.append(idk)
            return m
        key = _exact_key(ehash) if self.exact else None
        self._add(doc_id, key, sig, shingle_set, ref, bkeys)
        self.last = len(self) - 1
        return None

    def _match(self, ehash: str, sig, shingle_set, bkeys) -> Match | None:
        if self.exact:
            hi, lo = _exact_key(ehash)
            for i in self._exact.get(np.array([hi], np.uint64)).tolist():
                if int(self._exact_lo.a[i]) == lo:
                    return Match(self.id(int(i)), "exact", 1.0, int(i))
        best: Match | None = None
        if bkeys is not None:
            for cand in self.candidates(sig, bkeys).tolist():  # oldest first: ties go to the earliest kept
                sim = self._similarity(cand, sig, shingle_set)
                if sim >= self.threshold and (best is None or sim > best.similarity):
                    best = Match(self.id(cand), "near", sim, cand)
        return best

    def seen(self, doc_id: str, ref: int = -1, shingle_set: np.ndarray | None = None) -> int:
        """The ordinal of `doc_id` if an earlier run kept it (else -1); its shingles (`ref` into
        `shingles_of`, or `shingle_set`) then verify its near duplicates by true Jaccard, which
        the loaded index alone cannot (it holds no shingles)."""
        i = self._previous(doc_id) if self.loaded else -1
        if i >= 0 and self._refs.a[i] < 0 and self.verify and self._has_sig.a[i]:
            if (
                ref < 0
                and shingle_set is not None
                and self.shingles_of is None
                and len(self._buffer) < self.cache_docs
            ):
                ref = self._buffer.add(shingle_set)
            self._refs.a[i] = ref
        return i

    def _previous(self, doc_id: str) -> int:
        """The ordinal of `doc_id` among the loaded kept documents, or -1."""
        k = _id_key(doc_id)
        i = int(np.searchsorted(self._prev_keys, k))
        while i < len(self._prev_keys) and self._prev_keys[i] == k:
            if self.id(int(self._prev_ords[i])) == doc_id:
                return int(self._prev_ords[i])
            i += 1
        return -1

    def cluster_sizes(self, ordinals: np.ndarray) -> np.ndarray:
        """Distinct documents in each cluster (by kept ordinal), earlier runs included."""
        return self._size.a[ordinals]

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
        self._size.append(1)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        """Kept ids, exact-hash keys, signatures and cluster sizes (Parquet) + the parameters in
        the schema metadata; the duplicates' id keys, sorted, in `members.parquet` beside it. The
        band table is rebuilt from the signatures on load (cheap, deterministic)."""
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
                "cluster_size": pa.array(self._size.a, pa.int64()),
            }
        )
        meta = {
            "num_perm": str(self.num_perm),
            "seed": str(self.signer.seed),
            "scheme": SCHEME,
            "bands": str(self.bands),
            "rows": str(self.rows),
            "near": str(self.near),
            "exact": str(self.exact),
            "format": "2",
        }
        pq.write_table(table.replace_schema_metadata(meta), str(path))
        members = np.union1d(self._seen_members, self._members.a)
        pq.write_table(pa.table({"id_key": pa.array(members, pa.uint64())}), str(_members_path(path)))

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
        sizes = table.column("cluster_size").to_numpy() if "cluster_size" in table.column_names else None
        start = len(self)
        for i, doc_id in enumerate(ids):
            key = None if keys is None or not self.exact else (int(keys[i, 0]), int(keys[i, 1]))
            self._add(doc_id, key, sigs[i] if has[i] else None, None, -1)
            if sizes is not None:
                self._size.a[start + i] = sizes[i]
        pk = np.concatenate([self._prev_keys, np.array([_id_key(d) for d in ids], np.uint64)])
        po = np.concatenate([self._prev_ords, np.arange(start, start + n, dtype=np.int64)])
        order = np.argsort(pk, kind="stable")
        self._prev_keys, self._prev_ords = pk[order], po[order]
        self.loaded = len(self)
        if _members_path(path).exists():
            seen = pq.read_table(str(_members_path(path))).column("id_key").to_numpy()
            self._seen_members = np.union1d(self._seen_members, seen)
        return n


def _members_path(index: str | Path) -> Path:
    return Path(index).with_name("members.parquet")
