"""The data flow on a real Dask cluster: `dask scheduler` and `dask worker` started as separate
processes on 127.0.0.1, joined through `runner.dask.address`; the same train/validation/rejects as
the thread runner. An unreachable scheduler is one line (exit 2) before any work; the runner
section's forms; a bounded window of shards in flight on the thread and process runners.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import test_prepare_parallel
from test_prepare_parallel import config, outputs, shard_manifests, shard_workers

from flows.data import data_flow
from flows.fanout import map_bounded
from llmflow.config import ConfigError, InputError, RunnerConfig, load_config
from tests.livestack import BIN, free_port, stop, wait_for
from tests.prereq import skip_missing

ROOT = Path(__file__).resolve().parents[1]
under_prefect = pytest.mark.usefixtures("prefect_harness")
sources = test_prepare_parallel.sources  # the small two-source corpus of the prepare fan-out tests


def test_runner_section_forms():
    assert load_config("smoke").runner == RunnerConfig(kind="threads", workers=0)
    cfg = load_config("smoke", ["runner=dask"])
    assert cfg.runner.kind == "dask" and cfg.runner.dask.address is None
    cfg = load_config("smoke", ["runner.kind=dask", "runner.dask.address=tcp://10.0.0.5:8786"])
    assert cfg.runner.dask.address == "tcp://10.0.0.5:8786"
    with pytest.raises(ConfigError, match="invalid value for 'runner.kind'"):
        load_config("smoke", ["runner=ray"])
    with pytest.raises(ConfigError, match="unknown config key 'runner.dask.adress'"):
        load_config("smoke", ["runner.dask.adress=tcp://x:1"])


def _dask_exe() -> str:
    exe = BIN / "dask"
    if not exe.exists():
        skip_missing(f"{exe} (distributed's command)", "pip install 'llmflow[dask]'")
    return str(exe)


class _Peak:
    """Counts calls running at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = 0

    def __call__(self, i: int) -> int:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(0.2)
        with self.lock:
            self.now -= 1
        return i * i


@under_prefect
def test_window_bounds_the_shards_in_flight():
    from prefect import task
    from prefect.task_runners import ThreadPoolTaskRunner

    counter = _Peak()
    square = task(counter, name="square", persist_result=False)
    with ThreadPoolTaskRunner(max_workers=16) as tr:  # more threads than the window
        done = {i: f.result() for i, f in map_bounded(tr, square, [{"i": i} for i in range(9)], 3)}
    assert done == {i: i * i for i in range(9)}
    assert counter.peak == 3


