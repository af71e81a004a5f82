"""Live training curves: TensorBoard event files, and a Prefect UI view updated in place.

`LiveCurves(ctx, title)` is the `on_step(row, fraction)` hook of the training loops
(model/train.py, model/sft.py). Every step's row goes to TensorBoard event files in
`<LLMFLOW_HOME>/tensorboard/<step>/<key[:12]>`, so `tensorboard --logdir <LLMFLOW_HOME>/tensorboard`
shows every training run. Every `ctx.dashboard.refresh_seconds` (and after the first and the
last step) the step's `live-curve` view is published: the loss curve as a picture and a sparkline,
the latest figures, tokens/s and the time left; the Prefect adapter (tasks/common.py) updates that
artifact in place. The Prefect UI fetches an artifact when its page is opened, reloaded or focused
again but does not poll it, while it polls a Running flow run's logs (every 5 s): each refresh
also logs one `live:` line with the same figures. Event files hold wall-clock times, so nothing here goes into the step's
artifact (the same key must give the same files); a rerun of the same key purges the steps it
repeats from the earlier event files (TensorBoard's `purge_step`).
"""

from __future__ import annotations

import base64
import io
import math
import tempfile
import time
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


class LiveCurves:
    """The training loops' `on_step` hook for one step run; `close()` when training ends."""

    def __init__(self, ctx: StepContext, title: str, clock=time.monotonic):
        self.ctx, self.title, self.clock = ctx, title, clock
        self.logdir = tensorboard_dir(ctx)
        self.rows: list[dict[str, Any]] = []
        self.fraction = 0.0
        self.writer = None
        self.last_publish: float | None = None
        self.window: tuple[int, float] | None = None  # (tokens, seconds) at the last publish
        self.tokens_per_s: float | None = None
        self.published = 0

    def __call__(self, row: dict[str, Any], fraction: float) -> None:
        if self.writer is None:
            self.writer = self._open_writer(row["step"])
            if row["step"] == 1:  # a resumed run has a rate from its second publish on
                self.window = (0, 0.0)
        self._log(row)
        prev = self.rows[-1] if self.rows else None
        if prev is not None and row["seconds"] > prev["seconds"]:
            rate = (row["tokens"] - prev["tokens"]) / (row["seconds"] - prev["seconds"])
            self.writer.add_scalar("throughput/tokens_per_s", rate, row["step"])
        self.rows.append(row)
        self.fraction = fraction
        now = self.clock()
        if self.last_publish is None or now - self.last_publish >= self.ctx.dashboard.refresh_seconds:
            self.publish(now)

    def close(self, final: dict[str, Any] | None = None) -> None:
        """Log `final` (the last step's validation figures), publish the last view, close the files."""
        if final and self.rows and "val_loss" not in self.rows[-1]:
            self._log(final)
            self.rows[-1] = {**self.rows[-1], **final}
        if self.rows:
            self.publish(self.clock(), finished=True)
        if self.writer is not None:
            self.writer.close()

    def publish(self, now: float, finished: bool = False) -> None:
        row = self.rows[-1]
        if self.window is not None and row["seconds"] > self.window[1]:
            self.tokens_per_s = (row["tokens"] - self.window[0]) / (row["seconds"] - self.window[1])
        self.window = (row["tokens"], row["seconds"])
        self.last_publish = now
        self.published += 1
        self.ctx.logger.info("%s", self.summary(finished))
        try:
            self.ctx.view(self.markdown(finished), "live-curve")
        except Exception as e:  # the UI is a view; never fail a step over it
            self.ctx.logger.warning("live curve not published: %s", e)

    def summary(self, finished: bool = False) -> str:
        """One line for the logs (which the Prefect UI polls while a run is Running)."""
        row, f = self.rows[-1], self.fraction
        rate = f"{self.tokens_per_s:,.0f} tokens/s" if self.tokens_per_s is not None else "tokens/s: —"
        if finished:
            return f"live: finished, step {row['step']}, loss {row['loss']:.4f}, {rate}"
        left = duration(row["seconds"] * (1 - f) / f) if f > 0 else "?"
        return f"live: step {row['step']}, loss {row['loss']:.4f}, {rate}, {100 * f:.0f}% done, about {left} left"

    def markdown(self, finished: bool = False) -> str:
        row, f = self.rows[-1], self.fraction
        val = next((r for r in reversed(self.rows) if "val_loss" in r), None)
        left = row["seconds"] * (1 - f) / f if f > 0 else None
        status = (
            f"**finished** after {row['step']} steps in {duration(row['seconds'])}"
            if finished
            else f"**running**: step {row['step']}, {100 * f:.0f}% of the budget, "
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
            ("time left", "0m 00s" if finished else duration(left) if left is not None else "—"),
        ]
        losses = [r["loss"] for r in self.rows]
        return "\n".join(
            [
                f"### {self.title}",
                "",
                status,
                "",
                "| | |",
                "|---|---|",
                *[f"| {k} | {v} |" for k, v in cells],
                "",
                f"loss `{sparkline(losses)}` {losses[0]:.3f} → {losses[-1]:.3f}",
                "",
                f"![loss curve](data:image/png;base64,{self._png()})",
                "",
                f"TensorBoard: `tensorboard --logdir {self.logdir.parent.parent}`",
                "",
            ]
        )

    def _png(self) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot([r["step"] for r in self.rows], [r["loss"] for r in self.rows], lw=1, label="train loss")
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

    def _open_writer(self, first_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.logdir.mkdir(parents=True, exist_ok=True)
        # a rerun (forced, or resumed after a crash) replaces what earlier files hold from here on
        return SummaryWriter(str(self.logdir), purge_step=first_step, flush_secs=10)

    def _log(self, row: dict[str, Any]) -> None:
        for field, tag in SCALARS.items():
            if field in row:
                self.writer.add_scalar(tag, row[field], row["step"])
