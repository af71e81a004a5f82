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
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


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

    @property
    def url(self) -> str:
        return f"http://{client_host(self.host)}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def start(self, timeout: float = 180.0) -> LocalServer:
        """Start `prefect server start` and wait for /api/health; ServerError on failure."""
        if healthy(self.api_url, timeout=1.0):
            raise ServerError(f"something already answers at {self.api_url}: choose another --port")
        env = {**os.environ, **self.env}
        env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        env["PREFECT_UI_API_URL"] = env.get("LLMFLOW_UI_API_URL") or self.api_url
        env.pop("PREFECT_API_URL", None)  # the server is not a client of another server
        prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
        cmd = [prefect, "server", "start", "--host", self.host, "--port", str(self.port)]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"`{' '.join(cmd)}` exited with code {self.proc.returncode}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if healthy(self.api_url):
                return self
            time.sleep(0.5)
        self.stop()
        raise ServerError(
            f"the Prefect server did not answer at {self.api_url}/health within {timeout:.0f}s"
            + (f"; see {self.log_path}" if self.log_path else "")
        )

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server's process group (uvicorn and its services), then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
