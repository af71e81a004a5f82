"""Process lifetime for `llmflow server`: no child outlives it, whenever and however it stops.

- `signals_held()` holds SIGINT and SIGTERM while a child is spawned, so an interrupt cannot
  land between the fork and the moment the caller knows the child's pid.
- `die_with_parent()` (Linux) makes the kernel SIGKILL a child when the thread that started it
  dies, the safety net for a parent killed with SIGKILL, which runs no clean-up of its own.
- `stop_group()` stops a child started in its own process group: SIGTERM to the group, SIGKILL
  to what remains after the grace period, and it returns once the group is empty.
- `stop_descendants()` (Linux, /proc) stops what is left of this process's children and their
  children, such as a flow run's process that outlived the runner.
- `port_free()` tells whether a server may bind a port again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Record SIGINT and SIGTERM inside the block and deliver them on leaving it.

    Handlers are replaced only in the main thread (the only one Python runs handlers in); a held
    signal is re-raised after the original handlers are back, so it acts as if it came late.
    A recording handler is a Python function, so a child spawned in the block starts with the
    default dispositions (exec resets caught signals), not with ignored ones.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: pending.append(signum)) for sig in HELD}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        for sig in dict.fromkeys(pending):
            signal.raise_signal(sig)


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel SIGKILL the child when its parent thread dies (Linux).

    PR_SET_PDEATHSIG fires when the *thread* that spawned the child exits, so spawn from a
    thread that lives as long as the child should (the main thread, in `llmflow server`). It
    reaches only this child, not the processes it starts. None where prctl does not exist.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigkill, parent = 1, int(signal.SIGKILL), os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: no imports, no locks
        prctl(pr_set_pdeathsig, sigkill, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody will signal us
            os.kill(os.getpid(), sigkill)

    return preexec


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process took the id: not ours any more
        return False
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def stop_group(proc, timeout: float = 20.0) -> bool:
    """Stop the process group led by `proc` (a Popen started with start_new_session=True).

    SIGTERM to the whole group (the leader and whatever it started), SIGKILL to what remains
    after `timeout` seconds; the leader is reaped. Returns False when SIGKILL was needed.
    """
    pgid, graceful = proc.pid, True
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with contextlib.suppress(Exception):
        proc.wait(timeout=timeout)
    if not _wait(lambda: not group_alive(pgid), max(0.0, deadline - time.monotonic())):
        graceful = False
        _signal_group(pgid, signal.SIGKILL)
    proc.wait(timeout=10)
    _wait(lambda: not group_alive(pgid), 10)
    return graceful


def _children() -> dict[int, list[int]]:
    """ppid -> pids, from /proc (empty where there is no /proc)."""
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def descendants(pid: int | None = None, exclude: Collection[int] = ()) -> list[int]:
    """The pids below `pid` (default: this process), parents first, without the subtrees of
    `exclude` (Linux; empty elsewhere)."""
    children, out, todo = _children(), [], [pid or os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in exclude:
                out.append(child)
                todo.append(child)
    return out


def stop_descendants(timeout: float = 10.0, exclude: Collection[int] = ()) -> list[int]:
    """SIGTERM every descendant of this process outside the subtrees of `exclude`, SIGKILL those
    left after `timeout`, reap the direct children. Returns the pids that were still there."""
    pids = [p for p in descendants(exclude=exclude) if _running(p)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)

    def gone() -> bool:
        for pid in pids:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # a direct child that exited is reaped here
        return not any(_running(p) for p in pids)

    if not _wait(gone, timeout):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        _wait(gone, 5)
    return pids


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie only waits to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def port_free(host: str, port: int) -> bool:
    """True when a server can bind `host:port` now (as uvicorn does, with SO_REUSEADDR)."""
    try:
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror:
        return True
    family, socktype, proto, _, addr = infos[0]
    with socket.socket(family, socktype, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError:
            return False
    return True


def wait_port_free(host: str, port: int, timeout: float = 10.0) -> bool:
    return _wait(lambda: port_free(host, port), timeout, interval=0.2)
