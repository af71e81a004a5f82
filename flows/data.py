"""Data flow: ingest -> prepare (and the supervised task data).

The per-shard work of `prepare` runs on the task runner that the config's `runner` section names
(flows/fanout.py): threads by default, a local process pool, or a Dask cluster (prefect-dask,
the `dask` extra), the path to many machines:

    cfg.runner = RunnerConfig(kind="dask", dask={"address": "tcp://scheduler:8786"})  # a cluster
    cfg.runner = RunnerConfig(kind="dask", workers=4)                 # a local cluster of 4
    data_flow(config=cfg)

On a real cluster the workers need llmflow installed and `home` must be a path or bucket URL
that every worker can reach (artifacts move through the store, never through Dask).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.pipeline import compose
from llmflow.config import PipelineConfig


@flow(name="data", description="Ingest every source and prepare the training data.")
def data_flow(
    config: PipelineConfig = PipelineConfig(), force: bool = False, home: str | None = None
) -> dict[str, Any]:
    return compose(config, "prepare", force, home)
