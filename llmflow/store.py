"""The artifact store: content-addressed step outputs under one workspace root.

Layout: `<root>/artifacts/<step>/<key>/` holding the step's files and `manifest.json`. The manifest
is written last and the directory appears atomically (staged in a temporary directory, then
renamed; on object stores, every file is uploaded before the manifest). A directory without a
manifest is incomplete: it is rebuilt, never read.

`key` = sha256 of the step's name and version, the canonical JSON of its config section, the
keys of its inputs and the hash of its code (llmflow/code_hash.py). The same key is the Prefect
cache key (see tasks/common.py).

The manifest lists every file with its size and sha256. `exists`, `ref` and `manifest` (what
decides a cache hit) verify them: an artifact with a missing or changed file is damaged, logged
with the file's name and treated as missing, so it is rebuilt, never served. Sizes are checked
on every call (a stat per file; one listing on a remote store); content hashes on a local store,
once per process for a file whose size, inode, mtime and ctime are unchanged. On a remote store
only sizes are checked: hashing would mean downloading. Two runs of the same key write the same
files and the same manifest, except for its `TIMING_FIELDS` (when and how fast it ran).

Writers stage in `.tmp-<key>-<pid>@<host>-*` folders beside the artifacts; the first `write` of a
step in a process removes the stale ones of that step (see `stale_staging`).

The root is addressed through fsspec, so `s3://bucket/llmflow` works like a local folder: steps
always write to a local staging directory, and readers of a remote artifact get a local copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
from pydantic import BaseModel

from llmflow.config import canonical_json

MANIFEST = "manifest.json"
DEFAULT_HOME = "./.llmflow"
TIMING_FIELDS = ("created", "seconds", "timings")  # the manifest fields that differ between runs
STALE_AFTER = 7 * 24 * 3600  # seconds; staging folders whose owner cannot be asked (see stale_staging)

log = logging.getLogger("llmflow.store")


def default_home() -> str:
    return os.environ.get("LLMFLOW_HOME", DEFAULT_HOME)


class StepRef(BaseModel):
    """What tasks pass between them: where a step's output is, never the data itself."""

    step: str
    key: str
    uri: str
    stats: dict[str, Any] = {}
    status: str = "ran"  # "ran" | "cached"
    seconds: float = 0.0


def step_key(
    step: str,
    version: int | str,
    config: Any,
    inputs: Mapping[str, str] | None = None,
    extra: Any = None,
    code: str | None = None,
) -> str:
    """sha256 over the step's identity, its config section, its inputs' keys and its code hash."""
    payload = {
        "step": step,
        "version": str(version),
        "config": json.loads(canonical_json(config)) if config is not None else None,
        "inputs": dict(sorted((inputs or {}).items())),
    }
    if extra is not None:
        payload["extra"] = json.loads(canonical_json(extra))
    if code is not None:
        payload["code"] = code
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


