"""The artifact store: content-addressed step outputs under one workspace root.

Layout: `<root>/artifacts/<step>/<key>/` holding the step's files and `manifest.json`. The manifest
is written last and the directory appears atomically (staged in a temporary directory, then
renamed; on object stores, every file is uploaded before the manifest). A directory without a
manifest is incomplete: it is rebuilt, never read.

`key` = sha256 of the step's name and version, the canonical JSON of its config section, and the
keys of its inputs. The same key is the Prefect cache key (see tasks/common.py).

The root is addressed through fsspec, so `s3://bucket/llmflow` works like a local folder: steps
always write to a local staging directory, and readers of a remote artifact get a local copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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

    def manifest(self, step: str, key: str) -> dict[str, Any] | None:
        """The manifest of a complete artifact, or None when missing or incomplete."""
        mpath = self._join(self.artifact_path(step, key), MANIFEST)
        try:
            with self.fs.open(mpath, "r") as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def exists(self, step: str, key: str) -> bool:
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
        if self.manifest(step, key) is None:
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
            if key.startswith(".tmp-"):
                continue
            m = self.manifest(step, key)
            if m is not None:
                out.append(m)
        return sorted(out, key=lambda m: m.get("created", 0))

    # ----------------------------------------------------------------- writing

    @contextmanager
    def write(self, step: str, key: str, manifest: dict[str, Any] | None = None) -> Iterator[Path]:
        """Stage an artifact locally; on success publish it with its manifest written last.

        The caller may add entries to `manifest` inside the block (e.g. `stats`). If the block
        raises, nothing is published and the staging directory is removed.
        """
        manifest = manifest if manifest is not None else {}
        final = self.artifact_path(step, key)
        if self.is_local:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=os.path.dirname(final)))
        else:
            staging = Path(tempfile.mkdtemp(prefix=f"llmflow-{step}-"))
        t0 = time.time()
        try:
            yield staging
            manifest.setdefault("step", step)
            manifest.setdefault("key", key)
            manifest.setdefault("created", time.time())
            manifest.setdefault("seconds", round(time.time() - t0, 3))
            manifest["files"] = sorted(
                str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file() and p.name != MANIFEST
            )
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
