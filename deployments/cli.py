"""The `llmflow` command line: one verb per step, `run` for the whole pipeline, operations.

Heavy libraries (Prefect flows, torch) are imported inside the verbs that need them, so
`llmflow --help` answers at once. Every expected failure is one line saying what to change:
exit code 2 for a bad config or input (a key, a value, a source, a workspace folder), 1 when the
environment fails (no space left, a port in use, the Prefect server did not start), 3 when the
gate rejects the model.

This module holds the pipeline verbs, `config` and `main`; the shared app and options are in
deployments/cli_app.py, the end-of-run summary in deployments/summary.py, the registry and
`generate` in deployments/cli_models.py, the operations commands in deployments/cli_ops.py,
`forget` and `gc` in deployments/cli_erasure.py.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import typer

from deployments.cli_app import (
    ForceOpt,
    HomeOpt,
    PresetOpt,
    SetOpt,
    app,
    console,
    ensure_writable,
    err_console,
    fail,
    pipeline_config,
    writable_home,
)
from deployments.summary import print_summary
from llmflow.config import ConfigError, InputError, PipelineConfig

# Wait for the temporary Prefect server as long as `llmflow server` waits for its own
# (deployments/localserver.py): Prefect's 20 s is too short on a busy machine.
SERVER_STARTUP_SECONDS = 180


def _prefect_env() -> None:
    """PREFECT_HOME created, and the server start-up limit set, before Prefect is imported."""
    prefect_home = os.path.expanduser(os.environ.get("PREFECT_HOME") or "~/.prefect")
    ensure_writable(prefect_home, "PREFECT_HOME", "set PREFECT_HOME to a folder you can write")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(SERVER_STARTUP_SECONDS))


def _start_prefect() -> None:
    """Start the temporary Prefect server when PREFECT_API_URL names none, here rather than inside
    the first task run, so that a server that does not come up is one line (exit code 1)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    if PREFECT_API_URL.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    # SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C, so Prefect's exit hook stops the server;
    # Python's default would end the process at once and leave the server running.
    if threading.current_thread() is threading.main_thread():  # only there may a handler be set
        signal.signal(signal.SIGTERM, signal.default_int_handler)

    try:
        SubprocessASGIServer().start()
    except Exception as e:  # Prefect's message runs on with the server's output; its first sentence
        fail(
            f"the temporary Prefect server did not start ({str(e).split('.')[0]}): on a busy machine "
            f"raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS "
            f"({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()} s now), or run "
            "`llmflow server` and set PREFECT_API_URL to its API",
            code=1,
        )


def expected_failure(e: BaseException | None, home: str) -> tuple[str, int] | None:
    """(one line, exit code) for a failure that needs no traceback: a bad input says what to
    change (2), a full disk where to free space (1). None for anything else (a bug: traceback)."""
    if isinstance(e, InputError):
        return str(e), 2
    if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e):
        where = getattr(e, "filename", None) or os.path.abspath(home)
        return (
            f"no space left on device writing {where}: free some space or point --home at a larger "
            "disk, then re-run (finished steps are reused; the failed step published nothing)",
            1,
        )
    return None


class _OneLineFailures(logging.Filter):
    """Prefect logs a failed run's traceback to the console; for an expected failure the one-line
    error says it all (the Prefect UI keeps the traceback)."""

    def __init__(self, home: str):
        super().__init__()
        self.home = home

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and expected_failure(record.exc_info[1], self.home) is not None:
            record.exc_info = record.exc_text = None
        return True


def _check_runner(cfg: PipelineConfig) -> None:
    """The data fan-out's runner can start (an unreachable Dask scheduler is one line, exit 2),
    checked before the Prefect server starts; the flow checks again (deployments run it too).
    Every pipeline verb runs through `prepare`, so every one checks."""
    from flows.fanout import check_runner

    try:
        check_runner(cfg.runner)
    except InputError as e:
        fail(str(e))


