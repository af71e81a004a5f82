"""One answer generated piece by piece, for a server that streams it as it comes.

`TextStream` runs transformers' `generate` in a thread with a streamer that decodes each new
token, cuts the text at the first stop string and stops the model there. Iterating yields the
new text in pieces whose concatenation is the whole answer; a piece is held back while it could
still turn out to be the start of a stop string (or a space the next token's decoding may
change), so nothing streamed is ever taken back. The prompt is encoded as `model.generate`
does (bos, then cut to fit the context by `model.chat.fit_prompt`); the answer ends at eos,
`<|end|>`, a stop string or `max_new_tokens`.

`generate_together` runs several streams in one batched `generate` (left-padded, each row
stopping on its own); `model.batching.Batcher` queues concurrent streams into such batches.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from model.generate import encode_prompt, prompt_budget, stop_strings, stop_token_ids

_DONE = object()


class Runner(Protocol):
    """Where a stream's generation runs: `submit` it, and the runner calls `generate_together`."""

    def submit(self, stream: TextStream) -> None: ...


class TextStream:
    """Iterate for the new text; once iterated, `text`, `prompt_tokens`, `completion_tokens`
    (including the token that ended the answer) and `finish_reason` ("stop" for eos, `<|end|>`
    or a stop string; "length" for `max_new_tokens`) describe the answer. Iterate once.

    The generation runs in a thread of its own holding `lock` (any context manager) around the
    model's work, or in a `runner`'s batch; either way a consumer that stops reading never
    keeps the model: the generation is told to stop and ends within a step. An exception in the
    generation is raised from the iteration."""

    def __init__(
        self,
        model,
        tokenizer,
        prompt: str,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        lock: contextlib.AbstractContextManager | None = None,
        runner: Runner | None = None,
    ):
        self.model, self.tokenizer, self.max_new_tokens = model, tokenizer, max_new_tokens
        self.temperature, self.top_p, self.top_k, self.seed = temperature, top_p, top_k, seed
        self.stop = [s for s in stop if s] + stop_strings(tokenizer)
        self.lock, self.runner = lock or contextlib.nullcontext(), runner
        self.input_ids, self.truncated = encode_prompt(
            tokenizer, prompt, prompt_budget(model, tokenizer, max_new_tokens)
        )
        self.prompt_tokens = len(self.input_ids)
        self.completion_tokens = 0
        self.finish_reason = "length"
        self.text = ""  # what has been yielded so far; the whole answer once iterated
        self._end_ids = set(stop_token_ids(tokenizer))
        self._new: list[int] = []
        self._sent = ""  # what the generating thread has queued
        self._ended = threading.Event()  # the answer is complete: ignore further tokens, stop
        self._pieces: queue.Queue = queue.Queue()

    @property
    def batch_key(self) -> tuple:
        """Streams with equal keys can share a batch: one model, one way of choosing tokens. A
        seeded sample runs alone, so its seed alone decides its tokens."""
        if self.temperature > 0 and self.seed is not None:
            return (id(self),)
        choice = (self.temperature, self.top_p, self.top_k) if self.temperature > 0 else "greedy"
        return (id(self.model), id(self.tokenizer), choice)

    def __iter__(self) -> Iterator[str]:
        if self.runner is not None:
            self.runner.submit(self)
        else:
            threading.Thread(target=generate_together, args=([self], self.lock), daemon=True).start()
        try:
            while (piece := self._pieces.get()) is not _DONE:
                if isinstance(piece, BaseException):
                    raise piece
                self.text += piece
                yield piece
        finally:
            self._ended.set()  # a consumer gone early stops the model at its next step

    def cancel(self) -> None:
        """Stop the generation at its next step (a consumer that will read no more)."""
        self._ended.set()

    # called in the generating thread

    def _take(self, token: int) -> None:
        if self._ended.is_set():
            return
        self.completion_tokens += 1
        if token in self._end_ids:
            self.finish_reason = "stop"
            self._ended.set()
        else:
            self._new.append(token)
        text = self.tokenizer.decode(self._new, skip_special_tokens=True)
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            text = text[: min(hits)]
            self.finish_reason = "stop"
            self._ended.set()
        elif self.completion_tokens >= self.max_new_tokens:  # its own limit, in a longer batch
            self._ended.set()
        self._emit(text if self._ended.is_set() else text[: self._safe_end(text)])

    def _finish(self, error: BaseException | None = None) -> None:
        """Hand over the rest of the text, or the error; the consumer is always released."""
        try:
            if error is None and not self._ended.is_set():
                self._ended.set()
                self._emit(self.tokenizer.decode(self._new, skip_special_tokens=True))
        except Exception as e:
            error = e
        finally:
            if error is not None:
                self._pieces.put(error)
            self._pieces.put(_DONE)

    def _emit(self, text: str) -> None:
        if len(text) > len(self._sent) and text.startswith(self._sent):
            self._pieces.put(text[len(self._sent) :])
            self._sent = text

    def _safe_end(self, text: str) -> int:
        """Where the text that can no longer change ends: before a tail that may begin a stop
        string, and before trailing spaces or an incomplete character."""
        end = len(text)
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    end = min(end, len(text) - k)
                    break
        while end > 0 and (text[end - 1].isspace() or text[end - 1] == "\ufffd"):
            end -= 1
        return end


def generate_together(streams: list[TextStream], lock: contextlib.AbstractContextManager) -> None:
    """Generate the answers of `streams` (one `batch_key`) in one left-padded batch, feeding each
    its row; each row stops on its own (its end token, stop string, limit or gone consumer)."""
    first = streams[0]
    model, tokenizer = first.model, first.tokenizer
    error: BaseException | None = None
    try:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        width = max(len(s.input_ids) for s in streams)
        ids = torch.full((len(streams), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(streams), width), dtype=torch.long)
        for row, s in enumerate(streams):
            ids[row, width - len(s.input_ids) :] = torch.tensor(s.input_ids)
            mask[row, width - len(s.input_ids) :] = 1
        device = next(model.parameters()).device
        sampling = first.temperature > 0
        with lock, torch.no_grad():
            if sampling and first.seed is not None:
                torch.manual_seed(first.seed)
            model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max(s.max_new_tokens for s in streams),
                do_sample=sampling,
                temperature=first.temperature if sampling else None,
                top_p=first.top_p if sampling else None,
                top_k=first.top_k if sampling else None,
                eos_token_id=sorted(first._end_ids),
                pad_token_id=pad_id,
                streamer=_Rows(streams),
                stopping_criteria=StoppingCriteriaList([_Ended(streams)]),
            )
    except BaseException as e:  # handed to each consumer, raised where it iterates
        error = e
    finally:
        for s in streams:
            s._finish(error)


class _Rows(BaseStreamer):
    """Hands each row's new token to its stream (not the prompt, which `generate` puts first)."""

    def __init__(self, streams: list[TextStream]):
        self.streams, self.prompt_seen = streams, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for stream, token in zip(self.streams, value.reshape(-1).tolist(), strict=True):
            stream._take(token)

    def end(self) -> None:
        pass  # generate_together finishes each stream, after an error too


class _Ended(StoppingCriteria):
    """Stops each row once its stream has its answer or its consumer has gone."""

    def __init__(self, streams: list[TextStream]):
        self.streams = streams

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        ended = [s._ended.is_set() for s in self.streams]
        return torch.tensor(ended, dtype=torch.bool, device=input_ids.device)
