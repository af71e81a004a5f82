"""Documents to token ids with a Hugging Face tokenizer: the `pack` engine for a base model's own
tokenizer (model/tokenizer.py's `ParallelEncoder` is the one for llmflow's SentencePiece model).

`HFEncoder(model_dir).map(batches)` yields `(tokens, lengths, utf8_bytes)` per batch of texts,
exactly as `model.tokenizer.encode_documents` does: each document's ids followed by eos, no bos,
no other special tokens. A fast tokenizer encodes a batch on all cores itself (Rust threads).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path

import numpy as np


class HFEncoder:
    def __init__(self, model_dir: str | Path, dtype=np.uint32):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.eos_token_id is None:
            raise ValueError(f"the tokenizer of {model_dir} has no eos token to end documents with")
        self.dtype = np.dtype(dtype)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def special_ids(self) -> dict[str, int | None]:
        t = self.tokenizer
        return {
            "bos_id": t.bos_token_id,
            "eos_id": t.eos_token_id,
            "pad_id": t.pad_token_id,
            "unk_id": t.unk_token_id,
        }

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
        tokens = np.fromiter(
            chain.from_iterable(x + [eos] for x in ids), dtype=self.dtype, count=int(lengths.sum())
        )
        return tokens, lengths, sum(len(t.encode("utf-8")) for t in texts)

    def map(self, batches: Iterable[list[str]]) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        for batch in batches:
            yield self.encode(batch)

    def __enter__(self) -> HFEncoder:
        return self

    def __exit__(self, *exc) -> None:
        pass
