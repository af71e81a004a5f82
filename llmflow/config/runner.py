"""Where the data flow's per-shard tasks run: threads, processes, or a Dask cluster.

Not a step's section: no artifact depends on it (every runner gives the same artifacts), so it
is in no store key. The runner only decides where `prepare_shard` runs and how many shards are in
flight at once, which bounds memory: workers x one shard, whatever the corpus size.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from llmflow.config.base import MAX_PROCESSES, Section


class DaskConfig(Section):
    """The Dask cluster (`runner.kind: dask`): an existing scheduler, or a local cluster."""

    address: str | None = Field(
        default=None,
        description="Scheduler to join, e.g. tcp://scheduler:8786. None: a local cluster of "
        "`runner.workers` single-threaded worker processes, started for the run and closed after it.",
    )
    connect_timeout: float = Field(
        default=10, gt=0, le=600, description="Seconds to reach the scheduler before failing the run."
    )


class RunnerConfig(Section):
    """The data flow's task runner. `runner: dask` is short for `runner: {kind: dask}`."""

    kind: Literal["threads", "processes", "dask"] = Field(
        default="threads", description="threads (this process), processes (a local pool), or dask."
    )
    workers: int = Field(
        default=0,
        ge=0,
        le=MAX_PROCESSES,
        description="Shards in flight at once (threads, processes, local Dask workers); 0 = all cores, "
        "or with `dask.address` one per worker thread of the cluster.",
    )
    dask: DaskConfig = Field(default_factory=DaskConfig)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"kind": data} if isinstance(data, str) else data
