"""Real processes on loopback for the integration and browser tests.

`llmflow_server(...)` runs `llmflow server` (a Prefect server plus the served deployments) as a
child process with its own PREFECT_HOME, waits until the deployments are registered, stops it
with Ctrl-C (SIGINT) as a person would, and fails if a process of it outlives the stop (Linux,
/proc). `api(url)` is a synchronous Prefect client for that
server; `wait_run` polls a flow run to a final state. Everything is bounded in time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The smoke preset with a short DPO, and a gate that tests the loop's mechanics rather than model
# quality: the smoke models are far too small to beat the task's baselines (tests/test_gate_rejects.py
# shows the real gate rejecting them), so here any model under a bits-per-byte bound passes and a
# feedback retrain becomes the champion.
SMOKE_SETS = [
    "gate.beat_base=false",
    "gate.beat_baselines=[]",
    "gate.beat_unigram_bpb=false",
    "gate.value_thresholds=[{metric: val_bpb, max: 100}]",
    "gate.change_thresholds=[]",
    "finetune.dpo.steps=4",
    "finetune.dpo.batch_size=4",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_prerequisite() -> str | None:
    for exe in ("prefect", "llmflow"):
        if not (BIN / exe).exists():
            return f"{BIN / exe} is not installed (pip install -e .)"
    return None


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_RUNNER_POLL_FREQUENCY="2",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_LOGGING_LEVEL="INFO",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def api(url: str) -> Iterator[Any]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        yield client


def wait_for(predicate, timeout: float, what: str, interval: float = 1.0, proc=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}\n{tail(log)}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail(log)}")


def tail(path: Path | None, n: int = 60) -> str:
    if path is None or not Path(path).exists():
        return ""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])


def wait_run(api_url: str, run_id: Any, timeout: float, log: Path | None = None) -> Any:
    """The flow run once it is final (Completed, Failed, Crashed, Cancelled)."""

    def final():
        with api(api_url) as c:
            run = c.read_flow_run(run_id)
        return run if run.state is not None and run.state.is_final() else None

    return wait_for(final, timeout, f"flow run {run_id} to finish", interval=2.0, log=log)


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 30.0) -> None:
    """Signal the process (Ctrl-C by default), then its whole process group if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def process_table() -> dict[int, dict[str, Any]]:
    """pid -> state, ppid, pgrp (process group), sid (session) and cmd, from /proc (Linux)."""
    out = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        out[int(entry.name)] = {
            "state": fields[0],
            "ppid": int(fields[1]),
            "pgrp": int(fields[2]),
            "sid": int(fields[3]),
            "cmd": cmd.strip(),
        }
    return out


