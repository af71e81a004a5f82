"""The operations commands: `llmflow server` (a local Prefect server that serves the
deployments), `llmflow deploy` (register them on a work pool) and `llmflow serve` (the champion
over HTTP). Docs: README, "Operations"."""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from deployments.cli_app import (
    HomeOpt,
    PresetOpt,
    SetOpt,
    app,
    console,
    fail,
    pipeline_config,
    use_home,
    writable_home,
)
from deployments.serve import DEFAULT_DATA_CRON, DEFAULT_RETRAIN_CRON
from llmflow.config import PipelineConfig

RetrainCronOpt = Annotated[str, typer.Option(help="Cron of the `retrain` deployment (weekly by default).")]
DataCronOpt = Annotated[str, typer.Option(help="Cron of the `data-refresh` deployment.")]
TimezoneOpt = Annotated[str, typer.Option(help="Time zone of the cron schedules.")]


def _check_port(host: str, port: int) -> None:
    """Fail in one line when nothing can listen on host:port, before starting a server there."""
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        fail(f"cannot listen on {host}:{port} ({e.strerror}): check --host")
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                fail(
                    f"port {port} on {host} is already in use: stop the server that holds it or "
                    "choose another --port",
                    code=1,
                )
            fail(f"cannot listen on {host}:{port} ({e.strerror or e}): choose another --host or --port")


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
        fail(str(e))
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
    retrain_cron: RetrainCronOpt = DEFAULT_RETRAIN_CRON,
    data_cron: DataCronOpt = DEFAULT_DATA_CRON,
    timezone: TimezoneOpt = "UTC",
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Only run the server; serve no deployments.")
    ] = False,
) -> None:
    """Start a local Prefect server (UI included) and serve the deployments until Ctrl-C.

    SQLite under PREFECT_HOME by default; PostgreSQL when PREFECT_SERVER_DATABASE_CONNECTION_URL
    is set (postgresql+asyncpg://user:pw@host/db).
    """
    cfg = pipeline_config(config, set)
    explicit_home = home
    home = use_home(home)
    from deployments.access import is_loopback

    auth = os.environ.get("PREFECT_SERVER_API_AUTH_STRING", "").strip()
    if not is_loopback(host) and not auth:
        fail(
            f"refusing to serve the Prefect API on {host} without a login: set "
            "PREFECT_SERVER_API_AUTH_STRING=user:password (clients then set PREFECT_API_AUTH_STRING), "
            "or bind 127.0.0.1"
        )
    if auth:  # this process and the flow runs it starts are clients of that server
        os.environ.setdefault("PREFECT_API_AUTH_STRING", auth)
    _check_port(host, port)
    # From here on SIGTERM (`docker stop`, systemd) stops like Ctrl-C, server included; SIGINT is
    # set too, as a process started in the background by a shell inherits it ignored.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
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
                fail(f"the Prefect server exited (code {srv.proc.returncode}); see {srv.log_path}", 1)
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
        fail(str(e), code=1)
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
        fail(str(e), code=1)


@app.command()
def deploy(
    pool: Annotated[str, typer.Option(help="Process work pool (created when missing).")] = "llmflow",
    config: PresetOpt = "demo",
    set: SetOpt = None,
    home: HomeOpt = None,
    retrain_cron: RetrainCronOpt = DEFAULT_RETRAIN_CRON,
    data_cron: DataCronOpt = DEFAULT_DATA_CRON,
    timezone: TimezoneOpt = "UTC",
) -> None:
    """Register the deployments on a process work pool of the server at PREFECT_API_URL.

    Then run them with a worker: `prefect worker start --pool llmflow`.
    """
    cfg = pipeline_config(config, set)
    from prefect.settings import get_current_settings

    api = get_current_settings().api.url
    if not api:
        fail("PREFECT_API_URL is not set: point it at a Prefect server (e.g. http://127.0.0.1:4200/api)")
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
    cfg = pipeline_config(config, set)
    home = writable_home(home)
    _check_port(host or cfg.serve.host, port or cfg.serve.port)
    from deployments.access import BindError
    from deployments.service import run as run_service

    try:
        run_service(cfg, host=host, port=port, home=home)
    except BindError as e:
        fail(str(e))
