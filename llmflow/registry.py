"""The model registry: numbered versions of fine-tuned models, with lineage and aliases.

Everything lives in the artifact store under `registry/<name>/`:

    index.json            every version's entry, the aliases and the champion history
    v<N>/README.md        the version's model card (Hugging Face style)

`index.json` is the single source of truth and is rewritten whole and atomically (rename on a
local disk, a single PUT on object storage), so a promotion moves the `champion` alias in one
step: a reader sees the old champion or the new one, never a half-written state. On a local
disk a lock file serialises writers. Entries point at artifacts by key (`finetune_key`,
`eval_key`) and carry `model_path`, the merged model directory to load.

Aliases: `champion` (what serves) and `challenger` (the latest candidate that is not the
champion). `promote` pushes the previous champion on a history stack; `rollback` pops it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from llmflow.store import ArtifactStore

ALIASES = ("champion", "challenger")


class RegistryError(ValueError):
    """A bad registry request (unknown version or alias, nothing to roll back to)."""


class Registry:
    def __init__(self, store: ArtifactStore | None = None, name: str = "llmflow"):
        if not name or "/" in name or name.startswith("."):
            raise RegistryError(f"bad model name {name!r}")
        self.store = store or ArtifactStore()
        self.name = name

    # ----------------------------------------------------------------- reading

    def _index(self) -> dict[str, Any]:
        idx = self.store.read_json("registry", self.name, "index.json", default=None)
        return idx or {"name": self.name, "versions": [], "aliases": {}, "champion_history": [], "events": []}

    def list(self) -> list[dict[str, Any]]:
        """All entries, oldest first, each with its current `aliases`."""
        idx = self._index()
        return [self._with_aliases(e, idx) for e in idx["versions"]]

    def get(self, ref: int | str) -> dict[str, Any]:
        """An entry by version (3, "3", "v3") or alias ("champion", "challenger")."""
        idx = self._index()
        version = self._resolve(idx, ref)
        for e in idx["versions"]:
            if e["version"] == version:
                return self._with_aliases(e, idx)
        raise RegistryError(f"model {self.name!r} has no version {ref!r}")

    def champion(self) -> dict[str, Any] | None:
        idx = self._index()
        v = idx["aliases"].get("champion")
        return None if v is None else self.get(v)

    def find(self, finetune_key: str) -> dict[str, Any] | None:
        idx = self._index()
        for e in idx["versions"]:
            if e["finetune_key"] == finetune_key:
                return self._with_aliases(e, idx)
        return None

    def card_path(self, version: int) -> str:
        return self.store.path("registry", self.name, f"v{version}", "README.md")

    # ----------------------------------------------------------------- writing

    def register(
        self,
        finetune_key: str,
        model_path: str,
        eval_key: str | None = None,
        metrics: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        card: str | None = None,
        **extra: Any,
    ) -> int:
        """Add a version (or return the existing one for the same fine-tune artifact).

        Registering sets the `challenger` alias unless the version is already champion. A
        re-registration with a new `eval_key` or metrics updates them in place.
        """
        if not finetune_key:
            raise RegistryError("register needs the fine-tune artifact key")
        with self._locked() as idx:
            for e in idx["versions"]:
                if e["finetune_key"] == finetune_key:
                    if eval_key is not None:
                        e["eval_key"] = eval_key
                    if metrics is not None:
                        e["metrics"] = metrics
                    e.update(extra)
                    version = e["version"]
                    break
            else:
                version = max((e["version"] for e in idx["versions"]), default=0) + 1
                idx["versions"].append(
                    {
                        "version": version,
                        "name": self.name,
                        "created": time.time(),
                        "finetune_key": finetune_key,
                        "model_path": model_path,
                        "eval_key": eval_key,
                        "metrics": metrics or {},
                        "lineage": lineage or {},
                        **extra,
                    }
                )
                _log(idx, "registered", version)
            if idx["aliases"].get("champion") != version:
                idx["aliases"]["challenger"] = version
        if card is not None:
            self.write_card(version, card)
        return version

    def write_card(self, version: int, markdown: str) -> None:
        self.get(version)  # must exist
        _write_text(self.store, self.card_path(version), markdown)

    def promote(self, ref: int | str) -> dict[str, Any]:
        """Make a version the champion; the previous champion goes on the rollback stack."""
        with self._locked() as idx:
            version = self._entry(idx, ref)["version"]
            if self._entry(idx, ref).get("erased"):
                raise RegistryError(
                    f"{self.name} v{version} was built from erased data and cannot be champion: "
                    "`llmflow forget --retrain` trains one without it"
                )
            current = idx["aliases"].get("champion")
            if current != version:
                if current is not None:
                    idx["champion_history"].append(current)
                idx["aliases"]["champion"] = version
                _log(idx, "promoted", version, previous=current)
            if idx["aliases"].get("challenger") == version:
                del idx["aliases"]["challenger"]
        return self.get(version)

    def rollback(self) -> dict[str, Any]:
        """Restore the previous champion; the rolled-back version is no longer an alias target."""
        with self._locked() as idx:
            if not idx["champion_history"]:
                raise RegistryError(f"model {self.name!r} has no previous champion to roll back to")
            current = idx["aliases"].get("champion")
            previous = idx["champion_history"][-1]
            if self._entry(idx, previous).get("erased"):
                raise RegistryError(
                    f"the previous champion of {self.name!r}, v{previous}, was built from erased data: "
                    "promote another version"
                )
            idx["champion_history"].pop()
            idx["aliases"]["champion"] = previous
            _log(idx, "rolled_back", previous, previous=current)
        return self.get(previous)

    def mark_erased(self, ref: int | str, request_ids: list[str]) -> bool:
        """Record on a version that it was built from erased data (llmflow/erasure.py): its entry
        gets `erased` = {requests, marked}. Returns whether it was not marked by these requests yet."""
        with self._locked() as idx:
            entry = self._entry(idx, ref)
            erased = entry.setdefault("erased", {"requests": [], "marked": time.time()})
            new = [r for r in request_ids if r not in erased["requests"]]
            erased["requests"] += new
            if new:
                _log(idx, "erased", entry["version"], requests=new)
        return bool(new)

    def retire(self, ref: int | str) -> list[str]:
        """Take an erased version whose artifacts were purged out of service: off every alias and
        the rollback stack, `erased.purged` set. Returns the aliases it lost."""
        with self._locked() as idx:
            entry = self._entry(idx, ref)
            if not entry.get("erased"):
                raise RegistryError(f"{self.name} v{entry['version']} is not marked erased")
            v = entry["version"]
            lost = sorted(a for a, target in idx["aliases"].items() if target == v)
            for a in lost:
                del idx["aliases"][a]
            idx["champion_history"] = [h for h in idx["champion_history"] if h != v]
            entry["erased"].setdefault("purged", time.time())
            _log(idx, "purged", v, aliases=lost)
        return lost

    def history(self) -> list[dict[str, Any]]:
        """Registry events (registered, promoted, rolled_back, erased, purged), oldest first."""
        return list(self._index()["events"])

    # ----------------------------------------------------------------- internals

    def _resolve(self, idx: dict[str, Any], ref: int | str) -> int:
        if isinstance(ref, str):
            if ref in ALIASES:
                v = idx["aliases"].get(ref)
                if v is None:
                    raise RegistryError(f"model {self.name!r} has no {ref}")
                return int(v)
            digits = ref[1:] if ref[:1] in ("v", "V") else ref
            if not digits.isdigit():
                raise RegistryError(f"bad version {ref!r} (a number, vN, champion or challenger)")
            return int(digits)
        return int(ref)

    def _entry(self, idx: dict[str, Any], ref: int | str) -> dict[str, Any]:
        version = self._resolve(idx, ref)
        for e in idx["versions"]:
            if e["version"] == version:
                return e
        raise RegistryError(f"model {self.name!r} has no version {ref!r}")

    def _with_aliases(self, entry: dict[str, Any], idx: dict[str, Any]) -> dict[str, Any]:
        out = dict(entry)
        out["aliases"] = sorted(a for a, v in idx["aliases"].items() if v == entry["version"])
        out["card"] = self.card_path(entry["version"])
        return out

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write of index.json under a lock (local stores); written atomically."""
        lock = None
        if self.store.is_local:
            import fcntl

            path = self.store.path("registry", self.name, ".lock")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            lock = open(path, "a")  # noqa: SIM115 - held for the block
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            idx = self._index()
            yield idx
            self.store.write_json(idx, "registry", self.name, "index.json")
        finally:
            if lock is not None:
                lock.close()


def _log(idx: dict[str, Any], event: str, version: int, **fields: Any) -> None:
    idx["events"].append({"event": event, "version": version, "time": time.time(), **fields})


def _write_text(store: ArtifactStore, path: str, text: str) -> None:
    if store.is_local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    else:
        with store.fs.open(path, "w") as f:
            f.write(text)