class LlmflowServer:
    """`llmflow server` as a child process: url, api_url, log, proc.

    `stop()` checks that it left nothing behind: no live process of its session or of the
    sessions of the processes it started (the Prefect server runs in its own), none serving its
    port, and the port free. A leftover is killed, then reported as a failure.
    """

    def __init__(self, workdir: Path, home: str, sets: list[str] | None = None, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.url}/api"
        self.prefect_home = workdir / "prefect"
        self.prefect_home.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "llmflow-server.log"
        cmd = [str(BIN / "llmflow"), "server", "--port", str(self.port), "--config", "smoke", "--home", home]
        for s in SMOKE_SETS + (sets or []):
            cmd += ["--set", s]
        self.cmd = cmd
        self.env = child_env(PREFECT_HOME=str(self.prefect_home), LLMFLOW_HOME=home, **(env or {}))
        self.proc: subprocess.Popen | None = None
        self.sessions: set[int] = set()

    def spawn(self, sigint_ignored: bool = False) -> subprocess.Popen:
        """`sigint_ignored`: start it the way a shell starts a background job (`cmd &`), with
        SIGINT ignored, which Python keeps unless the program sets a handler itself."""
        ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=ignore,
            )
        self.sessions.add(self.proc.pid)
        return self.proc

    def start(self, timeout: float = 180.0) -> LlmflowServer:
        self.spawn()

        def ready():
            try:
                with api(self.api_url) as c:
                    return len(c.read_deployments()) >= 5
            except Exception:
                return False

        wait_for(ready, timeout, "llmflow server to serve its deployments", 1.0, self.proc, self.log)
        self.note_sessions()
        return self

    def note_sessions(self) -> set[int]:
        """Remember the sessions of the processes below `llmflow server` now."""
        table, todo = process_table(), [self.proc.pid]
        while todo:
            parent = todo.pop()
            for pid, p in table.items():
                if p["ppid"] == parent:
                    self.sessions.add(p["sid"])
                    todo.append(pid)
        return self.sessions

    def leftovers(self) -> dict[int, dict[str, Any]]:
        """Live processes of its sessions, or serving its port (zombies are gone already)."""
        port = f"--port {self.port}"
        return {
            pid: p
            for pid, p in process_table().items()
            if p["state"] not in "ZX"
            and (p["sid"] in self.sessions or ("prefect" in p["cmd"] and port in p["cmd"]))
        }

    def stop(self, sig: int = signal.SIGINT, timeout: float = 90.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.note_sessions()
        stop(self.proc, sig, timeout)
        self.assert_nothing_left()

    def assert_nothing_left(self, timeout: float = 15.0) -> None:
        """Wait up to `timeout` for its processes to go and its port to be free; kill and fail if not."""
        from deployments.processes import port_free

        deadline = time.monotonic() + timeout
        while (left := self.leftovers()) or not port_free("127.0.0.1", self.port):
            if time.monotonic() > deadline:
                for pid in left:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                raise AssertionError(
                    f"llmflow server left {left or 'its port taken'} (killed now)\n{tail(self.log)}"
                )
            time.sleep(0.2)


def run_deployment(api_url: str, name: str, parameters: dict | None = None) -> Any:
    with api(api_url) as c:
        dep = c.read_deployment_by_name(name)
        return c.create_flow_run_from_deployment(dep.id, parameters=parameters or {})


def task_states(api_url: str, run_id: Any) -> dict[str, list[str]]:
    """Task name -> the state names of its runs in this flow run."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with api(api_url) as c:
        runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    out: dict[str, list[str]] = {}
    for r in sorted(runs, key=lambda r: r.expected_start_time or r.created):
        out.setdefault(r.name.rsplit("-", 1)[0], []).append(r.state.name if r.state else "?")
    return out


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def drain_prefect_workers(timeout: float = 30.0) -> None:
    """Flush and stop this process's Prefect log and event workers.

    Call it while a live server that in-process flows talked to is still up: the workers are
    bound to that server's API, and the session's test harness drains every worker at exit —
    a worker still holding items for a server that has gone retries until the suite times out.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout)
    EventsWorker.drain_all(timeout=timeout)


@contextlib.contextmanager
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A webhook on 127.0.0.1: (its URL, the JSON bodies POSTed to it, in order)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/hook", received
    finally:
        httpd.shutdown()
        httpd.server_close()


def wait_model_loaded(url: str, proc: subprocess.Popen, why, timeout: float = 90.0) -> None:
    """Poll a starting service's /health until its model is loaded; `why()` explains an exit."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, why()
        try:
            if httpx.get(f"{url}/health", timeout=2).json()["model_loaded"]:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the service did not come up within {timeout:.0f} s"
        time.sleep(0.3)


@contextlib.contextmanager
def mlflow_server(workdir: Path, timeout: float = 240.0) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with a SQLite backend and served artifacts under `workdir`;
    yields its URL once /health answers, then stops its process group (SIGTERM, then SIGKILL) and
    fails if a process of it is left. Its job runner (GenAI scorers, 8 processes) stays off."""
    import urllib.request

    port = free_port()
    log = workdir / "mlflow-server.log"
    cmd = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination", str(workdir / "mlflow-artifacts"),
    ]  # fmt: skip
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=child_env(MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"), stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, timeout, "mlflow server to answer /health", 1.0, proc, log)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

        def group() -> list[int]:
            return [pid for pid, p in process_table().items() if p["pgrp"] == proc.pid and p["state"] != "Z"]

        with contextlib.suppress(AssertionError):
            wait_for(lambda: proc.poll() is not None and not group(), 30, "mlflow server to stop", 0.5)
        left = group()
        if left:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert not left, f"mlflow server processes outlived SIGTERM: {left}\n{tail(log)}"
