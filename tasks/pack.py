"""The `pack` step: encode the prepared splits into flat token shards for pretraining.

Inputs: `data` (prepare: `<split>/part-*.parquet` with `text`) and `tokenizer` (`spm.model`, or
a `base_model` artifact: then its own Hugging Face tokenizer encodes, model/hf_tokens.py).
Output, per split: `<split>.bin`, the token ids of every document each followed by eos (no bos),
as one flat `uint16` array (`uint32` when the vocabulary exceeds 65,535); `<split>.idx.npy`, the
int64 start offset of each document; and `meta.json` with dtype, vocab_size, the special ids and
per split `{"tokens", "bytes", "documents"}` (tokens include the eos; bytes are the UTF-8 size of
the encoded texts, so validation loss converts to bits per byte).

Documents stream through a process pool in batches and are appended to the shard as they come
back, so memory stays bounded. A split too small to train on is recorded in `warnings`, not an
error here: the pretrain step knows its context length and raises a clear error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from llmflow.step import StepContext
from model import tokenizer as tk
from model.hf_tokens import HFEncoder
from tasks.base_model import BASE_JSON
from tasks.common import step_task
from tasks.tokenizer import split_files

SPLITS = ("train", "validation")
MIN_TOKENS = 1025  # below this no realistic context window fits; recorded as a warning


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits and the vocabulary is at most 65,535; uint32 beyond."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size > 2**32:
        raise ValueError(f"vocab_size {vocab_size} does not fit uint32 token ids")
    return np.dtype(np.uint16) if vocab_size <= 65_535 else np.dtype(np.uint32)


def iter_batches(files: list[Path], batch_docs: int) -> Iterator[list[str]]:
    """Non-empty `text` values in batches of up to `batch_docs` documents, file by file."""
    for f in files:
        pf = pq.ParquetFile(f)
        if "text" not in pf.schema_arrow.names:
            raise ValueError(f"{f} has no 'text' column (columns: {pf.schema_arrow.names})")
        for batch in pf.iter_batches(batch_size=batch_docs, columns=["text"]):
            texts = [t for t in batch.column(0).to_pylist() if t]
            if texts:
                yield texts


def count_rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def pack_split(
    encoder: tk.ParallelEncoder | HFEncoder,
    files: list[Path],
    out: Path,
    split: str,
    batch_docs: int,
    progress=None,
) -> dict:
    """Write `<split>.bin` and `<split>.idx.npy`; return {"tokens", "bytes", "documents"}."""
    total_rows = count_rows(files)
    tokens = nbytes = rows = 0
    starts: list[np.ndarray] = []
    with open(out / f"{split}.bin", "wb") as f:
        for ids, lengths, b in encoder.map(iter_batches(files, batch_docs)):
            f.write(ids.tobytes())
            starts.append(tokens + np.concatenate(([0], np.cumsum(lengths)[:-1])))
            tokens += len(ids)
            nbytes += b
            rows += len(lengths)
            if progress is not None:
                progress(rows, total_rows, f"{split}: {rows:,} documents, {tokens:,} tokens")
    offsets = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
    np.save(out / f"{split}.idx.npy", offsets.astype(np.int64))
    return {"tokens": tokens, "bytes": nbytes, "documents": int(len(offsets))}


def pack_step(ctx: StepContext) -> dict:
    """Encode the train and validation splits into flat token shards on all cores."""
    cfg = ctx.config
    data = ctx.input_path("data")
    files = {s: split_files(data, s, required=(s == "train")) for s in SPLITS}
    tok_path = ctx.input_path("tokenizer")
    if (tok_path / BASE_JSON).exists():  # a base model's own tokenizer
        hf = HFEncoder(tok_path / "model")  # a fast tokenizer uses every core by itself
        vocab_size, specials, workers = hf.vocab_size, hf.special_ids(), 1
        hf.dtype = dtype = token_dtype(vocab_size)
        encoder: tk.ParallelEncoder | HFEncoder = hf
    else:
        model_file = tok_path / tk.MODEL_FILE
        sp = tk.load(model_file)
        vocab_size = sp.get_piece_size()
        specials = {
            "bos_id": sp.bos_id(),
            "eos_id": sp.eos_id(),
            "pad_id": sp.pad_id(),
            "unk_id": sp.unk_id(),
        }
        dtype = token_dtype(vocab_size)
        # no more processes than batches: a small corpus is not worth spawning a pool for
        batches = sum(-(-count_rows(files[s]) // cfg.batch_docs) for s in SPLITS)
        workers = max(1, min(cfg.workers or os.cpu_count() or 1, batches))
        encoder = tk.ParallelEncoder(model_file, workers, dtype)

    meta: dict = {
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        **specials,
        "layout": "flat ids, eos after every document, no bos; idx.npy = document start offsets",
    }
    warnings = []
    with encoder as enc:
        for split in SPLITS:
            info = pack_split(enc, files[split], ctx.out, split, cfg.batch_docs, ctx.progress)
            meta[split] = info
            if info["tokens"] < MIN_TOKENS:
                warnings.append(
                    f"the {split} split has only {info['tokens']:,} tokens: too small for pretraining"
                )
    for w in warnings:
        ctx.logger.warning("pack: %s", w)
    meta["warnings"] = warnings
    (ctx.out / "meta.json").write_text(json.dumps(meta, indent=2))

    stats = {"dtype": dtype.name, "vocab_size": vocab_size, "workers": workers}
    for split in SPLITS:
        for k in ("tokens", "bytes", "documents"):
            stats[f"{split}_{k}"] = meta[split][k]
    stats["warnings"] = warnings
    rows = [
        {"split": s, **meta[s], "bytes/token": round(meta[s]["bytes"] / max(1, meta[s]["tokens"]), 3)}
        for s in SPLITS
    ]
    ctx.table(rows, "shards")
    ctx.report(
        "# Token shards\n\n| split | documents | tokens | bytes | bytes/token |\n|---|---|---|---|---|\n"
        + "".join(
            f"| {r['split']} | {r['documents']:,} | {r['tokens']:,} | {r['bytes']:,} | {r['bytes/token']} |\n"
            for r in rows
        )
        + f"\ndtype `{dtype.name}`, vocabulary {vocab_size:,}, {workers} worker(s)."
        + "".join(f"\n\n**Warning:** {w}" for w in warnings)
        + "\n"
    )
    return stats


pack = step_task("pack", 1, pack_step)
