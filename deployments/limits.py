"""What one request, and one client, may send the service: a body size and a feedback rate.

`BodyLimit` is ASGI middleware: 413 for a body over its limit, by Content-Length or by counting a
chunked body before the app reads it. `RateLimit` keeps a token bucket per client: `burst`
requests at once, refilled at `per_minute` / 60 per second; a request finding the bucket empty is
told how many seconds until the next one would pass (the 429's Retry-After).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class BodyLimit:
    """413 for a request body over `limit` bytes, by Content-Length or by counting a chunked one.
    The answer is `{"detail": ...}`, or what `render(path, message)` makes of it."""

    def __init__(self, app: Any, limit: int, render: Callable[[str, str], dict] | None = None):
        self.app, self.limit = app, limit
        self.render = render or (lambda path, message: {"detail": message})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                return await self._reject(scope, send)
            return await self.app(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        body, more = b"", True  # chunked: read it here, bounded, then replay it
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._reject(scope, send)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _reject(self, scope, send):
        message = f"request body over the limit of {self.limit} bytes"
        detail = json.dumps(self.render(scope["path"], message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(detail)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": detail})


class RateLimit:
    """Token buckets per client key. Thread-safe; remembers the `max_clients` most recent clients
    (a forgotten one starts again with a full bucket, as one idle for a while would)."""

    def __init__(
        self,
        per_minute: float,
        burst: int,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        if per_minute <= 0 or burst < 1:
            raise ValueError(f"a rate limit needs per_minute > 0 and burst >= 1, got {per_minute}, {burst}")
        self.per_minute, self.burst, self.max_clients, self.clock = per_minute, burst, max_clients, clock
        self._rate = per_minute / 60.0
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Spend one request of `key`'s budget: 0.0 when it may pass, else the seconds to wait."""
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self._rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._rate
            self._buckets[key] = (tokens - 1.0 if wait == 0.0 else tokens, now)  # most recent last
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait
