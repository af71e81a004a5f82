"""The thin Prefect layer over a step: cache policy, retries, UI artifacts, progress.

`step_task(name, version, fn)` builds a Prefect task whose cache key is the artifact store key
(which includes the hash of `fn`'s code). Prefect does not know the files behind a result, so the
policy only offers the key while the artifact is complete and its files are as its manifest lists
them; a cache hit whose files were deleted or changed is rebuilt. `force=True` bypasses both the
Prefect cache and the store, and tells the step (`StepContext.force`) not to resume an earlier
run's work; a retry of a forced run resumes what its own first try left.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import (
    TableArtifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import CachePolicy
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate
from prefect.context import TaskRunContext
from prefect.events import emit_event

from llmflow.config import DashboardConfig, InputError
from llmflow.step import StepFn, compute_key, run_step
from llmflow.store import ArtifactStore, StepRef


class StoreKeyPolicy(CachePolicy):
    """Cache key = the artifact store key, offered only while the artifact is complete and undamaged."""

    def __init__(self, step: str, version: int | str, fn: StepFn):
        super().__init__()
        self.step = step
        self.version = version
        self.fn = fn

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        if inputs.get("force"):
            return None
        store = ArtifactStore(inputs.get("home"))
        key = compute_key(
            self.step,
            self.version,
            self.fn,
            inputs["config"],
            inputs.get("inputs") or {},
            inputs.get("extra"),
        )
        if not store.exists(self.step, key):
            return None
        return prefect_cache_key(store.root, self.step, key)


def _artifact_key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


class _PrefectReporter:
    """Turns StepContext progress and reports into Prefect artifacts (best effort)."""

    def __init__(self, step: str):
        self.step = step
        self.logger = get_run_logger()
        self.progress_id = None
        self.last = 0.0
        self.artifact_ids: dict[str, UUID] = {}

    def progress(self, done: float, total: float, message: str) -> None:
        frac = 100.0 * (done / total) if total else 0.0
        now = time.time()
        if self.progress_id is not None and now - self.last < 2.0 and done < total:
            return
        self.last = now
        desc = f"{self.step}: {message}" if message else self.step
        try:
            if self.progress_id is None:
                self.progress_id = create_progress_artifact(
                    frac, key=_artifact_key(self.step, "progress"), description=desc
                )
            else:
                update_progress_artifact(self.progress_id, frac, description=desc)
        except Exception as e:  # the UI is a view; never fail a step over it
            self.logger.debug("progress artifact failed: %s", e)
        if message:
            self.logger.info("%s %.0f%% %s", self.step, frac, message)

    def publish(self, kind: str, name: str, payload: Any) -> None:
        """Create the artifact `<step>-<name>`; published again in this task run (the live
        training curve), it is updated in place by id instead of adding a version to the key."""
        key = _artifact_key(self.step, name)
        description = f"{self.step}: {name}"
        try:
            if kind == "image":
                data = base64.b64encode(Path(payload["path"]).read_bytes()).decode()
                caption = payload.get("caption") or name
                kind, payload = "markdown", f"### {caption}\n\n![{name}](data:image/png;base64,{data})\n"
            if key in self.artifact_ids:
                data = payload if kind == "markdown" else TableArtifact(table=payload).format()
                with get_client(sync_client=True) as client:
                    client.update_artifact(self.artifact_ids[key], ArtifactUpdate(data=data))
            elif kind == "markdown":
                self.artifact_ids[key] = create_markdown_artifact(payload, key=key, description=description)
            elif kind == "table":
                self.artifact_ids[key] = create_table_artifact(payload, key=key, description=description)
        except Exception as e:  # the UI is a view; never fail a step over it
            self.logger.warning("could not publish %s artifact %s: %s", kind, key, e)


EventsFn = Callable[[StepRef], list[tuple[str, str, dict[str, Any]]]]


def emit_step_events(events: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Emit (event name, resource id, payload) triples as Prefect events."""
    for event, resource, payload in events:
        emit_event(event=event, resource={"prefect.resource.id": resource}, payload=payload)


