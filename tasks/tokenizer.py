"""The `tokenizer` step: train a lossless SentencePiece tokenizer on the prepared train split.

Input `data` (prepare): `train/part-*.parquet` and `validation/part-*.parquet` with a `text`
column. Output: `spm.model`, `spm.vocab` and the Hugging Face tokenizer files in the artifact root
(`AutoTokenizer.from_pretrained(dir)` loads it, with the chat template). Training streams the
documents and reservoir-samples `max_sentences` lines with `seed`, so the same `prepare` output
gives byte-identical files (model/tokenizer.py). Before publishing, the step checks on the
validation split that decoding gives back the text and that the HF tokenizer gives the same ids as
SentencePiece; either failing is an error. (Unigram only: the two Viterbi implementations break
ties between equally likely segmentations differently, e.g. inside long runs of spaces; that is
counted in `hf_mismatches` and logged, not raised. BPE, the default, matches exactly.)
Stats: vocab_size and bytes_per_token on validation; the training time is in the manifest's timings.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pyarrow.parquet as pq

from llmflow.step import StepContext
from model import tokenizer as tk
from tasks.common import step_task

CHECK_DOCS = 200  # validation documents checked for round trip and HF == SentencePiece ids
# A fixed probe for the HF == SentencePiece check: code, whitespace runs, tabs, non-ASCII, roles.
PROBE = [
    "def f(x):\n    if x:\n\t\treturn  x  # done\n\n",
    "  leading and trailing spaces   \r\n",
    "naïve café, 日本語, emoji 🙂 and digits 12345",
    "<|system|>\nBe brief.<|end|>\n<|user|>\nhi<|end|>\n<|assistant|>\n",
    "literal <s> and </s> and <pad> in text",
]


def split_files(data_dir: Path, split: str, required: bool = True) -> list[Path]:
    """The Parquet shards of one split of a `prepare` artifact."""
    files = sorted((data_dir / split).glob("part-*.parquet"))
    if required and not files:
        raise FileNotFoundError(f"prepare artifact {data_dir} has no {split}/part-*.parquet")
    return files


def iter_texts(files: list[Path], batch_size: int = 1024) -> Iterator[str]:
    """Stream the non-empty `text` values of Parquet files, one record batch at a time."""
    for f in files:
        pf = pq.ParquetFile(f)
        if "text" not in pf.schema_arrow.names:
            raise ValueError(f"{f} has no 'text' column (columns: {pf.schema_arrow.names})")
        for batch in pf.iter_batches(batch_size=batch_size, columns=["text"]):
            yield from (t for t in batch.column(0).to_pylist() if t)


def _batches(it: Iterator[str], n: int) -> Iterator[list[str]]:
    while batch := list(islice(it, n)):
        yield batch


def tokenizer_step(ctx: StepContext) -> dict:
    """Train a SentencePiece tokenizer on the prepared train split and export it for transformers."""
    cfg = ctx.config
    data = ctx.input_path("data")
    train_files = split_files(data, "train")
    val_files = split_files(data, "validation", required=False)

    seen = 0

    def counted() -> Iterator[str]:
        nonlocal seen
        for line in tk.document_lines(iter_texts(train_files)):
            seen += 1
            yield line

    ctx.progress(0, 3, "training SentencePiece")
    t0 = time.time()
    sp = tk.train(
        counted(),
        ctx.out,
        model_type=cfg.model_type,
        vocab_size=cfg.vocab_size,
        character_coverage=cfg.character_coverage,
        max_sentences=cfg.max_sentences,
        byte_fallback=cfg.byte_fallback,
        split_digits=cfg.split_digits,
        threads=cfg.threads,
        seed=cfg.seed,
    )
    train_s = time.time() - t0
    ctx.timings["train_seconds"] = round(train_s, 3)
    ctx.progress(1, 3, "exporting the Hugging Face tokenizer")
    hf = tk.export_hf(ctx.out / tk.MODEL_FILE, ctx.out)

    ctx.progress(2, 3, "measuring on validation")
    tokens = nbytes = docs = 0
    checked: list[str] = []
    for batch in _batches(iter_texts(val_files), 1024):
        ids = sp.encode(batch, num_threads=cfg.threads or -1)
        tokens += sum(map(len, ids))
        nbytes += sum(len(t.encode("utf-8")) for t in batch)
        docs += len(batch)
        if len(checked) < CHECK_DOCS:
            checked += batch[: CHECK_DOCS - len(checked)]
            lossy = [t for t, i in zip(batch, ids, strict=True) if sp.decode(i) != t]
            if lossy and cfg.byte_fallback:
                raise RuntimeError(f"tokenizer is not lossless on validation text: {lossy[0][:200]!r}")
    bad = tk.mismatches(sp, hf, PROBE + checked)
    if bad:
        msg = (
            f"the exported HF tokenizer disagrees with SentencePiece on {len(bad)} of "
            f"{len(PROBE) + len(checked)} text(s), e.g. {bad[0][:200]!r}"
        )
        if cfg.model_type == "bpe":
            raise RuntimeError(msg)
        # Unigram: equally likely segmentations (e.g. a 55-space run as 16+16+16+7 or 7+16+16+16)
        # are broken differently by the two Viterbi implementations. Same text, same score.
        ctx.logger.warning("tokenizer: %s (unigram ties between equally likely segmentations)", msg)
    ctx.progress(3, 3, "done")

    stats = {
        "vocab_size": sp.get_piece_size(),
        "model_type": cfg.model_type,
        "bytes_per_token": round(nbytes / tokens, 4) if tokens else None,
        "validation_docs": docs,
        "validation_tokens": tokens,
        "validation_bytes": nbytes,
        "train_lines_seen": seen,
        "train_lines_sampled": min(seen, cfg.max_sentences),
        "checked_docs": len(checked),
        "hf_mismatches": len(bad),
    }
    if not tokens:
        ctx.logger.warning("tokenizer: the validation split is empty; bytes_per_token is not measured")
    sample = PROBE[0]
    pieces = " ".join(repr(sp.id_to_piece(i)) for i in sp.encode(sample))
    ctx.report(
        "# Tokenizer\n\n"
        + "\n".join(f"- **{k}**: {v}" for k, v in stats.items())
        + f"\n\nSample `{sample!r}` ->\n\n{pieces}\n\n"
        "Lossless (identity normalisation, byte fallback, newline as its own symbol); the HF "
        "tokenizer gives the same ids as SentencePiece on the probe set and "
        f"{len(checked)} validation documents.\n"
    )
    return stats


train_tokenizer = step_task("tokenizer", 1, tokenizer_step)
