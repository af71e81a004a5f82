"""Rows to training examples for fine-tuning: what the model sees and what the loss counts.

A row is `{prompt, response}` (or chat `messages`). The model sees `bos + format_prompt(prompt)`
and learns `format_response(response) + eos`, in the tokenizer's format (model/chat.py: llmflow's,
or a foreign base model's own chat template); labels are -100 on the prompt, so the loss counts
response tokens only. Prompt and response are tokenized separately, exactly as generation sees
them (the prompt alone, then new tokens). A row longer than `max_len` loses prompt tokens from
the left; a row whose response alone does not fit, or a malformed row, is rejected with a reason
(`invalid:*`, `too_long:response`). Batches are length-bucketed so padding stays small, and batch
`step` is a pure function of (seed, step). The SFT and DPO recipes (model/sft.py, model/dpo.py)
both encode through here.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.chat import fit_prompt, format_messages, format_prompt, format_response, is_rendered

IGNORE = -100


class RejectedRow(ValueError):
    """A row that cannot be used; `reason` is the counted category."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL or Parquet file (or a folder of them). Bad JSON lines become rejects later."""
    path = Path(path)
    files = (
        sorted(p for p in path.rglob("*") if p.suffix in {".jsonl", ".parquet"}) if path.is_dir() else [path]
    )
    if not files or not all(p.exists() for p in files):
        raise FileNotFoundError(f"no JSONL/Parquet data at {path}")
    rows: list[dict[str, Any]] = []
    for p in files:
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows.extend(pq.read_table(p).to_pylist())
            continue
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                row = {"id": f"{p.name}:{n}", "__invalid__": "invalid:json", "__detail__": e.msg}
            rows.append(
                row if isinstance(row, dict) else {"id": f"{p.name}:{n}", "__invalid__": "invalid:not_object"}
            )
    return rows


def render_prompt(prompt: str, tokenizer=None) -> str:
    """`format_prompt(prompt)` in the tokenizer's format, unless the prompt is already rendered."""
    return prompt if is_rendered(prompt, tokenizer) else format_prompt(prompt, tokenizer=tokenizer)


def row_text(row: dict[str, Any], response_key: str = "response", tokenizer=None) -> tuple[str, str]:
    """(rendered prompt, response) of a row, or RejectedRow for a malformed one."""
    if "__invalid__" in row:
        raise RejectedRow(row["__invalid__"], row.get("__detail__", ""))
    if "messages" in row and "prompt" not in row:
        try:
            prompt, response = format_messages(row["messages"], tokenizer)
        except (ValueError, TypeError, AttributeError) as e:
            raise RejectedRow("invalid:messages", str(e)) from None
    else:
        for key in ("prompt", response_key):
            if key not in row or row[key] is None:
                raise RejectedRow(f"invalid:missing_{key}")
            if not isinstance(row[key], str):
                raise RejectedRow(f"invalid:{key}_not_text", type(row[key]).__name__)
        prompt, response = render_prompt(row["prompt"], tokenizer), row[response_key]
    if not response.strip():
        raise RejectedRow("invalid:empty_response")
    return prompt, response


def encode_pair(tokenizer, prompt: str, response: str, max_len: int) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated) for a rendered prompt and a raw response.

    input = [bos] + prompt + response + `<|end|>` + eos; labels copy the response part and are
    -100 elsewhere. Too long: the prompt is cut to fit as `model.chat.fit_prompt` does (on the
    tokenizer's `truncation_side`; bos stays); if the response alone leaves fewer than 4 prompt
    tokens, RejectedRow('too_long:response').
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    r_ids = tokenizer(format_response(response, tokenizer), add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    budget = max_len - len(bos) - len(r_ids)
    p_ids, truncated = fit_prompt(tokenizer, prompt, max(budget, 0))
    if budget < 0 or (truncated and budget < 4):
        raise RejectedRow("too_long:response", f"{len(r_ids)} response tokens, max_len {max_len}")
    ids = bos + p_ids + r_ids
    return ids, [IGNORE] * (len(ids) - len(r_ids)) + r_ids, truncated


@dataclass
class SFTData:
    """Encoded examples plus the bookkeeping that makes `input = kept + rejected` checkable."""

    examples: list[dict[str, list[int]]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    truncated: int = 0

    @property
    def rejects_by_reason(self) -> dict[str, int]:
        return dict(Counter(r["reason"] for r in self.rejects))


def build_sft(rows: Iterable[dict[str, Any]], tokenizer, max_len: int) -> SFTData:
    """Encode rows for supervised training; malformed or oversize rows go to `rejects`."""
    data = SFTData()
    for i, row in enumerate(rows):
        rid = row.get("id", i) if isinstance(row, dict) else i
        try:
            prompt, response = row_text(row, tokenizer=tokenizer)
            ids, labels, cut = encode_pair(tokenizer, prompt, response, max_len)
        except RejectedRow as e:
            data.rejects.append({"id": rid, "reason": e.reason, "detail": str(e)})
            continue
        data.truncated += cut
        data.examples.append({"input_ids": ids, "labels": labels})
    return data


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: pad tokens get attention 0 and label -100."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        attn[i, :n] = 1
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch of index batches: shuffle, sort by length within windows of 32 batches, shuffle.

    Examples of similar length share a batch (little padding) while the order stays random. The
    order depends on (seed, epoch) only, and every epoch has the same number of batches.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 32
    batches = []
    for s in range(0, len(order), window):
        chunk = sorted(order[s : s + window], key=lambda i: lengths[i])
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


class BucketedBatches:
    """`batches(step)` -> the example indices of training step `step`, a pure function of
    (seed, step): a resumed run needs only its step to continue the same data order."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self._epoch, self._batches = 0, epoch_batches(lengths, batch_size, seed, 0)
        self.per_epoch = len(self._batches)

    def __call__(self, step: int) -> list[int]:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, epoch_batches(self.lengths, self.batch_size, self.seed, epoch)
        return self._batches[i]


def bucketed_batches(n_items: int, lengths: list[int], batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless index batches in training order (see `BucketedBatches`)."""
    if len(lengths) != n_items:
        raise ValueError(f"{len(lengths)} lengths for {n_items} items")
    batches = BucketedBatches(lengths, batch_size, seed)
    step = 0
    while True:
        yield batches(step)
        step += 1
