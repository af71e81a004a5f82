"""Live training curves (tasks/live_curves.py): TensorBoard event files read back with
TensorBoard's own reader, the throttled live view, and, in a real browser, the Prefect UI showing
that view change while a pretraining flow run is still Running.

The browser test starts `prefect server start` (deployments/localserver.py), runs a short
wall-clock-bounded pretraining in a flow as a separate process (this module's `__main__`) with
`dashboard.refresh_seconds=1`, and has headless Chromium (Playwright driving the system
chromium) watch the `pretrain-live-curve` artifact's page, without reloading it, until the
figures it shows move on, while the API and the flow run's page both say Running.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect import flow

from flows.runner import StepRunner
from llmflow.config import DashboardConfig, PipelineConfig, PretrainConfig, load_config
from llmflow.step import StepContext
from llmflow.store import ArtifactStore, StepRef
from tasks.live_curves import LiveCurves, sparkline, tensorboard_dir
from tasks.pretrain import pretrain
from tests.helpers import corpus, tiny_tokenizer_dir
from tests.livestack import ROOT, chromium, free_port, missing_prerequisite, tail, wait_for
from tests.prereq import skip_missing
from tests.test_pretrain import pack_like

# The browser test's pretraining budget (wall clock): the browser must open two pages while the
# run is still Running. On a heavily loaded machine everything else slows down but this clock does
# not: lengthen it there with LLMFLOW_LIVE_TEST_SECONDS.
TRAIN_SECONDS = float(os.environ.get("LLMFLOW_LIVE_TEST_SECONDS") or 20)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in `logdir`, as TensorBoard itself reads it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def make_inputs(store: ArtifactStore, work: Path) -> dict[str, StepRef]:
    """A real tokenizer and packed shards as the pretrain step's input artifacts."""
    tok_dir = tiny_tokenizer_dir(work / "tok")
    refs = {}
    for step, name, build in (
        ("tokenizer", "tokenizer", lambda out: [(out / f.name).write_bytes(f.read_bytes()) for f in tok_dir.iterdir()]),
        ("pack", "shards", lambda out: pack_like(out, tok_dir, corpus(600))),
    ):  # fmt: skip
        key = step[0] * 64
        with store.write(step, key, {"stats": {}}) as out:
            build(out)
        refs[name] = store.ref(step, key, status="ran")
    return refs


def test_tensorboard_events_hold_the_training_curves(store, tmp_path, one_thread):
    """Every step's loss and learning rate, the validation points, and tokens/s, as TensorBoard
    reads them, equal to what the loop wrote to loss.csv."""
    from model.train import train

    inputs = make_inputs(store, tmp_path)
    cfg = PretrainConfig(
        preset="tiny", seq_len=32, batch_size=4, max_steps=8, warmup_steps=1, eval_every=4,
        eval_batches=1, checkpoint_every=8, log_every=4, lr=5e-3,
    )  # fmt: skip
    views: list[tuple[str, str]] = []
    ctx = StepContext(
        step="pretrain", key="e" * 64, config=cfg, inputs=inputs, store=store, out=tmp_path / "out",
        on_publish=lambda kind, name, md: views.append((name, md)),
    )  # fmt: skip
    shards, tok = store.local_path(inputs["shards"]), store.local_path(inputs["tokenizer"])
    with LiveCurves(ctx, "test") as live:
        train(cfg, shards, ctx.out, tmp_path / "ckpt", tok, log=lambda m: None, on_step=live)

    logdir = tensorboard_dir(ctx)
    assert logdir == Path(store.root) / "tensorboard" / "pretrain" / ("e" * 12)
    assert list(logdir.glob("events.out.tfevents.*"))
    got = scalars(logdir)
    rows = list(csv.DictReader((ctx.out / "loss.csv").read_text().splitlines()))
    assert [s for s, _ in got["loss/train"]] == list(range(1, 9))
    assert [v for _, v in got["loss/train"]] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-6)
    assert [v for _, v in got["lr"]] == pytest.approx([float(r["lr"]) for r in rows], rel=1e-6)
    val = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert [s for s, _ in got["loss/validation"]] == [4, 8]
    assert [v for _, v in got["loss/validation"]] == pytest.approx(val, rel=1e-6)
    assert [s for s, _ in got["bpb/validation"]] == [4, 8]
    assert all(v > 0 for _, v in got["throughput/tokens_per_s"])
    # the view for the UI: after the first step (refresh 30 s; the worker may fold it into the
    # next) and at the end
    assert {name for name, _ in views} == {"live-curve"} and len(views) <= 2
    assert "**finished** after 8 steps" in views[-1][1]
    # nothing of it in the step's own output: event files carry wall-clock times
    assert not any("tfevents" in p.name for p in ctx.out.rglob("*"))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_view_is_refreshed_every_refresh_seconds_with_tokens_per_s_and_time_left(store, tmp_path):
    views: list[str] = []
    ctx = StepContext(
        step="finetune", key="f" * 64, config=None, inputs={}, store=store, out=tmp_path,
        on_publish=lambda kind, name, md: views.append(md), dashboard=DashboardConfig(refresh_seconds=10),
    )  # fmt: skip
    clock = Clock()
    live = LiveCurves(ctx, "Fine-tuning", clock=clock)
    for step in range(1, 31):  # one step per wall-clock second, 100 tokens each, 30 of 60 steps
        clock.now = float(step)
        live(
            {"step": step, "tokens": 100 * step, "seconds": float(step), "lr": 1e-3, "loss": 5 - step / 10},
            step / 60,
        )
        live.drain()  # no view replaced by a later one: each is sent before the next step
    assert len(views) == 3  # after step 1, then 10 s later at step 11, and at step 21
    last = views[-1]
    assert "**running**: step 21, 35% of the budget, about 0m 39s left" in last
    assert "| tokens/s | 100 |" in last and "| tokens | 2,100 |" in last
    assert "![loss curve](data:image/png;base64," in last
    live.close()
    assert len(views) == 4 and "**finished** after 30 steps in 0m 30s" in views[-1]
    assert "| time left | 0m 00s |" in views[-1]