class ArtifactStore:
    def __init__(self, home: str | os.PathLike[str] | None = None):
        home = str(home) if home is not None else default_home()
        self.home = home
        self.fs, root = fsspec.core.url_to_fs(home)
        self.is_local = "file" in _protocols(self.fs)
        self.root = os.path.abspath(root) if self.is_local else root.rstrip("/")

    # ----------------------------------------------------------------- addressing

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts]) if not self.is_local else os.path.join(self.root, *parts)

    def artifact_path(self, step: str, key: str) -> str:
        return self.path("artifacts", step, key)

    def uri(self, step: str, key: str) -> str:
        p = self.artifact_path(step, key)
        if self.is_local:
            return p
        proto = _protocols(self.fs)[0]
        return f"{proto}://{p}"

    # ----------------------------------------------------------------- reading

    def manifest(self, step: str, key: str, verify: bool = True) -> dict[str, Any] | None:
        """The manifest of a complete artifact, or None when missing, incomplete or (unless
        `verify=False`) damaged: a file it lists is missing or changed."""
        mpath = self._join(self.artifact_path(step, key), MANIFEST)
        try:
            with self.fs.open(mpath, "r") as f:
                m = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if verify:
            damage = self.damage(step, key, m)
            if damage is not None:
                log.warning("artifact %s/%s is damaged: %s; it will be rebuilt", step, key[:12], damage)
                return None
        return m

    def damage(self, step: str, key: str, manifest: dict[str, Any]) -> str | None:
        """What is wrong with the files of an artifact (the first problem found), or None."""
        files = manifest.get("files") or {}
        if isinstance(files, list):  # written before sizes were recorded: presence only
            files = {f: {} for f in files}
        base = self.artifact_path(step, key)
        if self.is_local:
            stats = {rel: _stat(os.path.join(base, rel)) for rel in files}
            sizes = {rel: st.st_size for rel, st in stats.items() if st is not None}
        else:  # one listing, not a request per file
            found = self.fs.find(base, detail=True)
            sizes = {p[len(base) :].lstrip("/"): info.get("size") for p, info in found.items()}
        for rel, want in sorted(files.items()):
            if rel not in sizes:
                return f"{rel} is missing"
            if "size" in want and sizes[rel] != want["size"]:
                return f"{rel} has {sizes[rel]} bytes, the manifest says {want['size']}"
            hashed = self.is_local and "sha256" in want
            if hashed and _sha256_once(os.path.join(base, rel), stats[rel]) != want["sha256"]:
                return f"{rel} has changed: its sha256 is not the manifest's"
        return None

    def exists(self, step: str, key: str) -> bool:
        """A complete artifact whose files are as the manifest lists them."""
        return self.manifest(step, key) is not None

    def ref(self, step: str, key: str, status: str = "cached") -> StepRef | None:
        m = self.manifest(step, key)
        if m is None:
            return None
        return StepRef(
            step=step,
            key=key,
            uri=self.uri(step, key),
            stats=m.get("stats", {}),
            status=status,
            seconds=float(m.get("seconds", 0.0)),
        )

    def local_path(self, ref: StepRef | tuple[str, str]) -> Path:
        """A local directory holding the artifact's files (a download cache for remote stores)."""
        step, key = (ref.step, ref.key) if isinstance(ref, StepRef) else ref
        if self.manifest(step, key, verify=False) is None:  # verified when it was a hit
            raise FileNotFoundError(f"artifact {step}/{key[:12]} is missing or incomplete")
        if self.is_local:
            return Path(self.artifact_path(step, key))
        cache = Path(os.environ.get("LLMFLOW_CACHE", tempfile.gettempdir())) / "llmflow-cache" / step / key
        if not (cache / MANIFEST).exists():
            tmp = cache.with_name(f".tmp-{key}-{uuid.uuid4().hex[:8]}")
            self.fs.get(self.artifact_path(step, key).rstrip("/") + "/", str(tmp), recursive=True)
            if cache.exists():
                shutil.rmtree(cache)
            os.replace(tmp, cache)
        return cache

    def list(self, step: str) -> list[dict[str, Any]]:
        """Manifests of the complete artifacts of one step, oldest first."""
        base = self.path("artifacts", step)
        if not self.fs.exists(base):
            return []
        out = []
        for p in self.fs.ls(base, detail=False):
            key = p.rstrip("/").rsplit("/", 1)[-1]
            if key.startswith(".tmp-") or ".old-" in key:
                continue
            m = self.manifest(step, key, verify=False)
            if m is not None:
                out.append(m)
        return sorted(out, key=lambda m: m.get("created", 0))

    # ----------------------------------------------------------------- writing

    @contextmanager
    def write(self, step: str, key: str, manifest: dict[str, Any] | None = None) -> Iterator[Path]:
        """Stage an artifact locally; on success publish it with its manifest written last.

        The caller may add entries to `manifest` inside the block (e.g. `stats`). If the block
        raises, nothing is published and the staging directory is removed. The manifest lists
        every file with its size and sha256 (about 1 ms per MB, while the files are still cached).
        """
        manifest = manifest if manifest is not None else {}
        final = self.artifact_path(step, key)
        if self.is_local:  # beside the artifacts: published by a rename
            parent, prefix, stale = os.path.dirname(final), f".tmp-{key[:16]}-", ".tmp-"
        else:
            parent, prefix, stale = tempfile.gettempdir(), f"llmflow-{step}-", f"llmflow-{step}-"
        os.makedirs(parent, exist_ok=True)
        if (parent, stale) not in _CLEANED:  # once per process and step: a listing per write adds up
            _CLEANED.add((parent, stale))
            remove_stale_staging(parent, stale, old=self.is_local)
        staging = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}@{_HOST}-", dir=parent))
        t0 = time.time()
        try:
            yield staging
            manifest.setdefault("step", step)
            manifest.setdefault("key", key)
            manifest.setdefault("created", time.time())
            manifest.setdefault("seconds", round(time.time() - t0, 3))
            manifest["files"] = {
                p.relative_to(staging).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
                for p in sorted(staging.rglob("*"))
                if p.is_file() and p.name != MANIFEST
            }
            _write_json_atomic(staging / MANIFEST, manifest)
            self._publish(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _publish(self, staging: Path, final: str) -> None:
        if self.is_local:
            if os.path.exists(final):
                # An incomplete leftover (no manifest) or a forced rebuild: replace it.
                trash = f"{final}.old-{uuid.uuid4().hex[:8]}"
                os.replace(final, trash)
                os.replace(staging, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(staging, final)
            return
        if self.fs.exists(final):
            self.fs.rm(final, recursive=True)
        for p in sorted(staging.rglob("*")):
            if p.is_file() and p.name != MANIFEST:
                self.fs.put_file(str(p), self._join(final, str(p.relative_to(staging))))
        self.fs.put_file(str(staging / MANIFEST), self._join(final, MANIFEST))

    def delete(self, step: str, key: str) -> None:
        p = self.artifact_path(step, key)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)

    # ----------------------------------------------------------------- small JSON documents

    def read_json(self, *parts: str, default: Any = None) -> Any:
        try:
            with self.fs.open(self.path(*parts), "r") as f:
                return json.load(f)
        except FileNotFoundError:
            return default

    def write_json(self, obj: Any, *parts: str) -> None:
        """Write a small JSON document atomically (rename on local disk, single PUT elsewhere)."""
        target = self.path(*parts)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            _write_json_atomic(Path(target), obj)
        else:
            with self.fs.open(target, "w") as f:
                json.dump(obj, f, indent=2, sort_keys=True, default=str)

    def _join(self, base: str, rel: str) -> str:
        return os.path.join(base, rel) if self.is_local else f"{base.rstrip('/')}/{rel}"


_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
_CLEANED: set[tuple[str, str]] = set()  # (folder, prefix) whose stale staging this process removed
_OWNED = re.compile(r"-(?P<pid>\d+)@(?P<host>[A-Za-z0-9._]+)-[^-]+$")


def stale_staging(path: str | os.PathLike[str], now: float | None = None) -> bool:
    """Whether a staging folder was left behind by a writer that is gone.

    A folder named by a process of this host is stale once that process is no longer running,
    however young. Any other (another host's, whose process cannot be asked, or an unnamed one
    from an older version) only after `STALE_AFTER` without a change: a writer stages for as long
    as its step runs, hours for pretraining, so an age of minutes would delete live work.
    """
    m = _OWNED.search(os.path.basename(os.fspath(path)))
    if m is not None and m["host"] == _HOST:
        return not _running(int(m["pid"]))
    try:
        age = (now if now is not None else time.time()) - os.stat(path).st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_AFTER


def remove_stale_staging(parent: str, prefix: str, old: bool = False) -> list[str]:
    """Remove the stale staging folders `<parent>/<prefix>*` and, with `old`, the `<key>.old-*`
    folders an interrupted replace left (never read again); returns what was removed."""
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        path = os.path.join(parent, name)
        leftover = old and ".old-" in name and not name.startswith(".")
        if (leftover or (name.startswith(prefix) and stale_staging(path))) and os.path.isdir(path):
            log.info("removing stale staging folder %s", path)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# (path, size, inode, mtime_ns, ctime_ns) -> sha256, for the files this process has hashed
_VERIFIED: dict[tuple[str, int, int, int, int], str] = {}
RACY_SECONDS = 2.0  # a file changed this recently may change again within the same timestamp


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _sha256_once(path: str, st: os.stat_result) -> str:
    """sha256 of a local file, computed again only when its size, inode, mtime or ctime changed.

    A file modified within `RACY_SECONDS` of hashing is not remembered: a second write in the
    same clock tick would leave its timestamps as they were (git's "racy clean" problem).
    """
    sid = (path, st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    if sid in _VERIFIED:
        return _VERIFIED[sid]
    digest = file_sha256(Path(path))
    if time.time() - max(st.st_mtime, st.st_ctime) > RACY_SECONDS:
        _VERIFIED[sid] = digest
    return digest


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
