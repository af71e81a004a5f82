"""One answer generated piece by piece, for a server that streams it as it comes.

`TextStream` runs transformers' `generate` in a thread with a streamer that decodes each new
token, cuts the text at the first stop string and stops the model there. Iterating yields the
new text in pieces whose concatenation is the whole answer; a piece is held back while it could
still turn out to be the start of a stop string (or a space the next token's decoding may
change), so nothing streamed is ever taken back. The prompt is encoded as `model.generate`
does (bos, then cut to fit the context by `model.chat.fit_prompt`); the answer ends at eos,
`<|end|>`, a stop string or `max_new_tokens`.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence

import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from model.generate import encode_prompt, prompt_budget, stop_token_ids

_DONE = object()


class TextStream:
    """Iterate for the new text; once iterated, `text`, `prompt_tokens`, `completion_tokens`
    (including the token that ended the answer) and `finish_reason` ("stop" for eos, `<|end|>`
    or a stop string; "length" for `max_new_tokens`) describe the answer. Iterate once.

    `lock` (any context manager) is held around the model's work only, in the generating
    thread, so a consumer that stops reading never keeps it: the generation is told to stop and
    ends within a step. An exception in the generation is raised from the iteration."""

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
    ):
        self.model, self.tokenizer, self.max_new_tokens = model, tokenizer, max_new_tokens
        self.sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": seed}
        self.stop = [s for s in stop if s]
        self.lock = lock or contextlib.nullcontext()
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

    def __iter__(self) -> Iterator[str]:
        worker = threading.Thread(target=self._generate, name="text-stream", daemon=True)
        worker.start()
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

    def _generate(self) -> None:
        try:
            t = self.sampling["temperature"]
            sampling = t > 0
            device = next(self.model.parameters()).device
            ids = torch.tensor([self.input_ids], dtype=torch.long, device=device)
            pad_id = self.tokenizer.pad_token_id
            with self.lock, torch.no_grad():
                if self.sampling["seed"] is not None:
                    torch.manual_seed(self.sampling["seed"])
                self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=self.max_new_tokens,
                    do_sample=sampling,
                    temperature=t if sampling else None,
                    top_p=self.sampling["top_p"] if sampling else None,
                    top_k=self.sampling["top_k"] if sampling else None,
                    eos_token_id=sorted(self._end_ids),
                    pad_token_id=pad_id if pad_id is not None else self.tokenizer.eos_token_id,
                    streamer=_Streamer(self),
                    stopping_criteria=StoppingCriteriaList([_Ended(self._ended)]),
                )
        except BaseException as e:  # handed to the consumer, raised where it iterates
            self._pieces.put(e)
        finally:
            self._pieces.put(_DONE)

    # called by the streamer, in the generating thread

    def _take(self, token_ids: list[int]) -> None:
        if self._ended.is_set():
            return
        for t in token_ids:
            self.completion_tokens += 1
            if t in self._end_ids:
                self.finish_reason = "stop"
                self._ended.set()
                break
            self._new.append(t)
        text = self.tokenizer.decode(self._new, skip_special_tokens=True)
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            text = text[: min(hits)]
            self.finish_reason = "stop"
            self._ended.set()
        self._emit(text if self._ended.is_set() else text[: self._safe_end(text)])

    def _finish(self) -> None:
        if not self._ended.is_set():
            self._ended.set()
            text = self.tokenizer.decode(self._new, skip_special_tokens=True)
            self._emit(text)

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


class _Streamer(BaseStreamer):
    """Hands the generated tokens (not the prompt, which `generate` puts first) to the stream."""

    def __init__(self, stream: TextStream):
        self.stream, self.prompt_seen = stream, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.stream._take(value.reshape(-1).tolist())

    def end(self) -> None:
        self.stream._finish()


class _Ended(StoppingCriteria):
    """Stops the generation once the stream has its answer or its consumer has gone."""

    def __init__(self, ended: threading.Event):
        self.ended = ended

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full(
            (input_ids.shape[0],), self.ended.is_set(), dtype=torch.bool, device=input_ids.device
        )
