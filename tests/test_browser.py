"""The Prefect UI in a real browser: headless Chromium (Debian's `chromium` package) opens the UI
that `llmflow server` serves on a non-default port, finds the completed pipeline run on the runs
page and the step reports on its artifacts page, and saves screenshots.

Driven by Playwright (no browser download: it launches /usr/bin/chromium); without Playwright,
by Chromium's own `--dump-dom` / `--screenshot` mode. The pipeline's steps are cache hits when
the integration tests ran first (same LLMFLOW_HOME), so this costs a server start and a run.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.livestack import (
    SMOKE_SETS,
    LlmflowServer,
    api,
    chromium,
    missing_prerequisite,
    run_deployment,
    tail,
    wait_run,
)
from tests.prereq import skip_missing

pytestmark = pytest.mark.slow
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SHOTS = Path(os.environ.get("LLMFLOW_SCREENSHOTS") or tempfile.mkdtemp(prefix="llmflow-screenshots-"))


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    reason = missing_prerequisite()
    if reason:
        skip_missing("the llmflow and prefect commands", reason)
    if not chromium():
        skip_missing("Chromium", "apt-get install chromium")
    srv = LlmflowServer(tmp_path_factory.mktemp("ui"), os.environ["LLMFLOW_HOME"]).start()
    try:
        # A changed parameter, as a person would try: fine-tuning and what follows it run again
        # (and publish their reports), everything upstream is cached.
        from llmflow.config import load_config

        cfg = load_config("smoke", SMOKE_SETS + ["finetune.max_steps=5"]).model_dump(mode="json")
        run = run_deployment(srv.api_url, "pipeline/pipeline", {"config": cfg})
        final = wait_run(srv.api_url, run.id, timeout=300, log=srv.log)
        assert final.state.is_completed(), f"{final.state}\n{tail(srv.log)}"
        yield srv, final
    finally:
        srv.stop()


def _browser(p):
    return p.chromium.launch(executable_path=chromium(), headless=True, args=FLAGS[1:])


def test_runs_and_artifacts_pages_show_the_completed_pipeline(ui):
    srv, run = ui
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return _chromium_cli(srv, run)
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        calls: list[str] = []
        page.on("request", lambda r: calls.append(r.url) if "/api/" in r.url else None)
        t0 = time.time()
        page.goto(f"{srv.url}/runs", wait_until="domcontentloaded")
        page.get_by_text(run.name).first.wait_for(timeout=60_000)
        page.screenshot(path=str(SHOTS / "runs.png"))
        # the UI called the API of *this* server, not the default 127.0.0.1:4200
        assert calls and all(u.startswith(srv.api_url) for u in calls), calls[:5]
        assert page.get_by_text("Completed").first.is_visible()

        page.goto(f"{srv.url}/runs/flow-run/{run.id}", wait_until="domcontentloaded")
        page.get_by_text("pretrain").first.wait_for(timeout=60_000)  # the task runs, in the logs
        page.wait_for_timeout(1000)
        page.screenshot(path=str(SHOTS / "flow-run.png"))
        page.get_by_text("Artifacts", exact=True).first.click()
        for key in ("finetune-report", "evaluate-", "gate-decision"):
            page.get_by_text(key).first.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(SHOTS / "artifacts.png"), full_page=True)

        with api(srv.api_url) as c:  # the gate's report, rendered
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

            [art] = c.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gate-decision"]))
            )[:1]
        page.goto(f"{srv.url}/artifacts/artifact/{art.id}", wait_until="domcontentloaded")
        page.get_by_text("PASSED").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(SHOTS / "gate-report.png"), full_page=True)
        browser.close()
    print(f"browser: {time.time() - t0:.1f}s, screenshots in {SHOTS}")
    for name in ("runs.png", "flow-run.png", "artifacts.png", "gate-report.png"):
        assert (SHOTS / name).stat().st_size > 10_000


def _chromium_cli(srv, run) -> None:
    """Without Playwright: the DOM after scripts ran, and a screenshot, by Chromium alone."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    base = [chromium(), *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000"]
    dom = subprocess.run(
        [*base, "--dump-dom", f"{srv.url}/runs"], capture_output=True, text=True, timeout=120
    ).stdout
    assert run.name in dom, "the runs page does not list the pipeline run"
    subprocess.run(
        [*base, f"--screenshot={SHOTS / 'runs.png'}", "--window-size=1400,900", f"{srv.url}/runs"],
        capture_output=True,
        timeout=120,
    )
    dom = subprocess.run(
        [*base, "--dump-dom", f"{srv.url}/runs/flow-run/{run.id}?tab=Artifacts"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "gate" in dom and "finetune" in dom
    assert (SHOTS / "runs.png").stat().st_size > 10_000
