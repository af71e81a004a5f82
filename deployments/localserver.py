"""A local Prefect server as a child process (`llmflow server`, and the integration tests).

`prefect server start` keeps its database under PREFECT_HOME (SQLite) unless
PREFECT_SERVER_DATABASE_CONNECTION_URL names another (postgresql+asyncpg://...). The UI is a
static app that asks the browser to call the API at PREFECT_UI_API_URL, which defaults to
http://127.0.0.1:4200/api whatever port the server listens on: on any other port the UI loads
and shows no runs. So the server is always started with PREFECT_UI_API_URL set to its own
address, and the callers get PREFECT_API_URL for the clients.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from deployments.processes import die_with_parent, signals_held, stop_group, wait_port_free


class ServerError(RuntimeError):
    """The server did not start: the message says why and where its log is."""


def client_host(host: str) -> str:
    """The address a client on this machine uses for a server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class LocalServer:
    host: str = "127.0.0.1"
    port: int = 4200
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    proc: subprocess.Popen | None = None
    _listened: bool = field(default=False, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{client_host(self.host)}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def start(self, timeout: float = 180.0) -> LocalServer:
        """Start `prefect server start` and wait for /api/health; ServerError on failure.

        Whatever interrupts the start (a signal, a timeout, the server exiting) stops the server
        before the exception leaves: the child never outlives a failed start. On Linux the
        kernel also kills it if this thread dies first (`die_with_parent`), so call `start`
        from the thread that lives as long as the server should.
        """
        self._listened = self._stopped = False
        if healthy(self.api_url, timeout=1.0):
            raise ServerError(f"something already answers at {self.api_url}: choose another --port")
        env = {**os.environ, **self.env}
        env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        env["PREFECT_UI_API_URL"] = env.get("LLMFLOW_UI_API_URL") or self.api_url
        env.pop("PREFECT_API_URL", None)  # the server is not a client of another server
        prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
        cmd = [prefect, "server", "start", "--host", self.host, "--port", str(self.port)]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            with signals_held():  # no interrupt between the fork and `self.proc`
                self.proc = subprocess.Popen(
                    cmd,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # one process group to stop, apart from the terminal's Ctrl-C
                    preexec_fn=die_with_parent(),
                )
            self._wait_healthy(cmd, timeout)
        except BaseException:
            self.stop()
            raise
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # the child holds its own copy
        return self

    def _wait_healthy(self, cmd: list[str], timeout: float) -> None:
        see = f"; see {self.log_path}" if self.log_path else ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"`{' '.join(cmd)}` exited with code {self.proc.returncode}{see}")
            if healthy(self.api_url):
                self._listened = True
                return
            time.sleep(0.5)
        raise ServerError(
            f"the Prefect server did not answer at {self.api_url}/health within {timeout:.0f}s{see}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL after `timeout`) and return once
        no process of it is left and the port is free. ServerError if the port stays taken after a
        server that answered on it has gone (a failed start may have met someone else's server)."""
        if self.proc is None or self._stopped:
            return
        stop_group(self.proc, timeout=timeout)
        self._stopped = True
        # Once the group is gone its listening socket is closed; a server that never answered
        # may not have bound the port at all, so its wait is short.
        if (
            not wait_port_free(self.host, self.port, timeout=10.0 if self._listened else 1.0)
            and self._listened
        ):
            raise ServerError(
                f"port {self.port} is still in use after the Prefect server stopped: another process holds it"
            )

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
