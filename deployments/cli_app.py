"""What every `llmflow` command shares: the typer app, the common options, the consoles, loading
the config and the workspace, and the one-line failure.

Light on purpose (typer and rich only): the command modules import it, and `llmflow --help`
imports them all.
"""

from __future__ import annotations

import os
import tempfile
from typing import Annotated

import typer
from rich.console import Console

from llmflow.config import ConfigError, PipelineConfig, load_config

app = typer.Typer(
    help="llmflow: raw text to a trained, evaluated, continuously improving language model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console()
err_console = Console(stderr=True)

PresetOpt = Annotated[
    str, typer.Option("--config", "-c", "--preset", help="Preset name (smoke, demo, ...) or a YAML file.")
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override: section.key=value (repeatable).")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Recompute every step, ignoring caches.")]
HomeOpt = Annotated[
    str | None, typer.Option("--home", help="Workspace root (default $LLMFLOW_HOME or ./.llmflow).")
]


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def pipeline_config(preset: str, overrides: list[str] | None) -> PipelineConfig:
    try:
        return load_config(preset, overrides or [])
    except ConfigError as e:
        fail(str(e))
        raise  # unreachable


def use_home(home: str | None) -> str:
    home = home or os.environ.get("LLMFLOW_HOME") or "./.llmflow"
    os.environ["LLMFLOW_HOME"] = home
    # Offline by default: no usage telemetry from the temporary Prefect server.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return home


def ensure_writable(path: str, what: str, fix: str) -> None:
    """Create `path` if needed and fail in one line, before any work, when it cannot be written."""
    if "://" in path:  # a bucket: its client reports its own errors
        return
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        fail(f"{what} {path} is not a writable folder ({e.strerror or e}): {fix}")


def writable_home(home: str | None) -> str:
    """The workspace root (as `use_home`), created, or one line (exit 2) when it cannot be written."""
    home = use_home(home)
    ensure_writable(home, "the workspace", "choose another --home or LLMFLOW_HOME")
    return home