def test_a_failed_run_leaves_a_stopped_view(store, tmp_path):
    views: list[str] = []
    ctx = StepContext(
        step="pretrain", key="g" * 64, config=None, inputs={}, store=store, out=tmp_path,
        on_publish=lambda kind, name, md: views.append(md),
    )  # fmt: skip
    with pytest.raises(FloatingPointError), LiveCurves(ctx, "Pretraining") as live:
        live({"step": 1, "tokens": 64, "seconds": 0.5, "lr": 1e-3, "loss": 5.0}, 0.1)
        raise FloatingPointError("loss is nan at step 2")
    assert "**stopped** at step 1: FloatingPointError: loss is nan at step 2" in views[-1]
    assert not live.worker.is_alive()


def test_sparkline_runs_low_to_high_and_fits_its_width():
    assert sparkline([3.0, 2.0, 1.0]) == "█▅▁"
    assert sparkline([1.0] * 5) == "▁▁▁▁▁"
    assert len(sparkline([float(i) for i in range(1000)], width=60)) <= 60


# --------------------------------------------------------------------------- the browser


@flow(name="live-curves")
def live_curves_flow(config: PipelineConfig, shards: StepRef, tokenizer: StepRef, home: str) -> dict:
    """The flow run the browser watches: the real pretrain task through StepRunner, with the
    pipeline config's dashboard section (run as `python -m tests.test_live_curves SPEC`)."""
    run = StepRunner(home=home, dashboard=config.dashboard)
    return run(pretrain, config.pretrain, shards=shards, tokenizer=tokenizer).model_dump(mode="json")


