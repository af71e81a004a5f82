"""Concurrent answers generated together: a queue feeding batched `generate`.

`Batcher.submit(stream)` queues a `model.streaming.TextStream`; one worker thread takes what has
queued, up to `max_batch` streams (waiting up to `wait` seconds after the first for company),
and runs them through `generate_together`, one batch per `batch_key` (the same model and way of
choosing tokens), holding `lock` around each. A batch runs until its last row ends; streams
that arrive meanwhile form the next. Static batching: a row that ends early leaves its slot
idle until the batch ends, which costs little when answers are of similar lengths.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time

from model.streaming import TextStream, generate_together


class Batcher:
    """One worker thread generating queued streams in batches of up to `max_batch`."""

    def __init__(
        self, max_batch: int, wait: float = 0.0, lock: contextlib.AbstractContextManager | None = None
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch, self.wait = max_batch, wait
        self.lock = lock or contextlib.nullcontext()
        self._queue: queue.Queue[TextStream | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._worker.start()
        self.batches = 0  # how many `generate` calls ran, and for how many streams (GET /model)
        self.streams = 0

    def submit(self, stream: TextStream) -> None:
        self._queue.put(stream)

    def close(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop the worker."""
        self._queue.put(None)
        self._worker.join(timeout)

    def _run(self) -> None:
        closing = False
        while not closing:
            first = self._queue.get()
            if first is None:
                return
            taken = [first]
            deadline = time.monotonic() + self.wait
            while len(taken) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    closing = True
                    break
                taken.append(nxt)
            groups: dict[tuple, list[TextStream]] = {}
            for stream in taken:
                groups.setdefault(stream.batch_key, []).append(stream)
            for group in groups.values():
                self.batches += 1
                self.streams += len(group)
                generate_together(group, self.lock)
