"""The command line: fast help; every expected failure is one line: exit code 2 for a bad config
or input, 1 for a failing environment, 3 for a failed gate."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

LLMFLOW = [sys.executable, "-m", "deployments.cli"]
ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LLMFLOW, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def _one_error_line(res: subprocess.CompletedProcess, code: int, message: str) -> None:
    """Exit `code`, no traceback, and exactly one `error:` line, which says `message`."""
    out = res.stderr + res.stdout
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == code, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert len(errors) == 1 and message in errors[0], errors


def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys, deployments.cli; "
        "heavy = [m for m in ('torch', 'prefect', 'transformers', 'datasets') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
    res = _run("--help")
    assert res.returncode == 0
    for verb in (
        "run",
        "data",
        "tokenizer",
        "pretrain",
        "finetune",
        "evaluate",
        "gate",
        "generate",
        "models",
    ):
        assert verb in res.stdout


@pytest.mark.parametrize("verb", ["run", "data", "tokenizer", "pretrain", "finetune", "evaluate", "gate"])
def test_each_verb_has_help(verb):
    res = _run(verb, "--help")
    assert res.returncode == 0 and "--set" in res.stdout and "--force" in res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "pretrain.max_stepz=3"], "unknown config key 'pretrain.max_stepz'"),
        (["--set", "pretrain.lr=fast"], "invalid value for 'pretrain.lr'"),
        (["--config", "no-such-preset"], "unknown preset 'no-such-preset'"),
        (["--config", "configs"], "is a folder: name a YAML file or a preset"),
        (["--config", sys.executable], "not a YAML file"),
        (["--set", "pretrain.max_steps=100000000000000000000000"], "less than or equal to 10000000"),
    ],
)
def test_bad_config_is_one_line_exit_2(args, message):
    res = _run("run", *args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert len(res.stderr.strip().splitlines()) == 1


def test_config_show_resolves_overrides():
    res = _run("config", "--config", "smoke", "--set", "pretrain.max_steps=3")
    assert res.returncode == 0
    assert '"max_steps": 3' in res.stdout


def test_models_list_empty_registry(tmp_path):
    res = _run("models", "list", "--home", str(tmp_path))
    assert res.returncode == 0
    assert "No registered versions" in res.stdout


@pytest.mark.slow
def test_run_exits_3_with_the_reasons_when_the_gate_fails_and_0_when_it_passes(tmp_path):
    home = str(tmp_path / "home")
    r = _run("run", "--config", "smoke", "--home", home, timeout=600)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "gate failed: smoke v1 was not promoted" in r.stderr
    assert "does not beat name_words" in r.stderr and "decision.json" in r.stderr
    assert "│ gate" in r.stdout  # the step table is still printed
    assert "Exit code 3 when the gate" in " ".join(_run("run", "--help").stdout.split())
    # a gate the tiny model can pass (a bound on bits per byte alone) promotes it and exits 0
    sets = ["gate.beat_base=false", "gate.beat_baselines=[]", "gate.beat_unigram_bpb=false"]
    sets.append("gate.value_thresholds=[{metric: val_bpb, max: 100}]")
    r = _run(
        "run", "--config", "smoke", "--home", home, *[a for s in sets for a in ("--set", s)], timeout=600
    )
    assert r.returncode == 0, r.stderr[-2000:]
    from llmflow.registry import Registry
    from llmflow.store import ArtifactStore

    assert Registry(ArtifactStore(home), "smoke").champion()["version"] == 1  # the same fine-tune


def test_server_refuses_another_address_without_a_login():
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_API_AUTH_STRING"}
    r = subprocess.run(
        [*LLMFLOW, "server", "--host", "0.0.0.0", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: refusing to serve the Prefect API on 0.0.0.0 without a login: set "
        "PREFECT_SERVER_API_AUTH_STRING=user:password (clients then set PREFECT_API_AUTH_STRING), or bind "
        "127.0.0.1"
    ]


def test_an_unusable_workspace_is_one_line_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res = _run("data", "--config", "smoke", "--home", str(blocker / "home"))
    _one_error_line(res, 2, f"the workspace {blocker / 'home'} is not a writable folder")
    res = _run(
        "data",
        "--config",
        "smoke",
        "--home",
        str(tmp_path / "home"),
        env={"PREFECT_HOME": str(blocker / "p")},
    )
    _one_error_line(res, 2, "PREFECT_HOME")
    assert "Starting temporary server" not in res.stderr


def test_a_prefect_server_that_does_not_start_is_one_line_exit_1(tmp_path):
    env = {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "0"}
    res = _run("data", "--config", "smoke", "--home", str(tmp_path / "home"), env=env)
    _one_error_line(res, 1, "the temporary Prefect server did not start")
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in res.stderr


def test_a_port_in_use_is_one_line_exit_1(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        for verb in ("serve", "server"):
            res = _run(verb, "--port", port, "--home", str(tmp_path / "home"))
            _one_error_line(res, 1, f"port {port} on 127.0.0.1 is already in use")


@pytest.mark.slow
def test_a_missing_source_is_one_line_exit_2_and_not_retried(tmp_path):
    """Under a PREFECT_HOME whose parent does not exist yet (it is created)."""
    env = {"PREFECT_HOME": str(tmp_path / "new" / "prefect")}
    source = "ingest.sources=[{name: notes, kind: text, path: " + str(tmp_path / "nope") + "}]"
    res = _run(
        "data", "--config", "smoke", "--home", str(tmp_path / "home"), "--set", source, env=env, timeout=300
    )
    _one_error_line(res, 2, f"source 'notes': no such file, folder or glob: {tmp_path / 'nope'}")
    assert "Retry" not in res.stderr


def test_expected_failures_are_one_line_and_the_rest_a_traceback(tmp_path):
    from deployments.cli import expected_failure
    from llmflow.config import InputError

    assert expected_failure(InputError("source 'a': fix its path"), "h") == ("source 'a': fix its path", 2)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "shard.parquet"))
    message, code = expected_failure(full, str(tmp_path))
    assert code == 1 and message.startswith(f"no space left on device writing {tmp_path / 'shard.parquet'}")
    torch_full = RuntimeError(
        "[enforce fail at inline_container.cc:603] . unexpected pos; No space left on device"
    )
    assert expected_failure(torch_full, str(tmp_path))[1] == 1
    assert expected_failure(ValueError("a bug"), "h") is None
    assert expected_failure(OSError(errno.EACCES, "Permission denied"), "h") is None


def test_prefect_console_logs_no_traceback_for_an_expected_failure():
    import logging

    from deployments.cli import _OneLineFailures
    from llmflow.config import InputError

    def record(exc: Exception) -> logging.LogRecord:
        try:
            raise exc
        except Exception:
            return logging.LogRecord(
                "prefect.task_runs", logging.ERROR, "f", 1, "failed", None, sys.exc_info()
            )

    quiet, loud = record(InputError("source 'a': fix its path")), record(ValueError("a bug"))
    assert _OneLineFailures("h").filter(quiet) and quiet.exc_info is None
    assert _OneLineFailures("h").filter(loud) and loud.exc_info is not None


@pytest.mark.slow
def test_a_terminated_run_stops_its_temporary_prefect_server(tmp_path):
    """SIGTERM (a scheduler, `kill`) ends `llmflow run` like Ctrl-C: the temporary Prefect server it
    started is stopped, not left running."""
    import signal
    import time

    psutil = pytest.importorskip("psutil")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.Popen(
        [*LLMFLOW, "run", "--config", "smoke", "--home", str(tmp_path / "home")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, servers = time.time() + 180, []
        while not servers and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            kids = psutil.Process(proc.pid).children(recursive=True)
            servers = [k for k in kids if "uvicorn" in " ".join(k.cmdline())]
        assert servers, "the temporary Prefect server never started"
        time.sleep(3)  # into the flow run
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        gone, alive = psutil.wait_procs(servers, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
