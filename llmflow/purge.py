"""`purge`: delete what holds erased data (`llmflow gc --erased`) and report what was removed.

What goes, for the union of the recorded erasure requests (llmflow/erasure.py):

- every artifact that holds or was built from an erased document (llmflow/erasure_lineage.py),
  with its scratch folder `work/<step>/<key>` (training checkpoints of an interrupted run);
- scratch folders that belong to no artifact (a run that never finished) and are older than the
  latest request, since nothing says what they were trained on; younger ones started after it;
- staging leftovers of interrupted writes (`.tmp-*` of processes that are gone, `*.old-*`);
- feedback records (generations and feedback) served by an erased version or matching a
  `match` request; the SQLite file is then vacuumed with `secure_delete`, so deleted rows leave
  no bytes behind in the file or its write-ahead log.

It never deletes an artifact that a registry version not marked erased still stands on (its
fine-tune, evaluation or recorded lineage): that one is kept and named in the report. Erased
versions are retired (off every alias and the rollback stack). What was removed is recorded as
`erasure/purges/<id>.json` (keys and counts only).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from llmflow.erasure import Rules, load_requests
from llmflow.erasure_lineage import (
    Affected,
    Served,
    find_affected,
    needed_keys,
    registry_names,
    write_banner,
)
from llmflow.registry import Registry
from llmflow.store import ArtifactStore, remove_stale_staging

PURGES = ("erasure", "purges")


def kept_for(store: ArtifactStore, aff: Affected) -> dict[tuple[str, str], list[str]]:
    """Tainted artifacts that a version not marked erased still stands on: artifact -> `name vN`."""
    out: dict[tuple[str, str], list[str]] = {}
    by_key = {k: art for art in aff.artifacts for k in [art[1]]}
    for name in registry_names(store):
        for e in Registry(store, name).list():
            if e.get("erased"):
                continue
            for k in needed_keys(e) & set(by_key):
                out.setdefault(by_key[k], []).append(f"{name} v{e['version']}")
    return out


def _dir_size(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, f))
    return total


def _oldest_mtime(path: str) -> float:
    times = [os.path.getmtime(path)]
    for root, _, files in os.walk(path):
        times += [os.path.getmtime(os.path.join(root, f)) for f in files]
    return min(times)


def purge(
    store: ArtifactStore,
    dry_run: bool = False,
    feedback_url: str | None = None,
    on_artifact=None,
    elsewhere=None,
) -> dict[str, Any]:
    """Delete what the erasure requests reach; returns the report (what was, or would be, removed).

    `on_artifact(step, key)` is called for each deleted artifact (the command line removes
    Prefect's cache record of it there); `elsewhere(rules, doc_ids, dry_run)` deletes copies
    outside the store (the command line: the Prefect server's UI artifacts) and returns its report.
    """
    requests = load_requests(store)
    rules = Rules.of(requests)
    report: dict[str, Any] = {
        "requests": [r.id for r in requests],
        "dry_run": dry_run,
        "artifacts": [],
        "kept": {},
        "work": [],
        "staging": [],
        "versions": {},
        "feedback": {},
        "bytes": 0,
    }
    if not requests:
        return report
    # Feedback served by an erased version, and what was built from it (exports, merged task data)
    marked = {
        str(e["version"]) for n in registry_names(store) for e in Registry(store, n).list() if e.get("erased")
    }
    feedback = purge_feedback(store, rules, marked, feedback_url, dry_run=True)
    aff = find_affected(store, rules, Served(marked, set(feedback.pop("feedback_ids", []))))
    if elsewhere is not None:  # before the artifacts go: the documents' ids are read from them
        report["elsewhere"] = elsewhere(rules, {i for ids in aff.documents.values() for i in ids}, dry_run)
    kept = kept_for(store, aff)
    report["kept"] = {f"{s}/{k}": v for (s, k), v in sorted(kept.items())}
    for step, key in sorted(aff.artifacts - set(kept)):
        path = store.artifact_path(step, key)
        work = store.path("work", step, key)
        size = _dir_size(path) if store.is_local else 0
        report["artifacts"].append({"artifact": f"{step}/{key}", "bytes": size})
        report["bytes"] += size
        if store.is_local and os.path.isdir(work):
            report["work"].append(f"{step}/{key}")
            report["bytes"] += _dir_size(work)
        if not dry_run:
            store.delete(step, key)
            shutil.rmtree(work, ignore_errors=True)
            if on_artifact is not None:
                on_artifact(step, key)
    if store.is_local:
        report["work"] += _orphan_work(store, aff, max(r.created for r in requests), dry_run)
        report["staging"] = _staging(store, dry_run)
    report["versions"] = _retire(store, dry_run)
    report["feedback"] = feedback if dry_run else purge_feedback(store, rules, marked, feedback_url, False)
    report["feedback"].pop("feedback_ids", None)
    if not dry_run:
        rid = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
        store.write_json({"id": rid, "time": time.time(), **report}, *PURGES, f"{rid}.json")
        report["record"] = store.path(*PURGES, f"{rid}.json")
    return report


def _orphan_work(store: ArtifactStore, aff: Affected, since: float, dry_run: bool) -> list[str]:
    """Scratch folders of no complete artifact, older than the latest request: removed."""
    base = store.path("work")
    out = []
    if not os.path.isdir(base):
        return out
    for step in sorted(os.listdir(base)):
        for key in sorted(os.listdir(os.path.join(base, step))):
            path = os.path.join(base, step, key)
            if (step, key) in aff.artifacts or store.manifest(step, key, verify=False) is not None:
                continue
            if _oldest_mtime(path) < since:
                out.append(f"{step}/{key} (unfinished run older than the request)")
                if not dry_run:
                    shutil.rmtree(path, ignore_errors=True)
    return out


def _staging(store: ArtifactStore, dry_run: bool) -> list[str]:
    base = store.path("artifacts")
    if dry_run or not os.path.isdir(base):
        return []
    out = []
    for step in sorted(os.listdir(base)):
        out += remove_stale_staging(os.path.join(base, step), ".tmp-", old=True)
    return out


def _retire(store: ArtifactStore, dry_run: bool) -> dict[str, list[dict[str, Any]]]:
    """Erased versions: off their aliases, marked purged, their cards updated."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name in registry_names(store):
        reg = Registry(store, name)
        for e in reg.list():
            if not e.get("erased"):
                continue
            lost = e["aliases"] if dry_run else reg.retire(e["version"])
            if not dry_run:
                write_banner(store, reg, e["version"])
            out.setdefault(name, []).append({"version": e["version"], "aliases_removed": lost})
    return out


def purge_feedback(
    store: ArtifactStore, rules: Rules, versions: set[str], url: str | None, dry_run: bool
) -> dict[str, Any]:
    """Delete the generations and feedback served by one of `versions` or matching a pattern;
    returns the counts per table and the deleted `feedback_ids`."""
    from llmflow.feedback import FeedbackStore

    url = url or os.environ.get("LLMFLOW_FEEDBACK_URL") or None
    if url is None and (not store.is_local or not Path(store.path("feedback", "feedback.db")).exists()):
        return {"store": None}
    fb = FeedbackStore(url, home=store.home)
    try:
        out: dict[str, Any] = {"store": fb.display_url}
        with fb.engine.begin() as c:
            if c.dialect.name == "sqlite":
                c.exec_driver_sql("PRAGMA secure_delete=ON")
            for table, text_cols in (
                (fb.generations, ("prompt", "response")),
                (fb.feedback, ("prompt", "response", "correction", "preferred")),
            ):
                cols = [table.c.id, table.c.model_version, *(table.c[n] for n in text_cols)]
                ids = [
                    row[0]
                    for row in c.execute(table.select().with_only_columns(*cols))
                    if row[1] in versions or any(rules.matches_text(v) for v in row[2:])
                ]
                out[table.name] = len(ids)
                if table is fb.feedback:
                    out["feedback_ids"] = ids
                if ids and not dry_run:
                    for i in range(0, len(ids), 500):
                        c.execute(table.delete().where(table.c.id.in_(ids[i : i + 500])))
        if fb.engine.dialect.name == "sqlite" and not dry_run:
            # Deleted rows linger in free pages and the write-ahead log until the file is rebuilt.
            raw = fb.engine.raw_connection()  # the driver's connection, outside SQLAlchemy's BEGIN
            try:
                cur = raw.cursor()
                for sql in ("PRAGMA secure_delete=ON", "VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"):
                    cur.execute(sql)
                cur.close()
            finally:
                raw.close()
        return out
    finally:
        fb.close()
