"""Decontamination: drop pretraining documents that share long word n-grams with evaluation data.

Following GPT-3 (Brown et al. 2020, appendix C), a document is contaminated when it shares a word
13-gram with a held-out item. Items are the `prompt` and `response` of every row of the task's
`test.jsonl` and `validation.jsonl`; tokens are lowercase ``\\w+`` words (`tasks.ngrams.tokens`),
so case, punctuation and whitespace do not hide a copy. An item of `min_words` (8) to n-1 words is indexed
whole (a short response copied verbatim still counts); shorter items are ignored, as generic
phrases like "Return the value." would match everywhere.

The index is a sorted uint64 array of n-gram hashes (8 bytes per n-gram, membership by binary
search), built once per run and shared read-only by the shard workers; 64-bit hashes make a chance
collision negligible even for millions of n-grams.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from tasks.ngrams import ngram_hashes, text_tokens, token_hashes, tokens


class Decontaminator:
    """`index` maps an n-gram length to the sorted uint64 hashes of that length."""

    def __init__(self, index: dict[int, np.ndarray], n: int, min_matches: int = 1):
        self.index = {k: np.unique(np.asarray(v, dtype=np.uint64)) for k, v in index.items() if len(v)}
        self.n = n
        self.min_matches = min_matches

    @classmethod
    def from_texts(
        cls, texts: Iterable[str], n: int = 13, min_matches: int = 1, min_words: int = 8
    ) -> Decontaminator:
        """Index n-grams of every text; a text of `min_words`..n-1 words is indexed whole."""
        parts: dict[int, list[np.ndarray]] = {}
        for t in texts:
            h = token_hashes(tokens(t)) if t else None
            if h is None or len(h) < min_words:
                continue
            k = min(n, len(h))
            parts.setdefault(k, []).append(ngram_hashes(h, k))
        return cls({k: np.concatenate(v) for k, v in parts.items()}, n, min_matches)

    @classmethod
    def from_task_dir(
        cls,
        path: str | Path,
        n: int = 13,
        splits: Iterable[str] = ("test", "validation"),
        min_matches: int = 1,
        min_words: int = 8,
    ) -> Decontaminator:
        """Index the prompts and responses of `<split>.jsonl` files of a task_data artifact."""
        texts: list[str] = []
        for split in splits:
            f = Path(path) / f"{split}.jsonl"
            if not f.exists():
                raise FileNotFoundError(f"decontamination needs {f} (task_data artifact split {split!r})")
            with open(f, encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        row = json.loads(line)
                        texts += [str(row.get("prompt") or ""), str(row.get("response") or "")]
        return cls.from_texts(texts, n, min_matches, min_words)

    def __len__(self) -> int:
        return sum(len(v) for v in self.index.values())

    def matches(self, text: str) -> int:
        """How many of the text's n-grams (with repeats, all indexed lengths) are in the index."""
        if not self.index:
            return 0
        h = text_tokens(text)[1]
        found = 0
        for k, idx in self.index.items():
            if len(h) < k:
                continue
            g = ngram_hashes(h, k)
            pos = np.searchsorted(idx, g)
            pos[pos == len(idx)] = 0
            found += int(np.count_nonzero(idx[pos] == g))
        return found

    def __call__(self, text: str) -> tuple[bool, str | None, float | None, int]:
        m = self.matches(text)
        if m >= self.min_matches:
            return False, "decontaminated", float(m), m
        return True, None, None, m
