"""Calls step tasks in order, records what each did, and stops after the target step."""

from __future__ import annotations

import time
from typing import Any

from prefect import unmapped

from llmflow.config import DashboardConfig
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
    ):
        self.home = home
        self.force = force
        self.dashboard = dashboard
        self.until = until
        self.tracker = tracker
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
        """Run one step over many input sets through Prefect task mapping, so they run in parallel
        on the flow's task runner (threads by default, a Dask cluster when the flow asks for one).

        Returns the refs in input order (recorded under `mapped`, not in `summary`), or None when
        skipping, like `__call__`.
        """
        if self.done or any(v is None for i in inputs for v in i.values()):
            return None
        futures = step_task.map(
            config=unmapped(config),
            inputs=inputs,
            home=unmapped(self.home),
            force=unmapped(self.force),
            extra=extras if extras is not None else unmapped(None),
            dashboard=unmapped(self.dashboard),
        )
        refs = []
        for future in futures:
            ref: StepRef = future.result()
            status = "cached" if (future.state.name == "Cached" or ref.status == "cached") else "ran"
            refs.append(ref.model_copy(update={"status": status}))
        self.mapped[step_task.step_name] = refs
        return refs

    def summary(self) -> dict[str, Any]:
        return {name: ref.model_dump(mode="json") for name, ref in self.refs.items()}
