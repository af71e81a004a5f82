"""The `llmflow` command line: one verb per step, `run` for the whole pipeline, operations.

Heavy libraries (Prefect flows, torch) are imported inside the verbs that need them, so
`llmflow --help` answers at once. Every expected failure is one line saying what to change:
exit code 2 for a bad config or input (a key, a value, a source, a workspace folder), 1 when the
environment fails (no space left, a port in use, the Prefect server did not start), 3 when the
gate rejects the model.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from llmflow.config import ConfigError, InputError, PipelineConfig, load_config

app = typer.Typer(
    help="llmflow: raw text to a trained, evaluated, continuously improving language model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="The model registry: list, show, promote, roll back.", no_args_is_help=True)
app.add_typer(models_app, name="models")

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


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _config(preset: str, overrides: list[str] | None) -> PipelineConfig:
    try:
        return load_config(preset, overrides or [])
    except ConfigError as e:
        _fail(str(e))
        raise  # unreachable


def _home(home: str | None) -> str:
    home = home or os.environ.get("LLMFLOW_HOME") or "./.llmflow"
    os.environ["LLMFLOW_HOME"] = home
    # Offline by default: no usage telemetry from the temporary Prefect server.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return home


def _writable(path: str, what: str, fix: str) -> None:
    """Create `path` if needed and fail in one line, before any work, when it cannot be written."""
    if "://" in path:  # a bucket: its client reports its own errors
        return
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        _fail(f"{what} {path} is not a writable folder ({e.strerror or e}): {fix}")


def _check_port(host: str, port: int) -> None:
    """Fail in one line when nothing can listen on host:port, before starting a server there."""
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        _fail(f"cannot listen on {host}:{port} ({e.strerror}): check --host")
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                _fail(
                    f"port {port} on {host} is already in use: stop the server that holds it or "
                    "choose another --port",
                    code=1,
                )
            _fail(f"cannot listen on {host}:{port} ({e.strerror or e}): choose another --host or --port")


# --------------------------------------------------------------------------- summaries


def _key_output(step: str, stats: dict[str, Any]) -> str:
    """The one figure a person wants to see for each step."""

    def g(k: str, fmt: str = "{:,}") -> str:
        v = stats.get(k)
        return fmt.format(v) if isinstance(v, int | float) else "?"

    if step == "ingest":
        return f"{g('documents')} docs, {g('rejected')} rejected"
    if step == "task_data":
        return f"{g('train')} train / {g('validation')} val / {g('test')} test examples"
    if step == "prepare":
        return f"{g('kept')} kept of {g('input')}, {g('train_docs')} train docs"
    if step == "tokenizer":
        return f"vocab {g('vocab_size')}, {g('bytes_per_token', '{:.2f}')} bytes/token"
    if step == "pack":
        return f"{g('train_tokens')} train tokens ({stats.get('dtype', '?')})"
    if step == "pretrain":
        return f"val {g('val_bpb', '{:.3f}')} bits/byte after {g('steps')} steps"
    if step == "finetune":
        return f"{stats.get('method', '?')}: val loss {g('val_loss', '{:.3f}')}, trainable {g('trainable_fraction', '{:.2%}')}"
    if step == "evaluate":
        m = stats.get("metrics", {})
        parts = [
            f"{k} {m[k]:.3f}" for k in ("rougeL", "bleu", "val_bpb") if isinstance(m.get(k), int | float)
        ]
        refs = {b: v.get("rougeL", 0.0) for b, v in (stats.get("baselines") or {}).items()}
        if "base" in refs:
            parts.append(f"before fine-tuning rougeL {refs.pop('base'):.3f}")
        if refs:
            best = max(refs, key=refs.__getitem__)
            parts.append(f"best baseline {best} {refs[best]:.3f}")
        return ", ".join(parts) or "?"
    if step == "gate":
        verdict = "passed" if stats.get("passed") else "failed"
        promoted = f", promoted {stats.get('version')} to champion" if stats.get("promoted") else ""
        return f"{verdict}{promoted}"
    return ""


def _print_data_summary(stats: dict[str, Any]) -> None:
    """The data report in short: what was dropped and why, and what was kept by source and licence."""
    table = Table(title="data: kept and dropped", show_lines=False)
    table.add_column("")
    table.add_column("", justify="right")
    table.add_row("[bold]input[/]", f"{stats.get('input', 0):,}")
    table.add_row("[bold]kept[/]", f"{stats.get('kept', 0):,}")
    for reason, n in list(stats.get("rejects_by_reason", {}).items())[:8]:
        table.add_row(f"  dropped: {reason}", f"{n:,}")
    for source, counts in stats.get("by_source", {}).items():
        table.add_row(f"source {source}", ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    for lic, counts in stats.get("by_license", {}).items():
        table.add_row(f"licence {lic}", ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    langs = list(stats.get("by_language", {}).items())[:5]
    if langs:
        table.add_row("languages (kept)", ", ".join(f"{k} {v:,}" for k, v in langs))
    console.print(table)


def _print_summary(summary: dict[str, Any], seconds: float, home: str, next_steps: bool = True) -> None:
    if "prepare" in summary and summary["prepare"]["status"] == "ran":
        _print_data_summary(summary["prepare"].get("stats", {}))
    table = Table(title="llmflow run", show_lines=False)
    table.add_column("step")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("result")
    for step, ref in summary.items():
        status = "[green]ran[/]" if ref["status"] == "ran" else "[cyan]cached[/]"
        table.add_row(step, status, f"{ref['seconds']:.1f}s", _key_output(step, ref.get("stats", {})))
    console.print(table)
    console.print(f"Total {seconds:.1f}s. Artifacts under [bold]{os.path.abspath(home)}/artifacts/[/].")
    last = list(summary)[-1] if summary else None
    if last:
        console.print(f"Last step output: {summary[last]['uri']}")
    if not next_steps:
        return
    console.print(
        "Next: [bold]llmflow generate --model champion --prompt '...'[/] to sample, "
        "[bold]llmflow models list[/] for the registry, [bold]llmflow server[/] for the Prefect UI."
    )


# Wait for the temporary Prefect server as long as `llmflow server` waits for its own
# (deployments/localserver.py): Prefect's 20 s is too short on a busy machine.
SERVER_STARTUP_SECONDS = 180


def _prefect_env() -> None:
    """PREFECT_HOME created, and the server start-up limit set, before Prefect is imported."""
    prefect_home = os.path.expanduser(os.environ.get("PREFECT_HOME") or "~/.prefect")
    _writable(prefect_home, "PREFECT_HOME", "set PREFECT_HOME to a folder you can write")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(SERVER_STARTUP_SECONDS))


def _start_prefect() -> None:
    """Start the temporary Prefect server when PREFECT_API_URL names none, here rather than inside
    the first task run, so that a server that does not come up is one line (exit code 1)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    if PREFECT_API_URL.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    try:
        SubprocessASGIServer().start()
    except Exception as e:  # Prefect's message runs on with the server's output; its first sentence
        _fail(
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


def _run_flow(until: str, preset: str, overrides: list[str] | None, force: bool, home: str | None) -> None:
    cfg = _config(preset, overrides)
    home = _home(home)
    _writable(home, "the workspace", "choose another --home or LLMFLOW_HOME")
    _prefect_env()
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
            _print_summary(e.summary, time.time() - t0, home, next_steps=False)
            _gate_failed(e, home)
        except Exception as e:
            known = expected_failure(e, home)
            if known is None:
                raise
            _fail(*known)
        finally:
            set_progress_sink(None)
    _print_summary(summary, time.time() - t0, home)


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


# --------------------------------------------------------------------------- pipeline verbs


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
    cfg = _config(config, set)
    console.print_json(cfg.model_dump_json())


# --------------------------------------------------------------------------- models


def _registry(home: str | None, name: str):
    from llmflow.registry import Registry
    from llmflow.store import ArtifactStore

    return Registry(ArtifactStore(_home(home)), name)


NameOpt = Annotated[
    str, typer.Option("--name", envvar="LLMFLOW_MODEL", help="Registered model name (the config's `name`).")
]


@models_app.command("list")
def models_list(home: HomeOpt = None, name: NameOpt = "llmflow") -> None:
    """List registered versions with their aliases and headline metrics."""
    reg = _registry(home, name)
    entries = reg.list()
    if not entries:
        console.print(f"No registered versions of '{name}' yet. Run [bold]llmflow run[/] first.")
        return
    table = Table(title=f"models: {name}")
    for col in ("version", "aliases", "rougeL", "val_bpb", "created"):
        table.add_column(col)
    for e in entries:
        m = e.get("metrics", {})
        table.add_row(
            str(e["version"]),
            ", ".join(e.get("aliases", [])),
            f"{m['rougeL']:.3f}" if isinstance(m.get("rougeL"), int | float) else "",
            f"{m['val_bpb']:.3f}" if isinstance(m.get("val_bpb"), int | float) else "",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(e.get("created", 0))),
        )
    console.print(table)


