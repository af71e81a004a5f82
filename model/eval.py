"""Validation loss as bits per byte and perplexity.

Bits per byte makes models with different tokenizers comparable: the mean loss in nats per token
times the split's tokens per byte, over ln 2 (docs/steps.md):

    bpb = loss * tokens / (bytes * ln 2)

`tokens` and `bytes` are the split's counts recorded by `pack` in `meta.json`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.data import check_split, eval_windows, open_split, read_meta


def bits_per_byte(loss_nats: float, tokens: int, nbytes: int) -> float:
    if tokens <= 0 or nbytes <= 0:
        raise ValueError(f"need positive token and byte counts, got tokens={tokens}, bytes={nbytes}")
    return loss_nats * tokens / (nbytes * math.log(2))


def split_counts(meta: dict[str, Any], split: str) -> tuple[int, int]:
    """(tokens, bytes) of a split from pack's meta.json."""
    info = meta.get(split) or {}
    if not info.get("tokens") or not info.get("bytes"):
        raise ValueError(f"meta.json has no token/byte counts for split {split!r}: cannot compute bpb")
    return int(info["tokens"]), int(info["bytes"])


@torch.no_grad()
def evaluate_bpb(
    model,
    shards_dir: str | Path,
    split: str = "validation",
    seq_len: int = 256,
    batch_size: int = 8,
    max_batches: int | None = 16,
    accelerator=None,
) -> dict[str, float]:
    """Mean next-token loss over the split's first `max_batches` windows -> loss, bpb, ppl, tokens.

    With an `accelerator`, the windows are shared across processes and the sums reduced, so every
    process returns the same figures.
    """
    meta = read_meta(shards_dir)
    tokens = open_split(shards_dir, split, meta)
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", meta["vocab_size"]))
    check_split(tokens, split, seq_len, vocab)
    n_tok, n_bytes = split_counts(meta, split)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of nats, tokens]
    for x, y in eval_windows(tokens, seq_len, batch_size, max_batches, rank, world):
        x, y = x.to(device), y.to(device)
        logits = model(input_ids=x).logits
        nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        total[0] += nll.double()
        total[1] += y.numel()
    if accelerator is not None and world > 1:
        total = accelerator.reduce(total, reduction="sum")
    model.train(was_training)
    loss = float(total[0] / total[1])
    return {
        "loss": loss,
        "bpb": bits_per_byte(loss, n_tok, n_bytes),
        "ppl": math.exp(min(loss, 50.0)),
        "tokens": int(total[1]),
    }


def baseline_bpb(
    shards_dir: str | Path,
    vocab_size: int,
    seq_len: int = 256,
    batch_size: int = 8,
    max_batches: int | None = 16,
) -> dict[str, float]:
    """Bits per byte of two models that need no training, on the windows `evaluate_bpb` scores.

    `uniform`: every id of the vocabulary equally likely. `unigram`: each token's frequency in
    the train split (add-one smoothing), ignoring all context. A language model that does not
    beat the unigram model has learned nothing about context.
    """
    meta = read_meta(shards_dir)
    val = open_split(shards_dir, "validation", meta)
    check_split(val, "validation", seq_len, vocab_size)
    train = open_split(shards_dir, "train", meta)
    counts = np.zeros(vocab_size, dtype=np.float64)
    for i in range(0, len(train), 1 << 24):  # bounded memory on a large split
        chunk = np.asarray(train[i : i + (1 << 24)], dtype=np.int64)
        counts += np.bincount(chunk[chunk < vocab_size], minlength=vocab_size)
    logp = np.log(counts + 1.0) - math.log(counts.sum() + vocab_size)
    nats, n = 0.0, 0
    for _, y in eval_windows(val, seq_len, batch_size, max_batches):
        ids = y.numpy().reshape(-1)
        nats -= float(logp[ids].sum())
        n += ids.size
    n_tok, n_bytes = split_counts(meta, "validation")
    return {
        "unigram": bits_per_byte(nats / n, n_tok, n_bytes),
        "uniform": bits_per_byte(math.log(vocab_size), n_tok, n_bytes),
    }
