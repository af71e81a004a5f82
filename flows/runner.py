"""Calls step tasks in order, records what each did, and stops after the target step."""

from __future__ import annotations

import time
from typing import Any

from flows.fanout import map_bounded, task_runner, window
from llmflow.config import DashboardConfig, RunnerConfig
from llmflow.store import StepRef


class StepRunner:
    """`run(task, config, **inputs)` -> StepRef, or None once past `until`.

    A step whose inputs are None (upstream was skipped) is skipped too, so a flow body can be
    written as the full diagram and still stop early. Each step's ref goes to `tracker.step`
    (llmflow/mlflow_tracking.py) once it is done. `dashboard` (what training steps show while
    they run) goes to every step outside its key.
    """

    def __init__(
        self,
        home: str | None = None,
        force: bool = False,
        until: str | None = None,
        tracker: Any = None,
        dashboard: DashboardConfig | None = None,
        runner: RunnerConfig | None = None,
    ):
        self.home = home
        self.force = force
        self.dashboard = dashboard
        self.until = until
        self.tracker = tracker
        self.runner = runner or RunnerConfig()
        self.done = False
        self.refs: dict[str, StepRef] = {}
        self.mapped: dict[str, list[StepRef]] = {}

    def __call__(
        self, step_task: Any, config: Any, /, *, extra: Any = None, **inputs: StepRef | None
    ) -> StepRef | None:
        name = step_task.step_name
        if self.done or any(v is None for v in inputs.values()):
            return None
        t0 = time.time()
        state = step_task(
            config, inputs, home=self.home, force=self.force, extra=extra, dashboard=self.dashboard,
            return_state=True,
        )  # fmt: skip
        ref: StepRef = state.result()
        status = "cached" if (state.name == "Cached" or ref.status == "cached") else "ran"
        ref = ref.model_copy(update={"status": status, "seconds": round(time.time() - t0, 2)})
        self.refs[name] = ref
        if self.tracker is not None:
            self.tracker.step(ref)
        if name == self.until:
            self.done = True
        return ref

    def map(
        self, step_task: Any, config: Any, inputs: list[dict[str, StepRef]], extras: list[Any] | None = None
    ) -> list[StepRef] | None:
        """Run one step over many input sets on the task runner that `runner` names (threads,
        processes or a Dask cluster: flows/fanout.py), a bounded window of them at a time.

        Returns the refs in input order (recorded under `mapped`, not in `summary`), or None when
        skipping, like `__call__`.
        """
        if self.done or any(v is None for i in inputs for v in i.values()):
            return None
        extras = extras if extras is not None else [None] * len(inputs)
        params = [
            {
                "config": config,
                "inputs": i,
                "home": self.home,
                "force": self.force,
                "extra": e,
                "dashboard": self.dashboard,
            }
            for i, e in zip(inputs, extras, strict=True)
        ]
        refs: list[StepRef | None] = [None] * len(inputs)
        with task_runner(self.runner) as tr:
            for i, future in map_bounded(tr, step_task, params, window(self.runner, tr)):
                ref: StepRef = future.result()
                status = "cached" if (future.state.name == "Cached" or ref.status == "cached") else "ran"
                refs[i] = ref.model_copy(update={"status": status})
        done = [r for r in refs if r is not None]
        self.mapped[step_task.step_name] = done
        return done

    def summary(self) -> dict[str, Any]:
        return {name: ref.model_dump(mode="json") for name, ref in self.refs.items()}