@models_app.command("show")
def models_show(
    version: Annotated[str, typer.Argument(help="Version or alias.")] = "champion",
    home: HomeOpt = None,
    name: NameOpt = "llmflow",
) -> None:
    """Show one version (or alias) as JSON: lineage, metrics, paths."""
    try:
        entry = _registry(home, name).get(version)
    except ValueError as e:
        _fail(str(e), code=1)
    console.print_json(json.dumps(entry, default=str))


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="Version to make champion.")],
    home: HomeOpt = None,
    name: NameOpt = "llmflow",
) -> None:
    """Make a version the champion."""
    try:
        _registry(home, name).promote(version)
    except (KeyError, ValueError) as e:
        _fail(str(e), code=1)
    console.print(f"{version} is now the champion of '{name}'.")


@models_app.command("rollback")
def models_rollback(home: HomeOpt = None, name: NameOpt = "llmflow") -> None:
    """Restore the previous champion."""
    try:
        entry = _registry(home, name).rollback()
    except (KeyError, ValueError) as e:
        _fail(str(e), code=1)
    console.print(f"Rolled back: {entry['version'] if isinstance(entry, dict) else entry} is the champion.")


# --------------------------------------------------------------------------- generation


@app.command()
def generate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The prompt text.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Registry version/alias or a model directory.")
    ] = "champion",
    max_new_tokens: Annotated[int, typer.Option(min=1, max=4096)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, max=5.0)] = 0.8,
    top_k: Annotated[int | None, typer.Option(min=1)] = 50,
    top_p: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = 0.95,
    raw: Annotated[
        bool, typer.Option("--raw", help="Continue the text as is (no chat prompt format).")
    ] = False,
    num: Annotated[int, typer.Option("--num", "-n", min=1, max=64, help="Number of samples.")] = 1,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    home: HomeOpt = None,
    name: NameOpt = "llmflow",
) -> None:
    """Sample from a checkpoint: a registry version or alias, or any model directory."""
    path = Path(model)
    if not path.exists():
        from llmflow.registry import RegistryError

        try:
            entry = _registry(home, name).get(model)
        except RegistryError as e:
            _fail(f"'{model}' is neither a path nor usable in registry '{name}': {e}", code=1)
        path = Path(entry["model_path"])
    from model.adapters import FINETUNE_META, load_finetuned
    from model.chat import format_prompt
    from model.generate import generate as sample
    from model.generate import load, resolve_model_dir

    try:
        weights, _ = resolve_model_dir(path)
        lm, tok = load_finetuned(weights) if (weights / FINETUNE_META).exists() else load(path)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e), code=1)
    text = prompt if raw else format_prompt(prompt)
    outs = sample(
        lm,
        tok,
        [text] * num,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
    )
    for i, out in enumerate(outs):
        if num > 1:
            console.print(f"[bold]--- sample {i + 1}[/]")
        console.print(out, highlight=False, markup=False)


