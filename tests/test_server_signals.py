"""`llmflow server` leaves no process behind, whatever the moment it is stopped and however.

Each cycle starts a real `llmflow server` (smoke preset, its own PREFECT_HOME and port), signals
it at one moment of its life, and checks (`LlmflowServer.assert_nothing_left`) that no live
process of its session or of its Prefect server's remains and that the port is free. The helpers
of deployments/processes.py are tested first on tiny `sleep` processes. Linux: reads /proc.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from deployments.processes import (
    die_with_parent,
    group_alive,
    port_free,
    signals_held,
    stop_group,
)
from tests.livestack import LlmflowServer, api, missing_prerequisite, process_table, run_deployment, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def alive(pid: int) -> bool:
    p = process_table().get(pid)
    return p is not None and p["state"] not in "ZX"


# --------------------------------------------------------------------------- the helpers


def test_a_signal_during_the_spawn_is_delivered_after_it():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))
    try:
        with signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_stop_group_kills_a_group_that_ignores_sigterm():
    proc = subprocess.Popen(
        ["bash", "-c", "trap '' TERM; sleep 60 & sleep 60 & wait"], start_new_session=True
    )
    time.sleep(0.3)
    members = [pid for pid, p in process_table().items() if p["pgrp"] == proc.pid]
    assert len(members) == 3
    assert stop_group(proc, timeout=1.0) is False  # SIGTERM was not enough
    assert proc.returncode is not None and not group_alive(proc.pid)
    assert not any(alive(pid) for pid in members)


def test_a_child_dies_with_its_killed_parent():
    code = (
        "import subprocess, sys, time\n"
        "from deployments.processes import die_with_parent\n"
        "p = subprocess.Popen(['sleep', '60'], preexec_fn=die_with_parent(), start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    assert die_with_parent() is not None
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert alive(child)
        parent.kill()  # SIGKILL: the parent runs no clean-up
        parent.wait(10)
        wait_for(lambda: not alive(child), 5, "the child to die with its parent", interval=0.1)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_stop_descendants_ends_children_and_grandchildren():
    code = (
        "import subprocess, time\n"
        "from deployments.processes import descendants, stop_descendants\n"
        "subprocess.Popen(['bash', '-c', 'sleep 60 & sleep 60 & wait'])\n"
        "time.sleep(0.3)\n"
        "print(*descendants(), '|', *stop_descendants(timeout=2))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    before, stopped = (sorted(map(int, part.split())) for part in out.stdout.split("|"))
    assert len(before) == 3 and stopped == before  # bash and its two sleeps
    assert not any(alive(pid) for pid in before)


def test_port_free_sees_a_listener():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not port_free("127.0.0.1", port)
    assert port_free("127.0.0.1", port)


# --------------------------------------------------------------------------- llmflow server


def _prefect_child(srv: LlmflowServer) -> int | None:
    return next(
        (
            pid
            for pid, p in process_table().items()
            if p["ppid"] == srv.proc.pid and "server start" in p["cmd"]
        ),
        None,
    )


def _healthy(srv: LlmflowServer) -> bool:
    from deployments.localserver import healthy

    return healthy(srv.api_url, timeout=1.0)


@pytest.fixture
def server(tmp_path):
    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
    srv = LlmflowServer(tmp_path, str(tmp_path / "home"))
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:  # the test failed before its signal
        srv.stop(signal.SIGKILL)


def _stopped(srv: LlmflowServer, sig: int) -> int:
    """Send `sig`, wait for `llmflow server` to exit, check nothing is left; its exit code."""
    srv.note_sessions()
    t0 = time.monotonic()
    srv.stop(sig)
    print(f"{signal.Signals(sig).name}: stopped in {time.monotonic() - t0:.1f}s")
    return srv.proc.returncode


@pytest.mark.slow
def test_a_signal_right_after_the_prefect_server_is_spawned(server):
    server.spawn()
    wait_for(
        lambda: _prefect_child(server), 60, "the Prefect server process", interval=0.02, proc=server.proc
    )
    assert _stopped(server, signal.SIGTERM) == 0


@pytest.mark.slow
def test_ctrl_c_while_the_prefect_server_starts(server):
    # started as a background job (SIGINT inherited ignored): `kill -INT` must still stop it
    server.spawn(sigint_ignored=True)
    wait_for(
        lambda: _prefect_child(server), 60, "the Prefect server process", interval=0.05, proc=server.proc
    )
    time.sleep(2)
    assert not _healthy(server), "the server came up too fast to test its start-up"
    assert _stopped(server, signal.SIGINT) == 0


@pytest.mark.slow
def test_sigterm_while_serving(server):
    server.start()
    assert _stopped(server, signal.SIGTERM) == 0
    assert "Stopping the Prefect server" in server.log.read_text()


@pytest.mark.slow
def test_sigkill_takes_the_prefect_server_down_too(server):
    server.start()
    assert _stopped(server, signal.SIGKILL) == -signal.SIGKILL


@pytest.mark.slow
def test_ctrl_c_during_a_flow_run_cancels_it(server):
    server.start()
    run = run_deployment(server.api_url, "pipeline/pipeline")

    def running():
        with api(server.api_url) as c:
            state = c.read_flow_run(run.id).state
        return state is not None and state.is_running()

    wait_for(running, 120, "the pipeline run to be running", 0.5, server.proc, server.log)
    assert _stopped(server, signal.SIGINT) == 0
    db = server.prefect_home / "prefect.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        [(state,)] = conn.execute("SELECT state_type FROM flow_run WHERE name = ?", (run.name,)).fetchall()
    assert state == "CANCELLED"  # not left RUNNING forever
