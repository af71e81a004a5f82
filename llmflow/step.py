"""Running one workflow step against the artifact store, with or without Prefect.

A step is a plain function `fn(ctx: StepContext) -> dict` that reads its inputs through
`ctx.input_path(name)`, writes its files under `ctx.out`, and returns the stats recorded in the
manifest. `run_step` computes the key (with the hash of `fn`'s code, llmflow/code_hash.py),
returns the stored artifact when it is complete and undamaged (unless forced), and otherwise
stages, runs and publishes it. The Prefect wrapper (tasks/common.py) adds the cache policy,
retries and UI artifacts on top; tests call `run_step` directly.

The same key must give the same files: a step writes no wall-clock figure into its files or
stats. What it measured (seconds, tokens per second) goes to `ctx.timings`, which the manifest
keeps under `timings`, beside `created` and `seconds`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmflow.code_hash import code_hash
from llmflow.config import DashboardConfig
from llmflow.store import ArtifactStore, StepRef, step_key

log = logging.getLogger("llmflow")

ProgressFn = Callable[[float, float, str], None]
PublishFn = Callable[[str, str, Any], None]
ProgressSink = Callable[[str, float, float, str], None]

_progress_sink: ProgressSink | None = None


def set_progress_sink(sink: ProgressSink | None) -> None:
    """Where step progress goes besides Prefect (the command line's progress bars)."""
    global _progress_sink
    _progress_sink = sink


def progress_sink() -> ProgressSink | None:
    return _progress_sink


@dataclass
class StepContext:
    """What a step function sees: its config section, its inputs, where to write, how to report."""

    step: str
    key: str
    config: Any
    inputs: Mapping[str, StepRef]
    store: ArtifactStore
    out: Path
    extra: Any = None
    force: bool = False  # a forced run: work kept in `work_dir` by an earlier run is not resumed
    logger: logging.Logger = field(default_factory=lambda: log)
    on_progress: ProgressFn | None = None
    on_publish: PublishFn | None = None
    code: str | None = None  # the step's code hash, part of its key (for keys of sub-artifacts)
    timings: dict[str, Any] = field(default_factory=dict)  # wall-clock figures, for the manifest
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)  # a view: not in the key

    @property
    def work_dir(self) -> Path:
        """Scratch space that outlives a failed try (training checkpoints), keyed like the artifact
        but never published: a retried task resumes from it; the step removes it on success."""
        if self.store.is_local:
            return Path(self.store.path("work", self.step, self.key))
        return Path(tempfile.gettempdir()) / "llmflow-work" / self.step / self.key

    def input_path(self, name: str) -> Path:
        return self.store.local_path(self.inputs[name])

    def input_stats(self, name: str) -> dict[str, Any]:
        return self.inputs[name].stats

    def progress(self, done: float, total: float, message: str = "") -> None:
        """Report progress of long work (a Prefect progress artifact, or nothing)."""
        if self.on_progress is not None:
            self.on_progress(done, total, message)
        if _progress_sink is not None:
            _progress_sink(self.step, done, total, message)

    def report(self, markdown: str, name: str = "report") -> None:
        """A markdown report: saved as `<name>.md` in the output and shown in the Prefect UI."""
        (self.out / f"{name}.md").write_text(markdown)
        if self.on_publish is not None:
            self.on_publish("markdown", name, markdown)

    def view(self, markdown: str, name: str) -> None:
        """A markdown view for the Prefect UI only, never saved (it may show wall-clock figures);
        shown again under the same name, it replaces the earlier one in place (live curves)."""
        if self.on_publish is not None:
            self.on_publish("markdown", name, markdown)

    def table(self, rows: list[dict[str, Any]], name: str) -> None:
        """A table for the Prefect UI (the data also belongs in the step's own files)."""
        if self.on_publish is not None:
            self.on_publish("table", name, rows)

    def image(self, path: Path, name: str, caption: str = "") -> None:
        """A picture (e.g. the loss curve) shown in the Prefect UI as an inline markdown image."""
        if self.on_publish is not None:
            self.on_publish("image", name, {"path": str(path), "caption": caption})


StepFn = Callable[[StepContext], dict[str, Any]]


def compute_key(
    step: str,
    version: int | str,
    fn: StepFn,
    config: Any,
    inputs: Mapping[str, StepRef] | None,
    extra: Any = None,
) -> str:
    keys = {k: v.key for k, v in (inputs or {}).items()}
    return step_key(step, version, config, keys, extra, code=code_hash(fn).sha256)


def run_step(
    step: str,
    version: int | str,
    fn: StepFn,
    config: Any,
    inputs: Mapping[str, StepRef] | None = None,
    *,
    store: ArtifactStore | None = None,
    force: bool = False,
    extra: Any = None,
    on_progress: ProgressFn | None = None,
    on_publish: PublishFn | None = None,
    logger: logging.Logger | None = None,
    dashboard: DashboardConfig | None = None,
) -> StepRef:
    store = store or ArtifactStore()
    inputs = dict(inputs or {})
    key = compute_key(step, version, fn, config, inputs, extra)
    if not force:
        ref = store.ref(step, key, status="cached")
        if ref is not None:
            ref.seconds = 0.0
            return ref
    t0 = time.time()
    manifest: dict[str, Any] = {
        "step": step,
        "version": str(version),
        "key": key,
        "config": config.model_dump(mode="json") if hasattr(config, "model_dump") else config,
        "inputs": {k: {"step": v.step, "key": v.key} for k, v in inputs.items()},
        "code": code_hash(fn).to_json(),
    }
    if extra is not None:
        manifest["extra"] = extra
    with store.write(step, key, manifest) as out:
        ctx = StepContext(
            step=step,
            key=key,
            config=config,
            inputs=inputs,
            store=store,
            out=out,
            extra=extra,
            force=force,
            logger=logger or log,
            on_progress=on_progress,
            on_publish=on_publish,
            code=manifest["code"]["sha256"],
            dashboard=dashboard or DashboardConfig(),
        )
        stats = fn(ctx) or {}
        manifest["stats"] = stats
        if ctx.timings:
            manifest["timings"] = ctx.timings
        manifest["seconds"] = round(time.time() - t0, 3)
    return StepRef(
        step=step,
        key=key,
        uri=store.uri(step, key),
        stats=stats,
        status="ran",
        seconds=round(time.time() - t0, 3),
    )