# ---- operations: `llmflow server`, `deploy`, `serve` (docs: README, "Operations")

RetrainCronOpt = Annotated[str, typer.Option(help="Cron of the `retrain` deployment (weekly by default).")]
DataCronOpt = Annotated[str, typer.Option(help="Cron of the `data-refresh` deployment.")]
TimezoneOpt = Annotated[str, typer.Option(help="Time zone of the cron schedules.")]


def _deployments(cfg: PipelineConfig, home: str | None, retrain_cron: str, data_cron: str, tz: str):
    from deployments.serve import build_deployments

    home = os.path.abspath(home) if home else None
    return build_deployments(cfg, retrain_cron=retrain_cron, data_cron=data_cron, timezone=tz, home=home)


def _gate_failed_automation(cfg: PipelineConfig) -> None:
    """Create or update the automation that notifies on `llmflow.gate.failed`, and say where it sends."""
    from deployments.automations import automation_name, ensure_gate_failed_automation, notify_target

    try:
        ensure_gate_failed_automation(cfg)
    except ValueError as e:
        _fail(str(e))
    target = notify_target(cfg)
    if target is None:
        where = "is only recorded (set serve.gate_failed_notify or LLMFLOW_GATE_FAILED_NOTIFY to notify)"
    elif target.startswith(("http://", "https://")):
        where = "is POSTed to the configured webhook"
    else:
        where = f"notifies through the block {target}"
    console.print(f"Automation '{automation_name(cfg)}': a failed gate {where}.")


