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
    feedback = purge_feedback(store, rules, {}, None, dry_run=True) if rules.patterns else {}
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


def _prefect_record_remover():
    """Deletes Prefect's cache record of a deleted artifact (the local result storage)."""
    try:
        from prefect.settings import get_current_settings

        storage = get_current_settings().results.local_storage_path
    except Exception:  # no Prefect settings: no records to remove
        return None

    def remove(step: str, key: str) -> None:
        path = os.path.join(os.path.expanduser(str(storage)), f"llmflow-{step}-{key}")
        if os.path.exists(path):
            os.remove(path)

    return remove


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
    store = ArtifactStore(home)
    report = purge(store, dry_run=dry_run, on_artifact=None if dry_run else _prefect_record_remover())
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
