"""Phases 2 and 3 of `prepare`: dedup over every shard's survivors, then the split per shard.

`dedup_shards` streams the survivors' exact hashes and MinHash signatures through one
`tasks.dedup.Deduper` in shard order (first occurrence wins) and returns
``{id: (duplicate_of, kind, similarity)}``. The shingles for true-Jaccard verification are
re-read from the shards' work files (`ShardShingles`), so memory is the index plus a constant,
not the corpus. `finalize_shard` then writes one shard's `train/`, `validation/` and `rejects/`
parts; a duplicate becomes a reject ``dedup`` with its ``duplicate_of`` and its origin
(`tasks.rejects`), a kept document carries its cluster: `cluster_id` (its own id, the
``duplicate_of`` of every duplicate it stands for) and `cluster_size` (distinct documents in the
cluster, earlier runs of an incremental chain included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llmflow.config import PrepareConfig
from tasks.dedup import Deduper
from tasks.doc_pipeline import OUT_SCHEMA, in_validation
from tasks.rejects import reject_row, reject_table

SHINGLE_CACHE_BYTES = 32 << 20  # shard `_shingles` columns kept in memory for dedup verification
FINAL_SCHEMA = OUT_SCHEMA.append(pa.field("cluster_id", pa.string())).append(
    pa.field("cluster_size", pa.int32())
)


def make_deduper(cfg: PrepareConfig) -> Deduper:
    mh = cfg.dedup.minhash
    return Deduper(
        num_perm=mh.num_perm,
        threshold=mh.threshold,
        candidate_threshold=mh.candidate_threshold,
        verify_jaccard=mh.verify_jaccard,
        exact=cfg.dedup.exact,
        near=mh.enabled,
        cache_docs=mh.verify_cache_docs,
        seed=mh.seed,
    )


class ShardShingles:
    """Verification shingles re-read from the shards' work files instead of held in memory.

    `ref = shard << 32 | row` names a kept document's row in `paths[shard]` (column `_shingles`,
    sorted unique uint32). The `_shingles` columns of the shards read last stay in memory, up to
    `max_bytes` (least recently used out first), so memory is bounded by a constant, not by the
    corpus; a candidate from an evicted shard costs one column read of that shard."""

    def __init__(self, paths: list[Path], max_bytes: int | None = None):
        self.paths, self.max_bytes = paths, SHINGLE_CACHE_BYTES if max_bytes is None else max_bytes
        self._cols: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        self.reads = 0

    def put(self, shard: int, col: pa.ChunkedArray | pa.Array) -> None:
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else None
        self._cols.pop(shard, None)
        self._cols[shard] = (arr.offsets.to_numpy(), arr.values.to_numpy(zero_copy_only=False), valid)
        while (
            len(self._cols) > 1
            and sum(o.nbytes + v.nbytes for o, v, _ in self._cols.values()) > self.max_bytes
        ):
            self._cols.pop(next(iter(self._cols)))  # least recently used first

    def __call__(self, ref: int) -> np.ndarray | None:
        shard, row = ref >> 32, ref & 0xFFFFFFFF
        if shard in self._cols:
            self._cols[shard] = self._cols.pop(shard)
        else:
            self.reads += 1
            self.put(shard, pq.read_table(self.paths[shard], columns=["_shingles"]).column("_shingles"))
        offsets, values, valid = self._cols[shard]
        return None if valid is not None and not valid[row] else values[offsets[row] : offsets[row + 1]]


def dedup_shards(
    kept_paths: list[Path], deduper: Deduper, clusters: list[np.ndarray] | None = None
) -> dict[str, tuple[str, str, float]]:
    """Phase 2: stream hashes and signatures through one index, first occurrence kept.

    Kept documents' shingles for true-Jaccard verification are re-read from `kept_paths`
    (`ShardShingles`), so the index holds ~650 bytes per kept document, not the shingle sets.
    `clusters` receives, per shard, each row's cluster ordinal (for `Deduper.cluster_sizes`)."""
    dups: dict[str, tuple[str, str, float]] = {}
    store = ShardShingles(kept_paths) if deduper.verify else None
    deduper.shingles_of = store
    if deduper.loaded and store is not None:  # documents an earlier run kept, seen again: their
        for shard, path in enumerate(kept_paths):  # shingles verify duplicates of them from the start
            for i, doc_id in enumerate(pq.read_table(path, columns=["id"]).column("id").to_pylist()):
                deduper.seen(doc_id, shard << 32 | i)
    for shard, path in enumerate(kept_paths):
        cols = ["id", "_exact", "_sig"] + (["_shingles"] if store is not None else [])
        t = pq.read_table(path, columns=cols)
        ids, hashes = t.column("id").to_pylist(), t.column("_exact").to_pylist()
        sigs = t.column("_sig")
        sig_arr = (
            sigs.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(len(ids), -1)
            if deduper.near and len(ids) and sigs.null_count == 0
            else None
        )
        if store is not None and len(ids):
            store.put(shard, t.column("_shingles"))
        ords = np.empty(len(ids), np.int64)
        for i, doc_id in enumerate(ids):
            s = store(shard << 32 | i) if store is not None else None
            m = deduper.check(
                doc_id, hashes[i] or "", None if sig_arr is None else sig_arr[i], s, shard << 32 | i
            )
            ords[i] = deduper.last
            if m is not None:
                dups[doc_id] = (m.duplicate_of, m.kind, m.similarity)
        if clusters is not None:
            clusters.append(ords)
    deduper.forget_shingles()  # the work files go away after the step
    deduper.shingle_rereads += store.reads if store is not None else 0
    return dups