def test_unreachable_scheduler_is_one_line_before_any_work(tmp_path):
    home = tmp_path / "home"
    port = free_port()  # nothing listens there
    r = subprocess.run(
        [sys.executable, "-m", "deployments.cli", "data", "--config", "smoke", "--home", str(home)]
        + ["--set", "runner.kind=dask", "--set", f"runner.dask.address=tcp://127.0.0.1:{port}"]
        + ["--set", "runner.dask.connect_timeout=1"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stdout + r.stderr
    assert lines[0].startswith(f"error: the Dask scheduler at runner.dask.address=tcp://127.0.0.1:{port}")
    assert "is unreachable" in lines[0]
    assert not any(p.is_file() for p in home.rglob("*"))  # nothing was ingested or written


@under_prefect
def test_the_flow_itself_refuses_an_unreachable_scheduler(tmp_path, sources):
    """Deployments run the flow without the CLI: the flow checks before its first step."""
    cfg = config(sources, ["web"])
    cfg.runner = RunnerConfig(kind="dask", dask={"address": f"tcp://127.0.0.1:{free_port()}"})
    cfg.runner.dask.connect_timeout = 1
    with pytest.raises(InputError, match="is unreachable"):
        data_flow(config=cfg, home=str(tmp_path / "home"))
    assert not (tmp_path / "home" / "ingest").exists()


@pytest.fixture
def dask_cluster(tmp_path):
    """`dask scheduler` and one `dask worker` (one process, one thread), as separate processes."""
    exe = _dask_exe()
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    logs = {n: open(tmp_path / f"{n}.log", "w") for n in ("scheduler", "worker")}  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [
                exe,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dashboard-address",
                "127.0.0.1:0",
            ],
            stdout=logs["scheduler"],
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    ]
    try:
        procs.append(
            subprocess.Popen(
                [exe, "worker", address, "--nworkers", "1", "--nthreads", "1", "--host", "127.0.0.1"]
                + ["--no-dashboard", "--local-directory", str(tmp_path / "dask-worker")],
                stdout=logs["worker"],
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp_path,
            )
        )
        import distributed

        def one_worker() -> bool:
            try:
                with distributed.Client(address, timeout=5, set_as_default=False) as c:
                    return len(c.scheduler_info()["workers"]) == 1
            except OSError:
                return False

        wait_for(one_worker, 120, "the Dask worker to join its scheduler", interval=2)
        yield address, procs
    finally:
        for p in reversed(procs):
            stop(p, timeout=30)
        for f in logs.values():
            f.close()


@pytest.mark.slow
@under_prefect
def test_data_flow_on_a_separate_dask_scheduler_equals_threads(tmp_path, sources, dask_cluster):
    address, procs = dask_cluster
    cfg = config(sources, ["web", "books"])
    threads = data_flow(config=cfg, home=str(tmp_path / "threads"))
    cfg.runner = RunnerConfig(kind="dask", dask={"address": address})
    on_dask = data_flow(config=cfg, home=str(tmp_path / "dask"))
    assert on_dask["prepare"]["status"] == "ran" and len(shard_manifests(str(tmp_path / "dask"))) == 5
    # Every shard ran in the `dask worker` process tree (its nanny's child), none in this process.
    pids = shard_workers(str(tmp_path / "dask"))
    import psutil

    worker_tree = {c.pid for c in psutil.Process(procs[1].pid).children(recursive=True)}
    assert len(pids) == 1 and pids <= worker_tree and os.getpid() not in pids
    assert {k: v["key"] for k, v in on_dask.items()} == {k: v["key"] for k, v in threads.items()}
    a, b = outputs(str(tmp_path / "threads"), threads), outputs(str(tmp_path / "dask"), on_dask)
    assert a == b and sum(r == "dedup" for r, _ in b.values()) == 3
    for k in ("input", "kept", "rejected", "train_docs", "validation_docs", "rejects_by_reason"):
        assert threads["prepare"]["stats"][k] == on_dask["prepare"]["stats"][k], k


@pytest.mark.slow
@under_prefect
def test_process_runner_equals_threads(tmp_path, sources):
    cfg = config(sources, ["web", "books"])
    threads = data_flow(config=cfg, home=str(tmp_path / "threads"))
    cfg.runner = RunnerConfig(kind="processes", workers=2)
    procs = data_flow(config=cfg, home=str(tmp_path / "procs"))
    pids = shard_workers(str(tmp_path / "procs"))
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids  # the pool's processes did the work
    assert {k: v["key"] for k, v in procs.items()} == {k: v["key"] for k, v in threads.items()}
    assert outputs(str(tmp_path / "threads"), threads) == outputs(str(tmp_path / "procs"), procs)


def test_deployments_carry_the_runner_in_their_config():
    """`llmflow server` / `llmflow deploy` pass the config as the flows' parameter; the flow reads
    `config.runner` at run time, so a worker loading the flow from its module honours it."""
    from deployments.serve import build_deployments
    from llmflow.config import PipelineConfig

    cfg = load_config("smoke", ["runner.kind=dask", "runner.dask.address=tcp://10.0.0.5:8786"])
    deps = {d.name: d for d in build_deployments(cfg)}
    assert deps["data-refresh"].entrypoint == "flows.data.data_flow"
    for name in ("data-refresh", "pipeline", "retrain"):
        assert PipelineConfig.model_validate(deps[name].parameters["config"]).runner == cfg.runner
    from prefect.utilities.callables import parameter_schema

    from flows.data import data_flow

    schema = json.dumps(parameter_schema(data_flow.fn).model_dump())  # what the deployment registers
    assert "RunnerConfig" in schema and "DaskConfig" in schema  # typed in the UI's form
