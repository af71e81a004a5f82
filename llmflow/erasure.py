"""Erasure requests: what to forget, recorded append-only in the store, and the rules ingest applies.

A request names documents by source (`source`), by id (`doc_id`, the ingest ids
`<source>:<hash>`) or by a regular expression over their text (`match`, Python `re` syntax), with a
reason. Each is one JSON file `erasure/requests/<id>.json`, written once and never changed: the
log of what was asked, when, why, by whom and what it matched then. A `match` request keeps its
pattern, because every later ingest must keep applying it: the log is the suppression list, and
the only place under the store that keeps the pattern (keys and manifests hold its hash).

`Rules` is the union of all requests. Every later ingest leaves the documents they match out
(counted, never kept, not even as rejects), and the rules are part of ingest's key (`key_part`),
so no cached artifact from before a request is served again. What was built from the erased
documents is found through the lineage (llmflow/erasure_lineage.py) and deleted by `purge`
(llmflow/purge.py).
"""

from __future__ import annotations

import getpass
import hashlib
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from llmflow.config import InputError
from llmflow.store import ArtifactStore

KINDS = ("source", "doc_id", "match")
REQUESTS = ("erasure", "requests")  # folder of the request log under the store root


class ErasureRequest(BaseModel):
    """One erasure request, as recorded. `matched` is what it matched when it was recorded
    (documents by source, artifacts, registry versions, feedback records): keys and counts only."""

    id: str
    created: float
    kind: Literal["source", "doc_id", "match"]
    values: list[str]
    reason: str = ""
    requested_by: str = ""
    matched: dict[str, Any] = {}


def check_pattern(pattern: str) -> re.Pattern[str]:
    """The compiled `--match` pattern, or an InputError saying what is wrong with it."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise InputError(f"--match {pattern!r} is not a valid regular expression: {e}") from None
    if rx.search("") is not None:
        raise InputError(
            f"--match {pattern!r} matches the empty string, hence every document: make it more specific"
        )
    return rx


def source_of(doc_id: str) -> str:
    """The source named by an ingest document id (`<source>:<hash>`)."""
    return doc_id.rsplit(":", 1)[0]


def new_request(kind: str, values: list[str], reason: str = "") -> ErasureRequest:
    """A request, validated: one source name, ingest document ids, or one valid pattern."""
    values = [v.strip() for v in values if v and v.strip()]
    if kind not in KINDS:
        raise InputError(f"unknown erasure kind {kind!r}: one of {', '.join(KINDS)}")
    if not values:
        raise InputError(f"--{kind.replace('_', '-')} needs a value")
    if kind in ("source", "match") and len(values) != 1:
        raise InputError(f"--{kind} takes one value, got {len(values)}")
    if kind == "doc_id":
        bad = [v for v in values if ":" not in v]
        if bad:
            raise InputError(f"--doc-id {bad[0]!r} is not a document id (<source>:<hash>, as ingest writes)")
        values = sorted(set(values))
    if kind == "match":
        check_pattern(values[0])
    now = time.time()
    rid = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + uuid.uuid4().hex[:8]
    return ErasureRequest(id=rid, created=now, kind=kind, values=values, reason=reason, requested_by=_user())  # type: ignore[arg-type]


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container without one): record none
        return ""


def record(store: ArtifactStore, request: ErasureRequest) -> str:
    """Append a request to the log (a new file, never an existing one); returns its path."""
    path = store.path(*REQUESTS, f"{request.id}.json")
    if store.fs.exists(path):
        raise FileExistsError(f"erasure request {request.id} is already recorded")
    store.write_json(request.model_dump(mode="json"), *REQUESTS, f"{request.id}.json")
    return path


def load_requests(store: ArtifactStore) -> list[ErasureRequest]:
    """Every recorded request, oldest first."""
    base = store.path(*REQUESTS)
    if not store.fs.exists(base):
        return []
    out = []
    for p in store.fs.ls(base, detail=False):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        if name.endswith(".json") and not name.startswith("."):
            doc = store.read_json(*REQUESTS, name)
            if doc is not None:
                out.append(ErasureRequest.model_validate(doc))
    return sorted(out, key=lambda r: (r.created, r.id))


@dataclass
class Rules:
    """The union of erasure requests, as ingest and the lineage walk apply them."""

    sources: dict[str, str] = field(default_factory=dict)  # source name -> request id
    doc_ids: dict[str, str] = field(default_factory=dict)  # document id -> request id
    patterns: list[tuple[re.Pattern[str], str]] = field(default_factory=list)  # (pattern, request id)

    @classmethod
    def of(cls, requests: list[ErasureRequest]) -> Rules:
        rules = cls()
        for r in requests:
            if r.kind == "source":
                rules.sources.setdefault(r.values[0], r.id)
            elif r.kind == "doc_id":
                for v in r.values:
                    rules.doc_ids.setdefault(v, r.id)
            else:
                rules.patterns.append((re.compile(r.values[0]), r.id))
        return rules

    @classmethod
    def load(cls, store: ArtifactStore) -> Rules:
        return cls.of(load_requests(store))

    def __bool__(self) -> bool:
        return bool(self.sources or self.doc_ids or self.patterns)

    def key_part(self) -> dict[str, list[str]]:
        """What the rules erase, canonical (no request ids, no times): part of ingest's key. Patterns
        appear as hashes: the key is written into manifests, and a pattern can be the personal
        data itself (a name, an address), which only the request log may keep."""
        return {"sources": sorted(self.sources), "doc_ids": sorted(self.doc_ids), "match": self._hashes()}

    def _hashes(self) -> list[str]:
        return sorted({hashlib.sha256(p.pattern.encode()).hexdigest() for p, _ in self.patterns})

    def for_source(self, name: str) -> dict[str, Any] | None:
        """What applies to one source (part of its ingest part's key); None when nothing does."""
        if name in self.sources:
            return {"source": True}
        ids = sorted(i for i in self.doc_ids if source_of(i) == name)
        match = self._hashes()
        return {"doc_ids": ids, "match": match} if ids or match else None

    def erases(self, doc_id: str | None, source: str | None, text: str | None) -> str | None:
        """The id of the request that erases this document, or None."""
        if source is not None and source in self.sources:
            return self.sources[source]
        if doc_id is not None and doc_id in self.doc_ids:
            return self.doc_ids[doc_id]
        if text:
            for rx, rid in self.patterns:
                if rx.search(text):
                    return rid
        return None

    def matches_text(self, text: str | None) -> str | None:
        """The id of the `match` request whose pattern occurs in `text`, or None."""
        if text:
            for rx, rid in self.patterns:
                if rx.search(text):
                    return rid
        return None