def prefect_cache_key(root: str, step: str, key: str) -> str:
    """Prefect's result records live outside the artifact store (PREFECT_LOCAL_STORAGE_PATH, shared
    by every LLMFLOW_HOME), so the key names the store too: a record written under one home must
    not answer a run under another, whose artifact of the same key was built separately."""
    home = hashlib.sha256(root.encode()).hexdigest()[:12]
    return f"llmflow-{home}-{step}-{key}"


def _remember(task_obj: Any, ref: StepRef, root: str) -> None:
    """Record a freshly built artifact under its cache key, so the next run is a Prefect cache hit.

    The policy offers no key while the artifact is missing (a deleted artifact must not be served
    from a stale record), so Prefect itself never writes the record for a run that built one.
    """
    try:
        from prefect.results import get_result_store

        store = get_result_store().update_for_task(task_obj, _sync=True)
        store.write(
            ref.model_copy(update={"status": "cached", "seconds": 0.0}),
            key=prefect_cache_key(root, ref.step, ref.key),
        )
    except Exception as e:  # the store already has the artifact; the record only saves a task run
        get_run_logger().debug("could not record the cache entry for %s: %s", ref.step, e)


def _retrying() -> bool:
    """Whether this task run is a retry of the task. (A retried flow run calls its tasks anew: a
    forced one starts afresh again, as its first try may have failed before the step cleared.)"""
    ctx = TaskRunContext.get()
    return ctx is not None and ctx.task_run.run_count > 1


def _resuming(fn: StepFn) -> StepFn:
    """`fn` told that its run is not forced: a retry of a forced run resumes its first try's work
    (the first try removed the older run's as the step's first act)."""

    @functools.wraps(fn)  # the same code hash, hence the same key, as `fn` itself
    def resuming(ctx):
        return fn(dataclasses.replace(ctx, force=False))

    return resuming


def retry_unless_input_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry condition: a bad input (InputError) fails the same way again, so fail now."""
    return not isinstance(state.data, InputError)


def step_task(
    name: str,
    version: int | str,
    fn: StepFn,
    *,
    retries: int = 1,
    retry_delay_seconds: float = 5,
    description: str | None = None,
    events: EventsFn | None = None,
):
    """A Prefect task running `fn` as step `name` through the artifact store.

    `events(ref)` lists the events to emit after the step ran (not when it was cached).
    """

    @task(
        name=name,
        description=description or (fn.__doc__ or "").strip().split("\n")[0],
        cache_policy=StoreKeyPolicy(name, version, fn),
        retries=retries,
        retry_delay_seconds=retry_delay_seconds,
        retry_condition_fn=retry_unless_input_error,
        persist_result=True,
        log_prints=True,
    )
    def _run(
        config: Any,
        inputs: Mapping[str, StepRef] | None = None,
        home: str | None = None,
        force: bool = False,
        extra: Any = None,
        dashboard: DashboardConfig | None = None,
    ) -> StepRef:
        reporter = _PrefectReporter(name)
        store = ArtifactStore(home)
        ref = run_step(
            name,
            version,
            _resuming(fn) if force and _retrying() else fn,
            config,
            inputs,
            store=store,
            force=force,
            extra=extra,
            on_progress=reporter.progress,
            on_publish=reporter.publish,
            logger=reporter.logger,
            dashboard=dashboard,
        )
        reporter.logger.info("%s %s: %s", name, ref.status, ref.uri)
        if ref.status == "ran":
            _remember(_run, ref, store.root)
        if events is not None and ref.status == "ran":
            emit_step_events(events(ref))
        return ref

    _run.step_name = name  # type: ignore[attr-defined]
    _run.step_version = version  # type: ignore[attr-defined]
    _run.step_fn = fn  # type: ignore[attr-defined]
    return _run
