"""The data flow's fan-out: the task runner that `runner` names, and a bounded window of shards.

    runner: threads     Prefect's ThreadPoolTaskRunner, in this process (the default)
    runner: processes   Prefect's ProcessPoolTaskRunner, a pool of local processes
    runner: dask        prefect-dask's DaskTaskRunner: the scheduler at `runner.dask.address`,
                        or a local cluster of `runner.workers` single-threaded worker processes

Whatever the runner, at most `window` shards are in flight: the next one is submitted when one
finishes, and a task returns a `StepRef` (its artifact is in the store), never the data. So the
memory of a run is bounded by workers x one shard, however many shards the corpus has; mapping
every shard at once (Prefect's `Task.map`) on a pool of unbounded threads grew with the corpus.
The runner is chosen from the config at run time, so the CLI, `llmflow server`'s deployments and
a Prefect worker all honour it (a deployment's flow is loaded from its module, so a runner set on
the flow object would be lost there).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from typing import Any

from llmflow.config import InputError, RunnerConfig

DASK_EXTRA = "pip install 'llmflow[dask]'"


def _dask_modules() -> Any:
    """`distributed`, once prefect-dask is known to be installed (not imported: it imports Prefect)."""
    if importlib.util.find_spec("prefect_dask") is None:
        raise InputError(f"runner.kind: dask needs prefect-dask and distributed: {DASK_EXTRA}")
    try:
        import distributed
    except ImportError:
        raise InputError(f"runner.kind: dask needs prefect-dask and distributed: {DASK_EXTRA}") from None
    return distributed


def check_runner(cfg: RunnerConfig) -> None:
    """Raise InputError (one line) when the runner cannot start: prefect-dask missing, or no Dask
    scheduler answering at `runner.dask.address` within `runner.dask.connect_timeout`. Called
    before the first step, so an unreachable cluster fails the run before any work."""
    if cfg.kind != "dask":
        return
    distributed = _dask_modules()
    address = cfg.dask.address
    if not address:
        return
    try:
        client = distributed.Client(address, timeout=cfg.dask.connect_timeout, set_as_default=False)
    except Exception as e:  # OSError on a timeout or a refused port, ValueError on a bad address
        reason = str(e).split("\n")[0] if isinstance(e, OSError | ValueError) else ""
        reason = reason or f"no answer within {cfg.dask.connect_timeout:g} s"
        raise InputError(
            f"the Dask scheduler at runner.dask.address={address} is unreachable ({reason}): start it "
            "(`dask scheduler`), fix the address, or set runner.kind to threads or processes"
        ) from None
    client.close()


def task_runner(cfg: RunnerConfig) -> Any:
    """A new, not yet started, Prefect task runner for `cfg`."""
    workers = cfg.workers or os.cpu_count() or 1
    if cfg.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if cfg.kind == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    _dask_modules()
    from prefect_dask import DaskTaskRunner

    if cfg.dask.address:
        return DaskTaskRunner(address=cfg.dask.address, client_kwargs={"timeout": cfg.dask.connect_timeout})
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",  # safe default: the scheduler and dashboard answer this machine only
            "dashboard_address": "127.0.0.1:0",
        }
    )


def window(cfg: RunnerConfig, runner: Any) -> int:
    """How many shards may be in flight on the started `runner`: `runner.workers`, else all cores,
    or for a Dask cluster joined by address, one per worker thread it has now."""
    if cfg.workers:
        return cfg.workers
    if cfg.kind == "dask" and cfg.dask.address:
        return max(1, sum(runner.client.nthreads().values()))
    return os.cpu_count() or 1


def map_bounded(
    runner: Any, task: Any, parameters: list[dict[str, Any]], limit: int
) -> Iterator[tuple[int, Any]]:
    """Submit `task(**parameters[i])` on the started `runner`, at most `limit` in flight; yield
    (i, finished future) as each finishes. A failed task raises from `future.result()` in the
    caller, which then stops submitting."""
    from prefect.futures import as_completed

    pending = iter(enumerate(parameters))
    inflight: dict[Any, int] = {}

    def submit_next() -> None:
        nxt = next(pending, None)
        if nxt is not None:
            inflight[runner.submit(task, nxt[1])] = nxt[0]

    for _ in range(max(1, limit)):
        submit_next()
    while inflight:
        future = next(as_completed(list(inflight)))
        i = inflight.pop(future)
        yield i, future
        submit_next()
