"""The champion the service serves, reloaded when the registry's champion changes.

The model comes from a pluggable source, a callable returning `(version, model_dir)` or None
(by default the registry's champion). It is asked at most every `reload_interval_seconds`, by a
background thread and on requests, and a changed version is loaded beside the old one and
swapped in; a model that fails to load leaves the old one serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, status

from llmflow.store import ArtifactStore

log = logging.getLogger("llmflow.serve")

ModelSource = Callable[[], "tuple[str, str] | None"]


def registry_source(name: str, store: ArtifactStore | None = None) -> ModelSource:
    """The registry's champion as `(version, model_path)`, or None when there is none or it is
    marked erased (trained on data an erasure request removed: `llmflow forget`), which stops
    serving it at the next registry check."""
    from llmflow.registry import Registry

    registry = Registry(store or ArtifactStore(), name)

    def source() -> tuple[str, str] | None:
        entry = registry.champion()
        if entry is None or entry.get("erased"):
            return None
        return str(entry["version"]), str(entry["model_path"])

    return source


class Champion:
    """The loaded champion: asks the source at most every `interval` seconds, swaps on change."""

    def __init__(
        self,
        source: ModelSource,
        interval: float,
        device: str | None = None,
        on_change: Callable[[str], None] | None = None,
    ):
        self.source, self.interval, self.device, self.on_change = source, interval, device, on_change
        self.version: str | None = None
        self.path: str | None = None
        self.model = self.tokenizer = None
        self.loaded_at: float | None = None
        self.error: str | None = None
        self._checked = float("-inf")
        self._refresh_lock = threading.Lock()
        self.generate_lock = threading.Lock()  # one generation at a time bounds memory

    def refresh(self, force: bool = False) -> bool:
        """Ask the source (if due) and load a new champion; True when the served model changed."""
        if not force and time.monotonic() - self._checked < self.interval:
            return False
        if not self._refresh_lock.acquire(blocking=force):
            return False  # another thread is already looking
        try:
            self._checked = time.monotonic()
            try:
                found = self.source()
            except Exception as e:  # a registry hiccup keeps the current model serving
                self.error = f"could not read the registry: {e}"
                log.warning(self.error)
                return False
            if found is None:
                changed = self.model is not None
                self.version = self.path = self.model = self.tokenizer = self.loaded_at = None
                self.error = None
                return changed
            version, path = found
            if version == self.version:
                return False
            from model.generate import load

            try:
                model, tokenizer = load(path, device=self.device)
            except Exception as e:
                self.error = f"could not load champion version {version} from {path}: {e}"
                log.error(self.error)
                return False
            self.model, self.tokenizer = model, tokenizer  # the old one serves until here
            self.version, self.path, self.loaded_at, self.error = version, path, time.time(), None
            log.info("serving champion version %s from %s", version, path)
        finally:
            self._refresh_lock.release()
        if self.on_change is not None:
            self.on_change(version)
        return True

    def snapshot(self) -> tuple[str, Any, Any]:
        """(version, model, tokenizer), refreshed if due; 503 with the reason when there is none."""
        self.refresh()
        version, model, tokenizer = self.version, self.model, self.tokenizer
        if model is None or version is None:
            reason = self.error or "the registry has no champion yet: run the pipeline or promote a model"
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"no model to serve: {reason}")
        return version, model, tokenizer
