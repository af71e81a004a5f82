"""Skips for a missing prerequisite (Chromium, PostgreSQL, the installed commands), never silent.

`skip_missing(what, how)` skips the test with a reason that names what is missing and how to
enable it; the session's last lines list every such skip (conftest.py). With
`LLMFLOW_REQUIRE_ALL=1` (set by `.ci/run`) it fails the test instead, so CI always runs everything.
"""

from __future__ import annotations

import os

import pytest

PREFIX = "missing prerequisite: "


def required() -> bool:
    return os.environ.get("LLMFLOW_REQUIRE_ALL", "") not in ("", "0")


def skip_missing(what: str, how: str) -> None:
    message = f"{PREFIX}{what} (to enable: {how})"
    if required():
        pytest.fail(f"{message}; LLMFLOW_REQUIRE_ALL=1 turns this skip into a failure", pytrace=False)
    pytest.skip(message)


def summary_lines(reports) -> list[str]:
    """One line per distinct missing prerequisite among the skipped test reports."""
    seen: dict[str, int] = {}
    for rep in reports:
        longrepr = getattr(rep, "longrepr", None)
        message = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr or "")
        i = message.find(PREFIX)
        if i >= 0:
            key = message[i + len(PREFIX) :]
            seen[key] = seen.get(key, 0) + 1
    return [f"{n} test(s) skipped, {PREFIX}{key}" for key, n in seen.items()]
