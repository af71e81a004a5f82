"""Which earlier `prepare` artifact an incremental run dedups against: a pipeline's chain of runs.

With `prepare.dedup.incremental`, each prepare run takes the previous run's artifact as input
``previous`` and seeds its dedup index from it (`tasks/prepare.py`), so the index grows with
every run and a refresh cannot re-admit a duplicate of anything an earlier run kept. The chain's
head is recorded per pipeline name in the store (`state/dedup/<name>.json`), after each run.

The index is an input artifact, not a mutable file: its key is part of prepare's key, so a key
names exactly which index a run used. `previous_prepare` keeps that key stable: when the head was
built from the same documents, task data and config, the head *is* this run's result, so it
returns the head's own ``previous`` and the run is a cache hit on the head. Re-running an
unchanged pipeline recomputes nothing; new documents extend the chain by one artifact.

An erasure request (`llmflow forget`) recorded after the head ends the chain: the next run starts a
new index, because the old one holds the hashes and MinHash signatures of the erased documents
(and `llmflow gc --erased` deletes it with everything else built from them).
"""

from __future__ import annotations

import hashlib
import re
import time

from llmflow.config import PrepareConfig
from llmflow.store import ArtifactStore, StepRef

STEP = "prepare"


def _head_path(name: str) -> tuple[str, str, str]:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    if safe != name:  # two names must not share a file
        safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return "state", "dedup", f"{safe}.json"


def head(store: ArtifactStore, name: str) -> StepRef | None:
    """The last incremental prepare artifact of pipeline `name`, if it is still complete."""
    h = store.read_json(*_head_path(name))
    return store.ref(STEP, h["key"]) if h else None


def previous_prepare(
    store: ArtifactStore, name: str, config: PrepareConfig, docs: StepRef, task: StepRef | None
) -> StepRef | None:
    """The artifact to pass as input ``previous`` (None: the first run of the chain)."""
    ref = head(store, name)
    if ref is None:
        return None
    from llmflow.erasure import load_requests

    recorded = (store.read_json(*_head_path(name)) or {}).get("recorded", 0.0)
    if any(r.created >= recorded for r in load_requests(store)):
        return None  # an erasure since the head: a new chain, never the old index
    m = store.manifest(STEP, ref.key) or {}
    inputs = m.get("inputs", {})
    same = (
        inputs.get("docs", {}).get("key") == docs.key
        and inputs.get("task", {}).get("key") == (task.key if task is not None else None)
        and m.get("config") == config.model_dump(mode="json")
    )
    if not same:
        return ref
    prev = inputs.get("previous")
    return store.ref(STEP, prev["key"]) if prev else None


def record_head(store: ArtifactStore, name: str, ref: StepRef) -> None:
    """Make `ref` the head of pipeline `name`'s chain (the previous head is its input)."""
    store.write_json({"step": STEP, "key": ref.key, "recorded": time.time()}, *_head_path(name))
