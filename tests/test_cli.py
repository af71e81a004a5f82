"""The command line: fast help, one-line config errors with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LLMFLOW = [sys.executable, "-m", "deployments.cli"]
ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*LLMFLOW, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


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