@app.command()
def server(
    port: Annotated[int, typer.Option(min=1, max=65_535, help="Port of the API and UI.")] = 4200,
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 for other machines).")] = "127.0.0.1",
    config: PresetOpt = "demo",
    set: SetOpt = None,
    home: HomeOpt = None,
    retrain_cron: RetrainCronOpt = "0 3 * * 1",
    data_cron: DataCronOpt = "0 2 * * *",
    timezone: TimezoneOpt = "UTC",
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Only run the server; serve no deployments.")
    ] = False,
) -> None:
    """Start a local Prefect server (UI included) and serve the deployments until Ctrl-C.

    SQLite under PREFECT_HOME by default; PostgreSQL when PREFECT_SERVER_DATABASE_CONNECTION_URL
    is set (postgresql+asyncpg://user:pw@host/db).
    """
    cfg = _config(config, set)
    explicit_home = home
    home = _home(home)
    from deployments.service import is_loopback

    auth = os.environ.get("PREFECT_SERVER_API_AUTH_STRING", "").strip()
    if not is_loopback(host) and not auth:
        _fail(
            f"refusing to serve the Prefect API on {host} without a login: set "
            "PREFECT_SERVER_API_AUTH_STRING=user:password (clients then set PREFECT_API_AUTH_STRING), "
            "or bind 127.0.0.1"
        )
    if auth:  # this process and the flow runs it starts are clients of that server
        os.environ.setdefault("PREFECT_API_AUTH_STRING", auth)
    _check_port(host, port)
    # From here on SIGTERM (`docker stop`, systemd) stops like Ctrl-C, server included.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    from deployments.localserver import LocalServer, ServerError

    prefect_home = os.environ.get("PREFECT_HOME") or os.path.expanduser("~/.prefect")
    os.makedirs(prefect_home, exist_ok=True)
    srv = LocalServer(host=host, port=port, log_path=Path(prefect_home, f"server-{port}.log"))
    db = os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL")
    console.print(f"Starting the Prefect server on {'PostgreSQL' if db else 'SQLite'} ...")
    try:
        srv.start()
        os.environ["PREFECT_API_URL"] = srv.api_url  # this process and the flow runs it starts
        console.print(f"[bold green]Prefect UI:[/] {srv.url}   (API {srv.api_url}, log {srv.log_path})")
        console.print(f"Artifacts under {os.path.abspath(home)}; stop with Ctrl-C.")
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: srv.api_url}):
            if no_serve:
                while srv.proc is not None and srv.proc.poll() is None:
                    time.sleep(1)
                _fail(f"the Prefect server exited (code {srv.proc.returncode}); see {srv.log_path}", 1)
            from deployments.serve import serve_deployments

            deps = _deployments(cfg, explicit_home, retrain_cron, data_cron, timezone)
            _gate_failed_automation(cfg)
            console.print(
                "Serving deployments: " + ", ".join(d.name for d in deps) + f" (runs: {srv.url}/runs)"
            )
            serve_deployments(deps)  # returns on SIGINT / SIGTERM once the runs in progress are cancelled
    except (KeyboardInterrupt, SystemExit):
        pass
    except ServerError as e:
        _fail(str(e), code=1)
    finally:
        _stop_server(srv)


