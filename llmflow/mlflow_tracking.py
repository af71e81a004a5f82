"""Pipeline runs as MLflow runs (optional: `pip install llmflow[mlflow]`).

With `tracking.mlflow_uri` or MLFLOW_TRACKING_URI set, a pipeline run is an MLflow run (params:
the resolved config; artifact: config.yaml) with one nested run per step that ran, filled from
the step's artifact once it is published:

    params     the step's config section, as its manifest records it
    metrics    its stats (numbers, dotted names), the `metrics` its stats name with their 95%
               intervals (`<name>_ci95_low`, `<name>_ci95_high`), its timings (`time.<name>`),
               and its training curve (`loss.csv`) as step metrics
    artifacts  its reports (*.md), pictures, JSON and CSV files; a step that registered a version
               (the gate): that version's model card

Cached steps get no run; the parent's `llmflow.cached` tag names them. At the end the registries
the run touched are mirrored to the MLflow model registry (llmflow/mlflow_registry.py).

Without the setting `track` yields a tracker that does nothing, and MLflow is never imported.
Tracking never fails a run: the first error (a server that is down, a refused request) is one
warning, and the run goes on untracked.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import time
import urllib.request
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml

from llmflow.config import PipelineConfig
from llmflow.store import ArtifactStore, StepRef

log = logging.getLogger("llmflow.mlflow")

ARTIFACT_SUFFIXES = (".md", ".png", ".json", ".csv")
MAX_ARTIFACT_BYTES = 20 * 2**20  # a step's small files; models go with the registry mirror
MAX_PARAM_CHARS = 6000  # MLflow's limit for a param value


def tracking_uri(config: PipelineConfig) -> str | None:
    """The config's MLflow URI, else MLFLOW_TRACKING_URI, else None (no tracking)."""
    return config.tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


class NullTracker:
    """What `track` yields when nothing is tracked."""

    def step(self, ref: StepRef) -> None:
        pass


_active: ContextVar[Any] = ContextVar("llmflow_mlflow_tracker", default=None)


