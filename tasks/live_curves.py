"""Live training curves: TensorBoard event files, and a Prefect UI view updated in place.

`LiveCurves(ctx, title)` is the `on_step(row, fraction)` hook of the training loops
(model/train.py, model/sft.py). Every step's row goes to TensorBoard event files in
`<LLMFLOW_HOME>/tensorboard/<step>/<key[:12]>`, so `tensorboard --logdir <LLMFLOW_HOME>/tensorboard`
shows every training run. Every `ctx.dashboard.refresh_seconds` (and after the first and the
last step) the step's `live-curve` view is published: the loss curve as a picture and a sparkline,
the latest figures, tokens/s and the time left; the Prefect adapter (tasks/common.py) updates that
artifact in place. The Prefect UI fetches an artifact when its page is opened, reloaded or focused
again but does not poll it, while it polls a Running flow run's logs (every 5 s): each refresh
also logs one `live:` line with the same figures.

Training never waits for the UI: the hook only appends the row and writes the scalars (the
writer flushes in its own thread); the picture is drawn and sent by a worker thread, and a view
asked for while the previous one is still being sent replaces the one waiting. Event files hold
wall-clock times, so nothing here goes into the step's artifact (the same key must give the same
files); a rerun of the same key purges the steps it repeats from the earlier event files
(TensorBoard's `purge_step`).
"""

from __future__ import annotations

import base64
import contextvars
import io
import math
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmflow.step import StepContext

SPARK = "▁▂▃▄▅▆▇█"
SCALARS = {  # row field -> TensorBoard tag
    "loss": "loss/train",
    "val_loss": "loss/validation",
    "val_bpb": "bpb/validation",
    "lr": "lr",
}
MAX_POINTS = 2000  # drawn in the picture; a longer run is thinned evenly


def tensorboard_dir(ctx: StepContext) -> Path:
    """Where a step's event files go: under LLMFLOW_HOME, or a local temp folder for a bucket."""
    if ctx.store.is_local:
        return Path(ctx.store.path("tensorboard", ctx.step, ctx.key[:12]))
    return Path(tempfile.gettempdir()) / "llmflow-tensorboard" / ctx.step / ctx.key[:12]


def sparkline(values: list[float], width: int = 60) -> str:
    """`values` as block characters, low to high, averaged down to at most `width` of them."""
    if not values:
        return ""
    n = math.ceil(len(values) / width)
    points = [sum(values[i : i + n]) / len(values[i : i + n]) for i in range(0, len(values), n)]
    lo, hi = min(points), max(points)
    span = (hi - lo) or 1.0
    return "".join(SPARK[min(int((v - lo) / span * len(SPARK)), len(SPARK) - 1)] for v in points)


def duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


