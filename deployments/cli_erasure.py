"""`llmflow forget` (record an erasure request, mark what was built from the data, optionally
retrain without it) and `llmflow gc --erased` (delete what holds the erased data). Docs: README,
"Removing data"; the logic is in llmflow/erasure.py, llmflow/erasure_lineage.py, llmflow/purge.py.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import typer

from deployments.cli_app import HomeOpt, PresetOpt, SetOpt, app, console, fail, pipeline_config, writable_home
from llmflow.config import InputError


def _short(art: str) -> str:
    step, _, key = art.partition("/")
    return f"{step}/{key[:12]}"


def _print_affected(summary: dict[str, Any], marked: list[str]) -> None:
    docs = summary["documents"]
    if docs:
        console.print("Documents: " + ", ".join(f"{n:,} from {s}" for s, n in docs.items()), highlight=False)
    by_step: dict[str, list[str]] = {}
    for art in summary["artifacts"]:
        by_step.setdefault(art.split("/")[0], []).append(art)
    console.print(f"Artifacts built from them: {len(summary['artifacts'])}", highlight=False)
    for step, arts in sorted(by_step.items()):
        console.print(f"  {step}: " + ", ".join(_short(a).split("/")[1] for a in arts), highlight=False)
    versions = summary["versions"]
    if versions:
        console.print(
            "Registry versions trained on them (marked erased): "
            + "; ".join(f"{n} " + ", ".join(f"v{v}" for v in vs) for n, vs in versions.items()),
            highlight=False,
        )
    else:
        console.print("No registry version was trained on them.")
    if marked:
        console.print("Newly marked: " + ", ".join(marked), highlight=False)


@app.command()
def forget(
    source: Annotated[
        str | None, typer.Option("--source", help="Forget every document of this source.")
    ] = None,
    doc_id: Annotated[
        list[str] | None, typer.Option("--doc-id", help="Forget this document (an ingest id; repeatable).")
    ] = None,
    match: Annotated[
        str | None, typer.Option("--match", help="Forget every document whose text matches this regex.")
    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded with the request).")] = "",
    retrain: Annotated[
        bool, typer.Option("--retrain", help="Then run the pipeline without the data, gate, promote.")
    ] = False,
    config: PresetOpt = "demo",
    set: SetOpt = None,
    home: HomeOpt = None,
) -> None:
    """Forget a source, documents or a person: record the request (append-only), exclude the data
    from every later ingest, and report and mark the artifacts and model versions built from it.

    Then `llmflow gc --erased` deletes them. A selector that matches nothing records nothing.
    """
    chosen = [(k, v) for k, v in (("source", [source] if source else []), ("doc_id", doc_id or []),
                                  ("match", [match] if match else [])) if v]  # fmt: skip
    if len(chosen) > 1:
        fail("give one of --source, --doc-id or --match per request")
    if not chosen and not retrain:
        fail("say what to forget: --source NAME, --doc-id ID (repeatable) or --match PATTERN")
    cfg = pipeline_config(config, set) if retrain else None
    home = writable_home(home)
    if chosen:
        _record(chosen[0][0], chosen[0][1], reason, home)
    if retrain:
        from deployments.cli import _run_flow

        console.print("Retraining without the erased data ...")
        assert cfg is not None
        _run_flow("gate", config, set, False, home)


def _record(kind: str, values: list[str], reason: str, home: str) -> None:
    from llmflow.erasure import Rules, new_request, record
    from llmflow.erasure_lineage import find_affected, mark
    from llmflow.purge import purge_feedback
    from llmflow.store import ArtifactStore

    try:
        req = new_request(kind, values, reason)
    except InputError as e:
        fail(str(e))
    store = ArtifactStore(home)
    rules = Rules.of([req])
    aff = find_affected(store, rules)
    summary = aff.summary()
    feedback = purge_feedback(store, rules, set(), None, dry_run=True) if rules.patterns else {}
    feedback.pop("feedback_ids", None)
    n_feedback = sum(v for k, v in feedback.items() if k != "store")
    what = {"source": f"source {values[0]!r}", "doc_id": "the documents", "match": f"pattern {values[0]!r}"}
    if kind == "doc_id":
        found = {i for ids in aff.documents.values() for i in ids}
        missing = [v for v in req.values if v not in found]
        if missing:
            console.print(f"Not in any stored document: {', '.join(missing)}", highlight=False)
        req.values = [v for v in req.values if v in found]
    if not aff.artifacts and not n_feedback:
        console.print(
            f"Nothing in {os.path.abspath(home)} matches {what[kind]}: no request recorded, nothing changed.",
            highlight=False,
        )
        return
    req.matched = {**summary, "feedback": {k: v for k, v in feedback.items() if k != "store"}}
    path = record(store, req)
    marked = mark(store, aff, [req.id])
    console.print(f"[bold]Recorded erasure request {req.id}[/] ({what[kind]}): {path}", highlight=False)
    console.print("Every later ingest leaves these documents out.")
    _print_affected(summary, marked)
    if n_feedback:
        console.print(f"Feedback records matching: {n_feedback:,}", highlight=False)
    console.print(
        "Next: [bold]llmflow forget --retrain[/] to train and promote a model without the data, then "
        "[bold]llmflow gc --erased[/] to delete what holds it."
    )


def _prefect_record_remover(root: str):
    """Deletes Prefect's cache record of a deleted artifact of the store at `root` (the local result
    storage), and the record an earlier llmflow wrote without the store in its name."""
    try:
        from prefect.settings import get_current_settings

        storage = get_current_settings().results.local_storage_path
    except Exception:  # no Prefect settings: no records to remove
        return None

    from tasks.common import prefect_cache_key

    def remove(step: str, key: str) -> None:
        for name in (prefect_cache_key(root, step, key), f"llmflow-{step}-{key}"):
            path = os.path.join(os.path.expanduser(str(storage)), name)
            if os.path.exists(path):
                os.remove(path)

    return remove


def prefect_artifacts(rules, doc_ids: set[str], dry_run: bool) -> dict[str, Any]:
    """Delete the Prefect server's UI artifacts (step reports and tables) that name an erased
    document or source, or match an erasure pattern: the data report shows example rejects.
    Asks the server at PREFECT_API_URL or, without one, the local database the temporary server
    of `llmflow run` uses (PREFECT_HOME); neither: nothing to do."""

    from prefect.settings import PREFECT_API_URL, get_current_settings

    server = PREFECT_API_URL.value()
    if not server:
        db = get_current_settings().server.database.connection_url
        local = db.get_secret_value() if db is not None else ""
        path = local.split("sqlite+aiosqlite:///", 1)[-1] if local.startswith("sqlite") else ""
        if not path or not os.path.exists(path):
            return {"server": None}
        server = f"local database {path}"
    try:
        hits = _matching_artifacts(rules, doc_ids, dry_run)
    except Exception as e:  # the store is purged regardless; say what was not checked
        return {"server": server, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    return {"server": server, "artifacts": len(hits)}


def _matching_artifacts(rules, doc_ids: set[str], dry_run: bool) -> list[Any]:
    import re

    from prefect.client.orchestration import get_client

    sources = re.compile("|".join(rf"\b{re.escape(s)}:[0-9a-f]{{20}}\b" for s in rules.sources) or "(?!)")
    names = doc_ids | set(rules.doc_ids)
    hits = []
    with get_client(sync_client=True) as client:
        offset = 0
        while batch := client.read_artifacts(limit=200, offset=offset):
            for a in batch:
                text = f"{a.description or ''}\n{a.data if isinstance(a.data, str) else json.dumps(a.data)}"
                if sources.search(text) or rules.matches_text(text) or any(i in text for i in names):
                    hits.append(a.id)
            offset += len(batch)
        if not dry_run:
            for aid in hits:
                client.delete_artifact(aid)
    return hits


@app.command()
def gc(
    erased: Annotated[
        bool,
        typer.Option("--erased", help="Delete the artifacts, checkpoints and feedback holding erased data."),
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would be deleted.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    home: HomeOpt = None,
) -> None:
    """Delete what holds erased data (`--erased`): the artifacts built from it, their checkpoints,
    the feedback records of erased versions, and retire those versions. Never an artifact that a
    version not marked erased still needs."""
    if not erased:
        fail("say what to collect: --erased (the data of `llmflow forget` requests)")
    from llmflow.purge import purge
    from llmflow.store import ArtifactStore

    home = writable_home(home)
    from deployments.cli import _prefect_env

    _prefect_env()  # the temporary server (no PREFECT_API_URL) gets as long to start as in `llmflow run`
    store = ArtifactStore(home)
    report = purge(
        store,
        dry_run=dry_run,
        on_artifact=None if dry_run else _prefect_record_remover(store.root),
        elsewhere=prefect_artifacts,
    )
    if as_json:
        console.print_json(json.dumps(report, default=str))
        return
    if not report["requests"]:
        console.print("No erasure request is recorded: nothing to delete.")
        return
    verb = "Would delete" if dry_run else "Deleted"
    console.print(
        f"{verb} {len(report['artifacts'])} artifacts ({report['bytes'] / 1e6:.1f} MB) for "
        f"{len(report['requests'])} erasure request(s):",
        highlight=False,
    )
    by_step: dict[str, int] = {}
    for a in report["artifacts"]:
        by_step[a["artifact"].split("/")[0]] = by_step.get(a["artifact"].split("/")[0], 0) + 1
    for step, n in sorted(by_step.items()):
        console.print(f"  {step}: {n}", highlight=False)
    if report["work"]:
        console.print(f"  scratch folders (checkpoints): {len(report['work'])}", highlight=False)
    if report["staging"]:
        console.print(f"  staging leftovers: {len(report['staging'])}", highlight=False)
    fb = report["feedback"]
    if fb.get("store"):
        console.print(
            f"  feedback: {fb.get('llmflow_generations', 0)} generations, "
            f"{fb.get('llmflow_feedback', 0)} feedback records ({fb['store']})",
            highlight=False,
        )
    ui = report.get("elsewhere") or {}
    if ui.get("error"):
        console.print(
            f"[yellow]The Prefect UI artifacts were not checked[/] ({ui['server']}: {ui['error']}): "
            "re-run with PREFECT_API_URL set to a running server",
            highlight=False,
        )
    elif ui.get("server"):
        console.print(f"  Prefect UI artifacts: {ui['artifacts']} ({ui['server']})", highlight=False)
    for name, versions in report["versions"].items():
        for v in versions:
            lost = f", removed from {', '.join(v['aliases_removed'])}" if v["aliases_removed"] else ""
            console.print(f"  {name} v{v['version']}: retired{lost}", highlight=False)
    for art, needed in report["kept"].items():
        console.print(
            f"[yellow]Kept {_short(art)}[/]: {', '.join(needed)} still needs it and is not marked "
            "erased; run `llmflow forget` again to mark it.",
            highlight=False,
        )
    if report.get("record"):
        console.print(f"Report: {report['record']}", highlight=False)
