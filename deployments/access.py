"""Who may reach the service: the bearer token, and the rule that only loopback is served
without one (`BindError`, exit code 2 from `llmflow serve`)."""

from __future__ import annotations

import ipaddress
import os

from llmflow.config import ServeConfig


class BindError(ValueError):
    """An address the service may not bind as configured (the message says what to change)."""


def serve_token(cfg: ServeConfig) -> str | None:
    """The bearer token: $LLMFLOW_SERVE_TOKEN, else `serve.token`; blank counts as none."""
    token = os.environ.get("LLMFLOW_SERVE_TOKEN") or cfg.token
    return token if token and token.strip() else None


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`; every other address or name can be reached from elsewhere."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Raise BindError for an address other hosts can reach when no token guards it."""
    if token is None and not is_loopback(host):
        raise BindError(
            f"refusing to serve on {host} without a token: set LLMFLOW_SERVE_TOKEN (or serve.token), "
            "or bind 127.0.0.1"
        )