@dataclass
class Snapshot:
    """What one view shows: the rows so far, the fraction of the budget done, tokens/s since the
    previous view."""

    rows: list[dict[str, Any]]
    fraction: float
    tokens_per_s: float | None
    finished: bool = False
    error: str | None = None  # why training stopped, when it failed

    @property
    def seconds_left(self) -> float | None:
        if self.finished or self.error:
            return 0.0
        f = self.fraction
        return self.rows[-1]["seconds"] * (1 - f) / f if f > 0 else None

    def summary(self) -> str:
        """One line for the logs (which the Prefect UI polls while a run is Running)."""
        row = self.rows[-1]
        rate = f"{self.tokens_per_s:,.0f} tokens/s" if self.tokens_per_s is not None else "tokens/s: —"
        if self.error:
            return f"live: stopped at step {row['step']}: {self.error}"
        if self.finished:
            return f"live: finished, step {row['step']}, loss {row['loss']:.4f}, {rate}"
        left = duration(self.seconds_left) if self.seconds_left is not None else "?"
        return (
            f"live: step {row['step']}, loss {row['loss']:.4f}, {rate}, {100 * self.fraction:.0f}% done, "
            f"about {left} left"
        )

    def markdown(self, title: str, logdir: Path) -> str:
        row, left = self.rows[-1], self.seconds_left
        val = next((r for r in reversed(self.rows) if "val_loss" in r), None)
        if self.error:
            status = f"**stopped** at step {row['step']}: {self.error}"
        elif self.finished:
            status = f"**finished** after {row['step']} steps in {duration(row['seconds'])}"
        else:
            status = (
                f"**running**: step {row['step']}, {100 * self.fraction:.0f}% of the budget, "
                f"about {duration(left) if left is not None else '?'} left"
            )
        cells = [
            ("step", f"{row['step']:,}"),
            ("train loss", f"{row['loss']:.4f}"),
            ("validation loss", f"{val['val_loss']:.4f} (step {val['step']})" if val else "—"),
            ("validation bits per byte", f"{val['val_bpb']:.4f}" if val and "val_bpb" in val else "—"),
            ("learning rate", f"{row['lr']:.3g}"),
            ("tokens", f"{row['tokens']:,}"),
            ("tokens/s", f"{self.tokens_per_s:,.0f}" if self.tokens_per_s is not None else "—"),
            ("elapsed", duration(row["seconds"])),
            ("time left", duration(left) if left is not None else "—"),
        ]
        losses = [r["loss"] for r in self.rows]
        return "\n".join(
            [
                f"### {title}",
                "",
                status,
                "",
                "| figure | now |",
                "|---|---|",
                *[f"| {k} | {v} |" for k, v in cells],
                "",
                f"loss `{sparkline(losses)}` {losses[0]:.3f} → {losses[-1]:.3f}",
                "",
                f"![loss curve](data:image/png;base64,{self.png()})",
                "",
                f"TensorBoard: `tensorboard --logdir {logdir.parent.parent}`",
                "",
            ]
        )

    def png(self) -> str:
        """The loss curve (and the validation points) as a base64 PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.rows[:: math.ceil(len(self.rows) / MAX_POINTS)]
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1, label="train loss")
        val = [r for r in self.rows if "val_loss" in r]
        if val:
            ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.legend(loc="upper right")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        return base64.b64encode(buf.getvalue()).decode()


class LiveCurves:
    """The training loops' `on_step` hook for one step run, used as a context manager:

        with LiveCurves(ctx, "Pretraining") as live:
            metrics = train(..., on_step=live)
            live.final = {"step": ..., "val_loss": ..., "val_bpb": ...}  # optional

    On leaving, the last view says finished (or stopped, with the error) and the files close.
    Create it in the thread that runs the step: the worker thread publishes within a copy of
    that thread's context (Prefect ties an artifact to the task run it finds there).
    """

    def __init__(self, ctx: StepContext, title: str, clock=time.monotonic):
        self.ctx, self.title, self.clock = ctx, title, clock
        self.logdir = tensorboard_dir(ctx)
        self.rows: list[dict[str, Any]] = []
        self.writer = None
        self.last_view: float | None = None
        self.window: tuple[int, float] | None = None  # (tokens, seconds) at the last view
        self.pending: Snapshot | None = None
        self.busy = False
        self.closing = False
        self.final: dict[str, Any] | None = None  # the last step's validation figures, if any
        self.cond = threading.Condition()
        self.worker = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._publish_views,),
            name="live-curves",
            daemon=True,
        )
        self.worker.start()

    def __call__(self, row: dict[str, Any], fraction: float) -> None:
        if self.writer is None:
            self.writer = self._open_writer(row["step"])
            if row["step"] == 1:  # a resumed run has a rate from its second view on
                self.window = (0, 0.0)
        self._log(row)
        prev = self.rows[-1] if self.rows else None
        if prev is not None and row["seconds"] > prev["seconds"]:
            rate = (row["tokens"] - prev["tokens"]) / (row["seconds"] - prev["seconds"])
            self.writer.add_scalar("throughput/tokens_per_s", rate, row["step"])
        self.rows.append(row)
        now = self.clock()
        if self.last_view is None or now - self.last_view >= self.ctx.dashboard.refresh_seconds:
            self.last_view = now
            self.view(fraction)

    def __enter__(self) -> LiveCurves:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(error=f"{exc_type.__name__}: {exc}" if exc_type else None)

    def view(self, fraction: float, finished: bool = False, error: str | None = None) -> None:
        """Log the summary line now and hand the view to the worker (replacing one still waiting)."""
        row = self.rows[-1]
        rate = None
        if self.window is not None and row["seconds"] > self.window[1]:
            rate = (row["tokens"] - self.window[0]) / (row["seconds"] - self.window[1])
        self.window = (row["tokens"], row["seconds"])
        snap = Snapshot(list(self.rows), fraction, rate, finished, error)
        self.ctx.logger.info("%s", snap.summary())
        with self.cond:
            self.pending = snap
            self.cond.notify()

    def drain(self, timeout: float = 120.0) -> None:
        """Wait until no view is waiting or being sent."""
        with self.cond:
            self.cond.wait_for(lambda: self.pending is None and not self.busy, timeout=timeout)

    def close(self, error: str | None = None) -> None:
        """Log `self.final`, publish the last view (finished, or stopped by `error`), close the files."""
        final = self.final
        if final and self.rows and "val_loss" not in self.rows[-1]:
            self._log(final)
            self.rows[-1] = {**self.rows[-1], **final}
        if self.rows:
            self.view(1.0, finished=error is None, error=error)
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.worker.join(timeout=120)
        if self.writer is not None:
            self.writer.close()

    def _publish_views(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.pending is not None or self.closing)
                if self.pending is None:
                    return
                snap, self.pending, self.busy = self.pending, None, True
            try:
                self.ctx.view(snap.markdown(self.title, self.logdir), "live-curve")
            except Exception as e:  # the UI is a view; never fail a step over it
                self.ctx.logger.warning("live curve not published: %s", e)
            with self.cond:
                self.busy = False
                self.cond.notify_all()

    def _open_writer(self, first_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.logdir.mkdir(parents=True, exist_ok=True)
        # a rerun (forced, or resumed after a crash) replaces what earlier files hold from here on
        return SummaryWriter(str(self.logdir), purge_step=first_step, flush_secs=10)

    def _log(self, row: dict[str, Any]) -> None:
        for field, tag in SCALARS.items():
            if field in row:
                self.writer.add_scalar(tag, row[field], row["step"])