@contextlib.contextmanager
def track(
    config: PipelineConfig,
    home: str | None,
    what: str,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[Any]:
    """The tracker of this pipeline run: `tracker.step(ref)` after each step. A flow that composes
    another (the feedback flow) shares one MLflow run: inside an active tracker, this yields it."""
    current = _active.get()
    if current is not None:
        yield current
        return
    uri = tracking_uri(config)
    if uri is None:
        yield NullTracker()
        return
    tracker = MlflowTracker(uri, ArtifactStore(home), logger or log)
    tracker.start(config, what, tags or {})
    token = _active.set(tracker)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        _active.reset(token)
        tracker.finish(status)


def probe(uri: str, timeout: float = 5.0) -> None:
    """Raise OSError when an http(s) tracking server does not answer its health check."""
    if uri.startswith(("http://", "https://")):
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            r.read()


def client(uri: str):
    """An MlflowClient for `uri`, set to give up quickly: a tracking server that is down must not
    hold a training run for MLflow's default minutes of retries."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # Offline by default, as for Prefect (deployments/cli_app.py): no usage telemetry.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise ImportError("MLflow tracking needs the MLflow client: pip install 'llmflow[mlflow]'") from None
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(mlflow_client: Any, name: str) -> str:
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow_client.create_experiment(name)
    except Exception:  # another process created it meanwhile
        exp = mlflow_client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class MlflowTracker:
    def __init__(self, uri: str, store: ArtifactStore, logger: logging.Logger | logging.LoggerAdapter):
        self.uri = uri
        self.store = store
        self.logger = logger
        self.client: Any = None
        self.stopped = False  # after the first error: nothing more is sent
        self.experiment = ""
        self.run_id = ""
        self.cached: list[str] = []
        self.models: set[str] = set()

    def start(self, config: PipelineConfig, what: str, tags: dict[str, str]) -> None:
        def _start() -> None:
            probe(self.uri)
            self.client = client(self.uri)
            self.experiment = experiment_id(self.client, config.tracking.mlflow_experiment)
            run = self.client.create_run(
                self.experiment,
                run_name=f"{config.name}: {what}",
                tags={"llmflow.name": config.name, "llmflow.until": what, **tags},
            )
            self.run_id = run.info.run_id
            resolved = config.model_dump(mode="json")
            self._log(self.run_id, params=flatten(resolved))
            self.client.log_text(self.run_id, yaml.safe_dump(resolved, sort_keys=False), "config.yaml")

        self._guarded("start", _start)

    def step(self, ref: StepRef) -> None:
        if "version" in ref.stats and "name" in ref.stats:  # it registered a version: mirror it at the end
            self.models.add(ref.stats["name"])
        if ref.status != "ran":
            self.cached.append(ref.step)
            return
        self._guarded(f"step {ref.step}", self._log_step, ref)

    def finish(self, status: str) -> None:
        from llmflow.mlflow_registry import mirror
        from llmflow.registry import Registry

        for name in sorted(self.models):
            self._guarded(
                f"mirroring registry {name}",
                lambda n=name: mirror(self.client, Registry(self.store, n), self.experiment, self.run_id),
            )
        self._guarded(
            "finish",
            lambda: (
                self.client.set_tag(self.run_id, "llmflow.cached", ",".join(self.cached)),
                self.client.set_terminated(self.run_id, status),
            ),
        )

    # ----------------------------------------------------------------- internals

    def _guarded(self, what: str, fn: Any, *args: Any) -> Any:
        """Run one tracking call; on the first error warn once and stop tracking this run."""
        if self.stopped:
            return None
        try:
            return fn(*args)
        except Exception as e:  # tracking is a view of the run: it never fails it
            self.stopped = True
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            self.logger.warning(
                "MLflow tracking at %s stopped (%s: %s: %s); the run goes on without it",
                self.uri,
                what,
                type(e).__name__,
                first[:300],
            )
            return None

    def _log_step(self, ref: StepRef) -> None:
        manifest = self.store.manifest(ref.step, ref.key) or {}
        folder = self.store.local_path(ref)
        end = int(time.time() * 1000)
        run = self.client.create_run(
            self.experiment,
            start_time=end - int(1000 * (ref.seconds or 0)),
            run_name=ref.step,
            tags={
                "mlflow.parentRunId": self.run_id,
                "llmflow.step": ref.step,
                "llmflow.key": ref.key,
                "llmflow.artifact": ref.uri,
            },
        )
        run_id = run.info.run_id
        curve = read_curve(folder / "loss.csv")
        in_curve = {name for _, name, _ in curve}  # a final value already on the curve stays off step 0
        metrics = {
            k: v
            for k, v in step_metrics(
                manifest.get("stats") or ref.stats, manifest.get("timings") or {}
            ).items()
            if k not in in_curve
        }
        self._log(run_id, params=flatten(manifest.get("config") or {}), metrics=metrics, curve=curve, at=end)
        for path in sorted(folder.iterdir()):
            if (
                path.is_file()
                and path.suffix in ARTIFACT_SUFFIXES
                and path.stat().st_size <= MAX_ARTIFACT_BYTES
            ):
                self.client.log_artifact(run_id, str(path))
        if "version" in ref.stats and "name" in ref.stats:
            from llmflow.registry import Registry

            card = Path(Registry(self.store, ref.stats["name"]).card_path(ref.stats["version"]))
            if card.exists():
                self.client.log_artifact(run_id, str(card), "model_card")
        self.client.set_terminated(run_id, "FINISHED", end_time=end)

    def _log(
        self,
        run_id: str,
        params: dict[str, str] | None = None,
        metrics: dict[str, float] | None = None,
        curve: list[tuple[int, str, float]] | None = None,
        at: int | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param

        at = at or int(time.time() * 1000)
        batch = [Metric(k, v, at, 0) for k, v in (metrics or {}).items()]
        batch += [Metric(k, v, at, step) for step, k, v in curve or []]
        self.client.log_batch(
            run_id, metrics=batch, params=[Param(k, v) for k, v in (params or {}).items()], synchronous=True
        )


# --------------------------------------------------------------------------- what a step logs


def _name(key: str) -> str:
    """A metric or param name MLflow takes: letters, digits, `_-. /:` (others become `_`)."""
    return "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in key)[:250]


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Config values as MLflow params: dotted keys; strings as they are, other values as JSON."""
    out: dict[str, str] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    text = tree if isinstance(tree, str) else json.dumps(tree, default=str)
    out[_name(prefix.rstrip("."))] = text[:MAX_PARAM_CHARS]
    return out


def _numbers(tree: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_numbers(v, f"{prefix}{k}."))
    elif isinstance(tree, int | float) and not isinstance(tree, bool) and math.isfinite(tree):
        out[_name(prefix.rstrip("."))] = float(tree)
    return out


def step_metrics(stats: dict[str, Any], timings: dict[str, Any]) -> dict[str, float]:
    """A step's numbers: its `metrics` under their own names with their intervals, the rest of its
    stats under dotted names, and its wall-clock timings under `time.`."""
    named = stats.get("metrics") if isinstance(stats.get("metrics"), dict) else {}
    out = _numbers(named)
    for k, ci in (stats.get("ci") or {}).items():
        if isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(x, int | float) for x in ci):
            out[_name(f"{k}_ci95_low")], out[_name(f"{k}_ci95_high")] = float(ci[0]), float(ci[1])
    out.update(_numbers({k: v for k, v in stats.items() if k not in ("metrics", "ci")}))
    out.update(_numbers(timings, "time."))
    return out


def read_curve(path: Path) -> list[tuple[int, str, float]]:
    """(step, column, value) for every number in a training curve CSV with a `step` column."""
    if not path.exists():
        return []
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                step = int(float(row["step"]))
            except (KeyError, TypeError, ValueError):
                continue
            for k, v in row.items():
                if k == "step" or v in (None, ""):
                    continue
                try:
                    x = float(v)
                except ValueError:
                    continue
                if math.isfinite(x):
                    out.append((step, _name(k), x))
    return out