def _run_flow(until: str, preset: str, overrides: list[str] | None, force: bool, home: str | None) -> None:
    cfg = pipeline_config(preset, overrides)
    home = writable_home(home)
    if cfg.base_model() is not None:  # a base model that cannot be used: one line, before any server
        from tasks.base_model import preflight

        try:
            preflight(cfg)
        except InputError as e:
            fail(str(e), code=2)
    _prefect_env()  # before anything imports Prefect (prefect-dask does)
    _check_runner(cfg)
    from prefect import flow
    from prefect.logging.handlers import PrefectConsoleHandler

    from deployments.progress import RichProgressSink
    from flows.pipeline import compose
    from llmflow.step import set_progress_sink

    name = "pipeline" if until == "gate" else until

    @flow(name=name, description=f"llmflow {name} (started from the command line)")
    def _cli_flow(config: PipelineConfig, force: bool = False, home: str | None = None) -> dict[str, Any]:
        return compose(config, until, force, home)

    from tasks.gate import GateFailed

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(_OneLineFailures(home))
    _start_prefect()
    t0 = time.time()
    with RichProgressSink(console) as sink:
        set_progress_sink(sink)
        try:
            summary = _cli_flow(config=cfg, force=force, home=home)
        except GateFailed as e:
            print_summary(e.summary, time.time() - t0, home, next_steps=False)
            _gate_failed(e, home)
        except Exception as e:
            known = expected_failure(e, home)
            if known is None:
                raise
            fail(*known)
        finally:
            set_progress_sink(None)
    print_summary(summary, time.time() - t0, home)


GATE_FAILED_EXIT = 3


def _gate_failed(e: Any, home: str) -> None:
    """A failed gate: its reasons, where the decision is, and exit code 3 (the run failed)."""
    err_console.print(f"[bold red]gate failed:[/] {e.name} v{e.version} was not promoted", highlight=False)
    for reason in e.reasons:
        err_console.print(f"  - {reason}", highlight=False, soft_wrap=True)
    gate_ref = e.summary.get("gate") or {}
    if gate_ref.get("uri"):
        err_console.print(f"Decision: {gate_ref['uri']}/decision.json", highlight=False, soft_wrap=True)
    err_console.print("The champion is unchanged. See the README's gate section.", highlight=False)
    raise typer.Exit(GATE_FAILED_EXIT)


# verb -> (the step the flow stops after, help)
PIPELINE_VERBS = {
    "run": (
        "gate",
        "Run the whole pipeline: ingest, prepare, tokenizer, pack, pretrain, finetune, evaluate, gate. "
        "Exit code 3 when the gate rejects the model (the reasons are printed), 2 for a bad config or "
        "input, 1 when the environment fails (no space left, the Prefect server did not start).",
    ),
    "data": ("prepare", "Ingest every source and prepare the data (filters, dedup, PII, split)."),
    "tokenizer": ("tokenizer", "Train the SentencePiece tokenizer on the prepared data."),
    "pretrain": ("pretrain", "Pack token shards and pretrain the base model."),
    "finetune": ("finetune", "Fine-tune the base model (LoRA, prompt tuning or full)."),
    "evaluate": ("evaluate", "Evaluate the fine-tuned model: ROUGE, BLEU, F1, bits per byte, bias."),
    "gate": (
        "gate",
        "Evaluate and gate: promote the model only when it beats the model before fine-tuning, the "
        "task's trivial baselines and the champion. Exit code 3 when the gate rejects it.",
    ),
}


def _pipeline_verb(until: str):
    def verb(
        config: PresetOpt = "demo", set: SetOpt = None, force: ForceOpt = False, home: HomeOpt = None
    ) -> None:
        _run_flow(until, config, set, force, home)

    return verb


for _verb, (_until, _help) in PIPELINE_VERBS.items():
    app.command(name=_verb, help=_help)(_pipeline_verb(_until))


@app.command("config")
def show_config(config: PresetOpt = "demo", set: SetOpt = None) -> None:
    """Print the resolved configuration (preset + overrides) as JSON."""
    cfg = pipeline_config(config, set)
    console.print_json(cfg.model_dump_json())


# The other commands register on `app` when their modules are imported: after the pipeline
# verbs, so that `llmflow --help` lists those first.
from deployments import cli_erasure, cli_models, cli_ops  # noqa: E402, F401


def main() -> None:
    try:
        app()
    except ConfigError as e:  # pragma: no cover - pipeline_config already turns these into exit 2
        err_console.print(f"error: {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
