"""Test isolation: a temporary PREFECT_HOME and LLMFLOW_HOME for the whole session.

Prefect reads PREFECT_HOME at import, so it is set here, before any test module imports Prefect.
Flow tests use the session-wide `prefect_harness` fixture (one temporary Prefect server).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="llmflow-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_DIR / "prefect")
os.environ["LLMFLOW_HOME"] = str(_SESSION_DIR / "llmflow")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=600):  # a loaded machine starts it slowly
        yield


@pytest.fixture
def store(tmp_path):
    from llmflow.store import ArtifactStore

    return ArtifactStore(tmp_path / "home")


@pytest.fixture
def one_thread():
    """Tiny models run far faster on one torch thread on a shared, busy CPU (no oversubscription)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory):
    """A small real tokenizer directory (tests/helpers.py), built once per session."""
    from tests.helpers import tiny_tokenizer_dir

    return tiny_tokenizer_dir(tmp_path_factory.mktemp("tok") / "tok")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Name every test skipped for a missing prerequisite and how to enable it (tests/prereq.py)."""
    from tests.prereq import summary_lines

    lines = summary_lines(terminalreporter.stats.get("skipped", []))
    if lines:
        terminalreporter.section("skipped for missing prerequisites", sep="-", yellow=True)
        for line in lines:
            terminalreporter.write_line(line)
