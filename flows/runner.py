"""Calls step tasks in order, records what each did, and stops after the target step."""

from __future__ import annotations

import time
from typing import Any

from llmflow.store import StepRef


class StepRunner:
    """`run(task, config, **inputs)` -> StepRef, or None once past `until`.

    A step whose inputs are None (upstream was skipped) is skipped too, so a flow body can be
    written as the full diagram and still stop early.
    """

    def __init__(self, home: str | None = None, force: bool = False, until: str | None = None):
        self.home = home
        self.force = force
        self.until = until
        self.done = False
        self.refs: dict[str, StepRef] = {}

    def __call__(
        self, step_task: Any, config: Any, /, *, extra: Any = None, **inputs: StepRef | None
    ) -> StepRef | None:
        name = step_task.step_name
        if self.done or any(v is None for v in inputs.values()):
            return None
        t0 = time.time()
        state = step_task(config, inputs, home=self.home, force=self.force, extra=extra, return_state=True)
        ref: StepRef = state.result()
        status = "cached" if (state.name == "Cached" or ref.status == "cached") else "ran"
        ref = ref.model_copy(update={"status": status, "seconds": round(time.time() - t0, 2)})
        self.refs[name] = ref
        if name == self.until:
            self.done = True
        return ref

    def summary(self) -> dict[str, Any]:
        return {name: ref.model_dump(mode="json") for name, ref in self.refs.items()}