def _stop_server(srv) -> None:
    """Stop what `llmflow server` started: leftover flow-run processes, then the Prefect server.

    Signals are ignored meanwhile (a second Ctrl-C must not cut the clean-up short); each wait
    is bounded, and `srv.stop` returns once the server's port is free.
    """
    from deployments.localserver import ServerError
    from deployments.processes import stop_descendants

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(
            sig, lambda *_: os.write(2, b"Still stopping: the Prefect server is shutting down ...\n")
        )
    console.print("Stopping the Prefect server ...")
    left = stop_descendants(exclude=[srv.proc.pid] if srv.proc else [])
    if left:
        console.print(f"Stopped {len(left)} process(es) that flow runs left behind: {left}")
    try:
        srv.stop()
    except ServerError as e:
        _fail(str(e), code=1)


@app.command()
def deploy(
    pool: Annotated[str, typer.Option(help="Process work pool (created when missing).")] = "llmflow",
    config: PresetOpt = "demo",
    set: SetOpt = None,
    home: HomeOpt = None,
    retrain_cron: RetrainCronOpt = "0 3 * * 1",
    data_cron: DataCronOpt = "0 2 * * *",
    timezone: TimezoneOpt = "UTC",
) -> None:
    """Register the deployments on a process work pool of the server at PREFECT_API_URL.

    Then run them with a worker: `prefect worker start --pool llmflow`.
    """
    cfg = _config(config, set)
    from prefect.settings import get_current_settings

    api = get_current_settings().api.url
    if not api:
        _fail("PREFECT_API_URL is not set: point it at a Prefect server (e.g. http://127.0.0.1:4200/api)")
    from deployments.serve import deploy_to_pool

    ids = deploy_to_pool(_deployments(cfg, home, retrain_cron, data_cron, timezone), pool)
    _gate_failed_automation(cfg)
    console.print(f"Registered {len(ids)} deployments on work pool '{pool}' at {api}.")
    console.print(f"Run them with: [bold]prefect worker start --pool {pool}[/]")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default serve.host).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65_535, help="Port (default serve.port).")] = None,
    config: PresetOpt = "demo",
    set: SetOpt = None,
    home: HomeOpt = None,
) -> None:
    """Serve the champion model over HTTP: /generate, /feedback, /health, /model."""
    cfg = _config(config, set)
    home = _home(home)
    _writable(home, "the workspace", "choose another --home or LLMFLOW_HOME")
    _check_port(host or cfg.serve.host, port or cfg.serve.port)
    from deployments.service import BindError
    from deployments.service import run as run_service

    try:
        run_service(cfg, host=host, port=port, home=home)
    except BindError as e:
        _fail(str(e))


def main() -> None:
    try:
        app()
    except ConfigError as e:  # pragma: no cover - _config already turns these into exit 2
        err_console.print(f"error: {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