@pytest.mark.slow
def test_the_prefect_ui_shows_the_loss_curve_move_while_the_run_is_running(tmp_path):
    reason = missing_prerequisite()
    if reason:
        skip_missing("the llmflow and prefect commands", reason)
    if not chromium():
        skip_missing("Chromium", "apt-get install chromium")
    from playwright.sync_api import sync_playwright

    from deployments.localserver import LocalServer
    from tests.livestack import api

    t0 = time.monotonic()
    shots = Path(os.environ.get("LLMFLOW_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    server = LocalServer(
        port=free_port(), env={"PREFECT_HOME": str(tmp_path / "prefect")}, log_path=tmp_path / "server.log"
    )
    home = tmp_path / "home"
    inputs = make_inputs(ArtifactStore(home), tmp_path)
    config = load_config(
        "smoke",
        [
            "dashboard.refresh_seconds=1",
            "pretrain.seq_len=32", "pretrain.batch_size=4", "pretrain.max_steps=100000",
            f"pretrain.max_seconds={TRAIN_SECONDS}", "pretrain.eval_every=25", "pretrain.eval_batches=1",
            "pretrain.checkpoint_every=100000", "pretrain.log_every=25",
        ],
    )  # fmt: skip
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        "config": config.model_dump(mode="json"), "home": str(home), "api_url": server.api_url,
        **{k: v.model_dump(mode="json") for k, v in inputs.items()},
    }))  # fmt: skip
    log = tmp_path / "flow.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")},
        "PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(tmp_path / "client"), "LLMFLOW_HOME": str(home),
        "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PREFECT_LOGGING_LEVEL": "INFO",
    }  # fmt: skip
    with open(log, "wb") as out:  # it imports while the server starts, then waits for it
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.test_live_curves", str(spec)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        server.start(timeout=600)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            page.set_default_timeout(90_000)  # a loaded machine; the run's clock does not wait
            page.goto(f"{server.url}/runs", wait_until="commit")  # the app loads meanwhile
            art = wait_for(
                lambda: live_artifact(server.api_url), 180, "the live-curve artifact", 0.5, proc, log
            )
            run_id = art.flow_run_id
            wait_for(
                lambda: api_step(server.api_url, art.id) > 1, 120, "the first update in place", 0.5, proc, log
            )

            # 1. The artifact's page while the run is Running: the figures of a later step than the
            # first view's (step 1), and the picture, in the one artifact under the key
            page.goto(f"{server.url}/artifacts/artifact/{art.id}", wait_until="domcontentloaded")
            shown = shown_step(page)
            assert state(server.api_url, run_id) == "Running"
            page.screenshot(path=str(shots / "live-curve.png"), full_page=True)
            assert shown > 1, "the page shows the artifact as first created, not updated in place"
            assert (
                page.get_by_text("tokens/s").first.is_visible()
                and page.get_by_text("time left").first.is_visible()
            )
            img = page.locator("img[alt='loss curve']").first
            assert img.evaluate("i => i.complete && i.naturalWidth") > 100  # the picture decoded

            # 2. The flow run's page, never reloaded: Running, and the `live:` log lines move on
            page.goto(f"{server.url}/runs/flow-run/{run_id}", wait_until="domcontentloaded")
            page.get_by_text("Running", exact=True).first.wait_for()
            first = wait_for(lambda: live_steps(page), 60, "a live: line in the run's logs", 0.5, proc, log)
            later = wait_for(
                lambda: max(live_steps(page) or [0]) > max(first) and live_steps(page), 60,
                "a later live: line, without reloading", 0.5, proc, log,
            )  # fmt: skip
            assert page.get_by_text("Running", exact=True).first.is_visible()
            assert state(server.api_url, run_id) == "Running"
            page.screenshot(path=str(shots / "live-logs.png"), full_page=True)

            # 3. When the run is over, the same artifact (updated in place) says so
            assert proc.wait(timeout=180) == 0, tail(log)
            page.goto(f"{server.url}/artifacts/artifact/{art.id}", wait_until="domcontentloaded")
            page.get_by_text(re.compile(r"finished after \d+ steps")).first.wait_for(timeout=30_000)
            page.screenshot(path=str(shots / "live-curve-final.png"), full_page=True)
            browser.close()
        assert state(server.api_url, run_id) == "Completed"
        with api(server.api_url) as c:  # one artifact under the key, not a version per refresh
            assert len(c.read_artifacts(artifact_filter=_key_filter())) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.stop()
    # the same run's TensorBoard event files, as `tensorboard --logdir` reads them
    [logdir] = (home / "tensorboard" / "pretrain").iterdir()
    losses = scalars(logdir)["loss/train"]
    assert len(losses) >= max(later) and [s for s, _ in losses] == list(range(1, len(losses) + 1))
    print(
        f"live curves in the browser: {time.monotonic() - t0:.1f}s, steps seen {shown} {first} {later}; {shots}"
    )


def _key_filter():
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    return ArtifactFilter(key=ArtifactFilterKey(any_=["pretrain-live-curve"]))


def live_artifact(api_url: str):
    from tests.livestack import api

    with api(api_url) as c:
        found = c.read_artifacts(artifact_filter=_key_filter())
    return found[0] if found else None


def api_step(api_url: str, artifact_id) -> int:
    """The step the artifact's data shows now, as the API serves it (0 once finished)."""
    from tests.livestack import api

    with api(api_url) as c:
        data = c.read_artifacts(artifact_filter=_key_filter())[0].data
    m = re.search(r"running\*\*: step (\d+)", str(data))
    return int(m.group(1)) if m else 0


def state(api_url: str, run_id) -> str:
    from tests.livestack import api

    with api(api_url) as c:
        return c.read_flow_run(run_id).state.name


def live_steps(page) -> list[int]:
    """The steps of the `live:` log lines the page shows now (oldest first: scrolled to the end)."""
    page.mouse.wheel(0, 100_000)
    return [int(m) for m in re.findall(r"live: step (\d+)", page.inner_text("body"))]


def shown_step(page) -> int:
    """The step the live-curve artifact's page shows ('running: step N')."""
    shown = page.get_by_text(re.compile(r"running\W+step \d+")).first
    shown.wait_for(timeout=30_000)
    return int(re.search(r"step (\d+)", shown.inner_text()).group(1))


if __name__ == "__main__":
    from deployments.localserver import healthy

    spec = json.loads(Path(sys.argv[1]).read_text())
    wait_for(lambda: healthy(spec["api_url"]), 600, "the Prefect server", interval=0.3)
    live_curves_flow(
        config=PipelineConfig.model_validate(spec["config"]),
        shards=StepRef(**spec["shards"]),
        tokenizer=StepRef(**spec["tokenizer"]),
        home=spec["home"],
    )
