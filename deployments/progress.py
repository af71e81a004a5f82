"""Rich progress bars for steps, fed by StepContext.progress while a flow runs in this process."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RichProgressSink:
    """A context manager; call it as `sink(step, done, total, message)`."""

    def __init__(self, console: Console):
        self.progress = Progress(
            TextColumn("[bold]{task.fields[step]:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
            transient=False,
            disable=not console.is_terminal,
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> RichProgressSink:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, step: str, done: float, total: float, message: str) -> None:
        if step not in self.tasks:
            self.tasks[step] = self.progress.add_task(message, total=total or None, step=step)
        self.progress.update(self.tasks[step], completed=done, total=total or None, description=message)
