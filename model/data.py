"""Reading packed token shards (the `pack` step's output) as training and validation batches.

Layout (docs/steps.md): `<split>.bin` is a flat array of token ids (dtype in `meta.json`, eos
between documents), `meta.json` holds dtype, vocab_size, special ids and per-split token and
byte counts. The arrays are memory-mapped, so a corpus larger than RAM costs nothing to open.

Training batches are nanoGPT-style random windows of `seq_len + 1` tokens, packed across document
boundaries (no padding). The window offsets are drawn from a generator seeded by
(seed, step, micro-batch, rank) alone, so the data at any step is known without replaying the
steps before it: resuming at step k sees exactly the batches an uninterrupted run would have.
Validation uses fixed, non-overlapping windows from the start of the split, split across ranks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

SPLITS = ("train", "validation")


class ShardError(ValueError):
    """Token shards that cannot be trained on: missing, inconsistent or too small."""


def read_meta(shards_dir: str | Path) -> dict[str, Any]:
    path = Path(shards_dir) / "meta.json"
    if not path.exists():
        raise ShardError(f"{shards_dir} has no meta.json: not a pack artifact")
    meta = json.loads(path.read_text())
    for k in ("dtype", "vocab_size"):
        if k not in meta:
            raise ShardError(f"{path} lacks {k!r}")
    return meta


def open_split(shards_dir: str | Path, split: str, meta: dict[str, Any] | None = None) -> np.ndarray:
    """The split's tokens as a read-only memmap."""
    meta = meta or read_meta(shards_dir)
    path = Path(shards_dir) / f"{split}.bin"
    if not path.exists():
        raise ShardError(f"{path} is missing")
    dtype = np.dtype(meta["dtype"])
    if path.stat().st_size % dtype.itemsize:
        raise ShardError(f"{path} is truncated: {path.stat().st_size} bytes is not a multiple of {dtype}")
    if path.stat().st_size == 0:
        raise ShardError(f"{path} is empty")
    return np.memmap(path, dtype=dtype, mode="r")


def check_split(tokens: np.ndarray, split: str, seq_len: int, vocab_size: int) -> None:
    """Clear errors for a split too short for one window, or ids the model cannot embed."""
    if len(tokens) < seq_len + 1:
        raise ShardError(
            f"the {split} split has {len(tokens):,} tokens, fewer than seq_len + 1 = {seq_len + 1}: "
            f"add data or lower pretrain.seq_len"
        )
    top = int(tokens.max())
    if top >= vocab_size:
        raise ShardError(
            f"the {split} split holds token id {top} but the vocabulary has {vocab_size} ids: "
            f"shards and tokenizer/model do not match"
        )


class TrainBatches:
    """Deterministic random windows: `batch(step, micro)` -> (inputs, targets), int64 [B, T]."""

    def __init__(
        self,
        shards_dir: str | Path,
        seq_len: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        split: str = "train",
        vocab_size: int | None = None,
    ):
        meta = read_meta(shards_dir)
        self.tokens = open_split(shards_dir, split, meta)
        check_split(self.tokens, split, seq_len, vocab_size or int(meta["vocab_size"]))
        self.seq_len, self.batch_size, self.seed, self.rank = seq_len, batch_size, seed, rank

    def offsets(self, step: int, micro: int = 0) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step, micro, self.rank])
        return rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)

    def batch(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.offsets(step, micro)[:, None] + np.arange(self.seq_len + 1)[None, :]
        chunk = torch.from_numpy(self.tokens[idx].astype(np.int64))
        return chunk[:, :-1], chunk[:, 1:]


def eval_windows(
    tokens: np.ndarray, seq_len: int, batch_size: int, max_batches: int | None, rank: int = 0, world: int = 1
):
    """Yield (inputs, targets) over non-overlapping windows from the split's start, this rank's share.

    Every rank gets as many windows (the count is cut to a multiple of `world`): under FSDP each
    forward is a collective, so all ranks must run the same number.
    """
    n = (len(tokens) - 1) // seq_len
    if max_batches is not None:
        n = min(n, max_batches * batch_size)
    n -= n % world
    mine = list(range(rank, n, world))
    for i in range(0, len(mine), batch_size):
        starts = np.asarray(mine[i : i + batch_size]) * seq_len
        idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
        chunk = torch.from_numpy(tokens[idx].astype(np.int64))
        yield chunk[:, :-1], chunk[:, 1:]