def finalize_shard(
    kept_path: Path,
    rejects_path: Path,
    shard: int,
    out: Path,
    dups: dict[str, tuple[str, str, float]],
    fraction: float,
    cluster_sizes: np.ndarray | None = None,
) -> dict[str, Any]:
    """Phase 3: split survivors, move duplicates to rejects, write the final parquet files.
    `cluster_sizes`: per row of `kept_path` (default 1: dedup found no cluster)."""
    kept = pq.read_table(kept_path, columns=OUT_SCHEMA.names)
    rejects = pq.read_table(rejects_path)
    ids = kept.column("id").to_pylist()
    is_dup = np.array([i in dups for i in ids], dtype=bool)
    if is_dup.any():
        d = kept.filter(pa.array(is_dup)).select(["id", "source", "meta", "text"]).to_pydict()
        extra = reject_table(
            [
                reject_row(i, s, "dedup", m, t, duplicate_of=dups[i][0], value=dups[i][2])
                for i, s, m, t in zip(d["id"], d["source"], d["meta"], d["text"], strict=True)
            ]
        )
        rejects = pa.concat_tables([rejects, extra])
    sizes = np.ones(len(ids), np.int32) if cluster_sizes is None else cluster_sizes.astype(np.int32)
    survivors = kept.filter(pa.array(~is_dup))
    survivors = survivors.append_column(
        FINAL_SCHEMA.field("cluster_id"), survivors.column("id")
    ).append_column(FINAL_SCHEMA.field("cluster_size"), pa.array(sizes[~is_dup], pa.int32()))
    val = np.array([in_validation(i, fraction) for i in survivors.column("id").to_pylist()], dtype=bool)
    stats: dict[str, Any] = {}
    for split, mask in (("train", ~val), ("validation", val)):
        part = survivors.filter(pa.array(mask))
        (out / split).mkdir(exist_ok=True)
        pq.write_table(part, out / split / f"part-{shard:05d}.parquet", compression="zstd")
        stats[f"{split}_docs"] = part.num_rows
        stats[f"{split}_bytes"] = sum(len(t.encode("utf-8")) for t in part.column("text").to_pylist())
    (out / "rejects").mkdir(exist_ok=True)
    pq.write_table(rejects, out / "rejects" / f"part-{shard:05d}.parquet", compression="zstd")
    stats["rejected"] = rejects.num_rows
    return stats
