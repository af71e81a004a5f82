"""Data flow: ingest -> prepare (and the supervised task data).

The per-shard work of `prepare` is mapped over the flow's task runner: threads by default, or a
Dask cluster through `on_dask` (prefect-dask, the `dev` extra) — the path to many machines:

    from flows.data import data_flow, on_dask
    on_dask(data_flow, address="tcp://scheduler:8786")(config=cfg)   # an existing cluster
    on_dask(data_flow, n_workers=4)(config=cfg)                      # a local cluster
"""

from __future__ import annotations

from typing import Any

from prefect import Flow, flow

from flows.pipeline import compose
from llmflow.config import PipelineConfig


@flow(name="data", description="Ingest every source and prepare the training data.")
def data_flow(
    config: PipelineConfig = PipelineConfig(), force: bool = False, home: str | None = None
) -> dict[str, Any]:
    return compose(config, "prepare", force, home)


def on_dask(f: Flow, address: str | None = None, **cluster_kwargs: Any) -> Flow:
    """`f` unchanged except that its mapped tasks run on Dask: the cluster at `address`, or a
    `distributed.LocalCluster(**cluster_kwargs)` started for the run and closed after it.

    On a real cluster the workers need llmflow installed and `home` must be a path or bucket
    URL that every worker can reach (artifacts move through the store, never through Dask).
    """
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as e:  # an optional dependency: say how to get it
        raise ImportError("the Dask task runner needs prefect-dask: pip install 'llmflow[dev]'") from e
    runner = DaskTaskRunner(address=address) if address else DaskTaskRunner(cluster_kwargs=cluster_kwargs)
    return f.with_options(task_runner=runner)
