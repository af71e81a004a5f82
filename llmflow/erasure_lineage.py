"""What was built from erased documents: the artifacts that hold them, what descends from those
through the lineage, and the registry versions trained on them.

Roots are the artifacts whose own files hold a document the rules erase: every Parquet file
with `id`/`source`/`text` columns (ingest parts and shards, content-addressed doc shards,
prepare's outputs) is scanned; for `match` rules every text file (JSONL, JSON, CSV, markdown)
and Parquet string column of the remaining artifacts too (task data, feedback exports,
evaluation samples), since a pattern can occur outside the documents. Then every artifact whose
manifest names a tainted artifact among its `inputs` is tainted, transitively: the prepare
outputs and dedup index, the tokenizer, the packed token shards (token ids, which no text search
finds), the pretrained and fine-tuned models, their evaluations and gate decisions.

A registry version is affected when its fine-tune, its evaluation or any artifact of its
recorded lineage is tainted. `mark` records that on the version (`erased`) and on its model card.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from llmflow.erasure import Rules
from llmflow.registry import Registry
from llmflow.store import MANIFEST, ArtifactStore

DOC_COLUMNS = ("id", "source", "text")
TEXT_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".md", ".txt")
BANNER_START = "<!-- llmflow:erased -->"
BANNER_END = "<!-- /llmflow:erased -->"

Artifact = tuple[str, str]  # (step, key)


@dataclass
class Affected:
    """The reach of a set of erasure rules in one store."""

    roots: dict[Artifact, set[str]] = field(default_factory=dict)  # artifact -> request ids found in it
    artifacts: set[Artifact] = field(default_factory=set)  # roots and everything built from them
    documents: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # source -> doc ids
    versions: dict[str, list[int]] = field(default_factory=dict)  # registered model name -> versions

    @property
    def keys(self) -> set[str]:
        return {k for _, k in self.artifacts}

    def by_step(self) -> dict[str, int]:
        return dict(sorted(Counter(s for s, _ in self.artifacts).items()))

    def summary(self) -> dict[str, Any]:
        """Keys and counts (no document text): what a request records as `matched`."""
        return {
            "documents": {s: len(ids) for s, ids in sorted(self.documents.items())},
            "artifacts": sorted(f"{s}/{k}" for s, k in self.artifacts),
            "versions": {n: sorted(v) for n, v in sorted(self.versions.items())},
        }


def all_manifests(store: ArtifactStore) -> dict[Artifact, dict[str, Any]]:
    """Every complete artifact of the store by (step, key), files unverified."""
    base = store.path("artifacts")
    if not store.fs.exists(base):
        return {}
    out = {}
    for p in store.fs.ls(base, detail=False):
        step = p.rstrip("/").rsplit("/", 1)[-1]
        if step.startswith("."):
            continue
        for m in store.list(step):
            out[(step, m.get("key") or "")] = m
    return {k: v for k, v in out.items() if k[1]}


def _files(store: ArtifactStore, art: Artifact, manifest: dict[str, Any], suffixes: tuple[str, ...]):
    files = manifest.get("files") or {}
    names = files if isinstance(files, list) else list(files)
    base = store.local_path(art)
    return [base / n for n in sorted(names) if n.endswith(suffixes) and n != MANIFEST]


def _scan_parquet(path, rules: Rules, documents: dict[str, set[str]]) -> set[str]:
    """Request ids of the rules that match a row of a Parquet file: a document (id, source, text),
    or for `match` rules any string column; the documents found are added to `documents`."""
    f = pq.ParquetFile(path)
    names = f.schema_arrow.names
    found: set[str] = set()
    if set(DOC_COLUMNS) <= set(names):
        for batch in f.iter_batches(batch_size=2048, columns=list(DOC_COLUMNS)):
            for row in batch.to_pylist():
                rid = rules.erases(row["id"], row["source"], row["text"])
                if rid is not None:
                    found.add(rid)
                    documents[row["source"] or "?"].add(row["id"])
        return found
    strings = [n for n in names if str(f.schema_arrow.field(n).type) in ("string", "large_string")]
    if not rules.patterns or not strings:
        return found
    for batch in f.iter_batches(batch_size=2048, columns=strings):
        for col in batch.columns:
            found |= {rid for v in col.to_pylist() if (rid := rules.matches_text(v)) is not None}
    return found


FEEDBACK_ID = re.compile(r"^feedback-\d+")  # ids of exported feedback rows (llmflow/feedback.py)


def _scan_text(path, rules: Rules, served: Served | None) -> set[str]:
    found = set()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            rid = rules.matches_text(line)
            if rid is not None:
                found.add(rid)
            elif served and path.suffix == ".jsonl" and served.holds(line):
                found.add("feedback")
    return found


@dataclass
class Served:
    """Feedback that goes with erased versions: the versions that served it, and the ids of its
    rows (exports and the task data merged from them carry `feedback-<id>`)."""

    versions: set[str] = field(default_factory=set)
    feedback_ids: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.versions or self.feedback_ids)

    def holds(self, line: str) -> bool:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return False
        if not isinstance(row, dict):
            return False
        if str(row.get("model_version")) in self.versions:
            return True
        m = FEEDBACK_ID.match(str(row.get("id", "")))
        return m is not None and int(m.group()[len("feedback-") :]) in self.feedback_ids


def find_affected(store: ArtifactStore, rules: Rules, served: Served | None = None) -> Affected:
    """The artifacts that hold or were built from what `rules` erase (and, with `served`, the
    feedback of erased versions), and the versions trained on them.

    Artifacts are visited oldest first, so an artifact built from a tainted one is tainted before
    its turn comes and needs no scan of its own.
    """
    aff = Affected()
    if not rules and not served:
        return aff
    manifests = all_manifests(store)
    children: dict[str, list[Artifact]] = defaultdict(list)  # parent key -> children
    for art, m in manifests.items():
        for ref in (m.get("inputs") or {}).values():
            children[ref["key"]].append(art)

    def taint(root: Artifact) -> None:
        todo = [root]
        while todo:
            art = todo.pop()
            if art not in aff.artifacts:
                aff.artifacts.add(art)
                todo.extend(children.get(art[1], []))

    for art in sorted(manifests, key=lambda a: (manifests[a].get("created", 0), a)):
        if art in aff.artifacts:
            continue
        found: set[str] = set()
        for path in _files(store, art, manifests[art], (".parquet",)):
            found |= _scan_parquet(path, rules, aff.documents)
        if rules.patterns or served:
            for path in _files(store, art, manifests[art], TEXT_SUFFIXES):
                found |= _scan_text(path, rules, served)
        if found:
            aff.roots[art] = found
            taint(art)
    aff.versions = affected_versions(store, aff.keys)
    return aff


def registry_names(store: ArtifactStore) -> list[str]:
    base = store.path("registry")
    if not store.fs.exists(base):
        return []
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in store.fs.ls(base, detail=False)]
    return sorted(
        n for n in names if not n.startswith(".") and store.fs.exists(store.path("registry", n, "index.json"))
    )


def needed_keys(entry: dict[str, Any]) -> set[str]:
    """The artifact keys a registry version stands on: its model, evaluation and lineage."""
    keys = {entry.get("finetune_key"), entry.get("eval_key")}
    keys |= set(((entry.get("lineage") or {}).get("artifacts") or {}).values())
    return {k for k in keys if k}


def affected_versions(store: ArtifactStore, keys: set[str]) -> dict[str, list[int]]:
    out = {}
    for name in registry_names(store):
        hit = [e["version"] for e in Registry(store, name).list() if needed_keys(e) & keys]
        if hit:
            out[name] = hit
    return out


def mark(store: ArtifactStore, aff: Affected, request_ids: list[str]) -> list[str]:
    """Record on each affected version (and its model card) that it was built from erased data;
    returns `name vN` for each version newly marked."""
    marked = []
    for name, versions in aff.versions.items():
        reg = Registry(store, name)
        for v in versions:
            if reg.mark_erased(v, request_ids):
                marked.append(f"{name} v{v}")
            write_banner(store, reg, v)
    return marked


def write_banner(store: ArtifactStore, reg: Registry, version: int) -> None:
    """Put (or refresh) the erasure notice at the top of a version's model card, after its metadata."""
    entry = reg.get(version)
    erased = entry.get("erased") or {}
    path = reg.card_path(version)
    try:
        with store.fs.open(path, "r") as f:
            card = f.read()
    except FileNotFoundError:
        card = ""
    if BANNER_START in card:
        head, _, rest = card.partition(BANNER_START)
        card = head + rest.partition(BANNER_END)[2].lstrip("\n")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(erased.get("marked", time.time())))
    purged = erased.get("purged")
    banner = (
        f"{BANNER_START}\n> **Erased data.** This version was trained on data that erasure request(s) "
        f"{', '.join(f'`{r}`' for r in erased.get('requests', []))} removed (marked {when}). Do not "
        "serve or build on it; `llmflow forget --retrain` trains a replacement without the data."
        + (
            f" Its artifacts were deleted by `llmflow gc --erased` on "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(purged))}."
            if purged
            else " `llmflow gc --erased` deletes its artifacts."
        )
        + f"\n{BANNER_END}\n\n"
    )
    if card.startswith("---\n"):  # keep the YAML metadata first, as the Hub expects
        end = card.index("\n---\n", 4) + 5 if "\n---\n" in card[4:] else 0
        card = card[:end] + "\n" + banner + card[end:].lstrip("\n")
    else:
        card = banner + card
    if store.is_local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(card)
        os.replace(tmp, path)
    else:
        with store.fs.open(path, "w") as f:
            f.write(card)


def dumps(aff: Affected) -> str:
    return json.dumps(aff.summary(), indent=2)
