"""Erasure requests, the ingest that leaves erased documents out, the lineage walk and the purge
(the end-to-end canary test is tests/test_forget_e2e.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llmflow.config import IngestConfig, InputError, PrepareConfig, SourceConfig
from llmflow.erasure import Rules, check_pattern, load_requests, new_request, record
from llmflow.erasure_lineage import find_affected, mark
from llmflow.purge import purge, purge_feedback
from llmflow.registry import Registry, RegistryError
from llmflow.step import run_step
from llmflow.store import ArtifactStore
from tasks.ingest import ingest_extra, ingest_step
from tasks.prepare import prepare_shard_step, shard_config, split_into_shards

ROOT = Path(__file__).resolve().parents[1]
LONG = "The quick brown fox jumps over the lazy dog and the cat sat on the mat in the sun. " * 2
CANARY = "Quibbleton-Marsh-4412"


def _sources(tmp_path: Path) -> list[SourceConfig]:
    for name, texts in {"a": [f"{LONG} {CANARY} one.", f"{LONG} two."], "b": [f"{LONG} three."]}.items():
        (tmp_path / name).mkdir()
        for i, t in enumerate(texts):
            (tmp_path / name / f"{i}.txt").write_text(t)
    return [SourceConfig(name=n, kind="text", path=str(tmp_path / n)) for n in ("a", "b")]


def _ingest(cfg: IngestConfig, store: ArtifactStore):
    return run_step("ingest", 1, ingest_step, cfg, store=store, extra=ingest_extra(cfg, store.home))


def _texts(store: ArtifactStore, ref) -> list[str]:
    return [
        r["text"]
        for f in sorted((store.local_path(ref) / "docs").glob("*.parquet"))
        for r in pq.read_table(f).to_pylist()
    ]


def _forget(store: ArtifactStore, kind: str, *values: str):
    req = new_request(kind, list(values), "test")
    record(store, req)
    return req


@pytest.mark.parametrize(
    ("kind", "values", "message"),
    [
        ("match", ["("], "not a valid regular expression"),
        ("match", ["x*"], "matches the empty string"),
        ("doc_id", ["nocolon"], "is not a document id"),
        ("source", [" "], "needs a value"),
        ("source", ["a", "b"], "takes one value"),
    ],
)
def test_a_bad_request_is_an_input_error_saying_what_to_change(kind, values, message):
    with pytest.raises(InputError, match=message):
        new_request(kind, values)


def test_requests_are_appended_never_rewritten(store):
    first = _forget(store, "source", "a")
    second = _forget(store, "match", r"\bsecret\b")
    assert [r.id for r in load_requests(store)] == [first.id, second.id]
    with pytest.raises(FileExistsError):
        record(store, first)
    rules = Rules.load(store)
    assert rules.erases("a:1", "a", "x") == first.id and rules.erases("b:1", "b", "a secret") == second.id
    assert rules.erases("b:1", "b", "secretly") is None and check_pattern("x").pattern == "x"


def test_ingest_leaves_erased_documents_out_and_rereads_only_the_sources_they_touch(tmp_path, store):
    cfg = IngestConfig(sources=_sources(tmp_path))
    first = _ingest(cfg, store)
    assert first.stats["documents"] == 3 and first.stats["erased"] == {}
    _forget(store, "match", CANARY)
    with pytest.raises(ValueError, match="not those in this step's key"):
        run_step("ingest", 1, ingest_step, cfg, store=store)  # a caller that did not pass the rules
    second = _ingest(cfg, store)
    assert second.key != first.key and second.status == "ran"
    assert second.stats["documents"] == 2 and second.stats["erased"] == {"a": 1}
    assert not any(CANARY in t for t in _texts(store, second))
    assert not any(CANARY.encode() in p.read_bytes() for p in Path(second.uri).rglob("*") if p.is_file())
    # a later request on source b re-reads nothing: b is skipped, a's part is unchanged
    _forget(store, "source", "b")
    third = _ingest(cfg, store)
    assert third.stats["erased"] == {"a": 1, "b": "all"} and third.stats["by_source"] == {"a": 1}
    assert third.stats["sources_cached"] == 1
    _forget(store, "source", "a")
    with pytest.raises(InputError, match="every document of every source is erased"):
        _ingest(cfg, store)


def test_the_lineage_reaches_what_was_built_from_the_documents_and_purge_spares_what_others_need(
    tmp_path, store
):
    cfg = IngestConfig(sources=_sources(tmp_path), shard_docs=1)  # one document per shard
    docs = _ingest(cfg, store)
    shards = split_into_shards(docs, store)
    pcfg = shard_config(PrepareConfig.model_validate({"decontaminate": {"enabled": False}}))
    prepared = [
        run_step("prepare_shard", 1, prepare_shard_step, pcfg, {"docs": s}, store=store) for s in shards
    ]
    reg = Registry(store, "m")
    for i, p in enumerate(prepared):  # a version per shard, as if trained on that shard alone
        reg.register(
            f"ft{i}", f"/m{i}", lineage={"artifacts": {"prepare_shard": p.key, "doc_shard": shards[i].key}}
        )
    rules = Rules.of([_forget(store, "match", CANARY)])
    aff = find_affected(store, rules)
    tainted = {(s, k) for s, k in aff.artifacts}
    assert ("ingest", docs.key) in tainted and ("prepare_shard", prepared[0].key) in tainted
    assert ("doc_shard", shards[1].key) not in tainted and ("prepare_shard", prepared[1].key) not in tainted
    assert aff.versions == {"m": [1]} and len(aff.documents["a"]) == 1
    # v1 is not marked yet: the purge keeps what it stands on and says so
    report = purge(store)
    assert set(report["kept"]) == {f"prepare_shard/{prepared[0].key}", f"doc_shard/{shards[0].key}"}
    assert store.exists("prepare_shard", prepared[0].key) and not store.exists("ingest", docs.key)
    assert mark(store, find_affected(store, rules), ["r"]) == ["m v1"]
    with pytest.raises(RegistryError, match="built from erased data"):
        reg.promote(1)
    report = purge(store)
    assert not report["kept"] and not store.exists("prepare_shard", prepared[0].key)
    assert store.exists("prepare_shard", prepared[1].key) and store.exists("doc_shard", shards[2].key)
    assert reg.get(1)["erased"]["purged"] and report["versions"] == {
        "m": [{"version": 1, "aliases_removed": []}]
    }
    assert not [p for p in Path(store.root).rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()
                and "erasure" not in p.parts]  # fmt: skip


def test_feedback_of_erased_versions_or_matching_a_pattern_leaves_no_bytes(tmp_path):
    from llmflow.feedback import FeedbackStore

    store = ArtifactStore(tmp_path / "home")
    fb = FeedbackStore(home=store.home)
    fb.record_generation("3", "Who?", f"It was {CANARY}.")  # a later version, matching the pattern
    fb.add_feedback(model_version="1", prompt="Why?", response="Because of the weather.", rating=-1)
    fb.add_feedback(model_version="3", prompt="Fine?", response="Fine.", rating=1)
    fb.close()
    rules = Rules.of([new_request("match", [CANARY])])
    erased = {"1"}  # the versions marked erased
    dry = purge_feedback(store, rules, erased, None, dry_run=True)
    assert dry["llmflow_generations"] == 1 and dry["llmflow_feedback"] == 1
    purge_feedback(store, rules, erased, None, dry_run=False)
    fb = FeedbackStore(home=store.home)
    assert fb.count() == 1 and not fb.known_version("3")
    fb.close()
    folder = Path(store.path("feedback"))
    leaks = [
        p.name
        for p in folder.iterdir()
        if p.is_file() and (CANARY.encode() in p.read_bytes() or b"weather" in p.read_bytes())
    ]
    assert leaks == []


def _cli(*args: str):
    """The real command in this process (typer's runner): a subprocess per case is slow."""
    from typer.testing import CliRunner

    from deployments.cli import app

    return CliRunner().invoke(app, list(args))


def test_a_malformed_pattern_is_one_line_exit_2(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "deployments.cli", "forget", "--match", "(unclosed", "--home", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(errors) == 1, r.stderr
    assert "--match '(unclosed' is not a valid regular expression" in errors[0]
    assert not (tmp_path / "erasure").exists()


def test_forget_and_gc_bad_input_says_what_to_change_and_changes_nothing(tmp_path, store, monkeypatch):
    monkeypatch.setenv("LLMFLOW_HOME", store.home)  # the command sets it; restored after the test
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # no Prefect database for gc to clean
    cfg = IngestConfig(sources=_sources(tmp_path))
    _ingest(cfg, store)
    home = store.home
    for args, message in [
        (["--match", "a?"], "matches the empty string"),
        (["--source", "a", "--match", "x"], "give one of --source, --doc-id or --match"),
        ([], "say what to forget"),
    ]:
        r = _cli("forget", *args, "--home", home)
        assert r.exit_code == 2 and message in " ".join(r.output.split()), r.output
    r = _cli("forget", "--match", "no such person", "--home", home)
    assert r.exit_code == 0 and "no request recorded, nothing changed" in " ".join(r.output.split())
    r = _cli("forget", "--doc-id", "a:0000", "--home", home)
    assert "Not in any stored document: a:0000" in r.output and "nothing changed" in " ".join(
        r.output.split()
    )
    assert load_requests(store) == []
    r = _cli("gc", "--home", home)
    assert r.exit_code == 2 and "--erased" in r.output
    r = _cli("gc", "--erased", "--home", home)
    assert r.exit_code == 0 and "No erasure request" in r.output
    r = _cli("forget", "--match", CANARY, "--reason", "asked by the person", "--home", home)
    assert r.exit_code == 0 and "Recorded erasure request" in r.output, r.output
    assert "1 from a" in r.output and load_requests(store)[0].reason == "asked by the person"
    r = _cli("gc", "--erased", "--dry-run", "--home", home)
    assert r.exit_code == 0 and "Would delete" in r.output and store.exists("ingest", _ingest_key(cfg, store))


def _ingest_key(cfg: IngestConfig, store: ArtifactStore) -> str:
    """The key of the ingest artifact built before the request (the only one in the store)."""
    [m] = store.list("ingest")
    return m["key"]


def test_task_data_leaves_out_examples_a_pattern_matches(tmp_path, store):
    from llmflow.config import TaskDataConfig
    from tasks.task_data import task_data_step, task_extra
    from tests.helpers import task_rows, write_jsonl

    rows = task_rows(12)
    rows[3]["response"] = f"written by {CANARY}"
    cfg = TaskDataConfig(source=str(write_jsonl(tmp_path / "task.jsonl", rows)))
    first = run_step("task_data", 1, task_data_step, cfg, store=store, extra=task_extra(cfg, store.home))
    assert first.stats["erased"] == 0
    rules = Rules.of([_forget(store, "match", CANARY)])
    assert ("task_data", first.key) in find_affected(store, rules).artifacts
    with pytest.raises(ValueError, match="not those in this step's key"):
        run_step("task_data", 1, task_data_step, cfg, store=store)
    second = run_step("task_data", 1, task_data_step, cfg, store=store, extra=task_extra(cfg, store.home))
    assert second.key != first.key and second.stats["erased"] == 1
    splits = ("train", "validation", "test")
    assert sum(second.stats[s] for s in splits) == sum(first.stats[s] for s in splits) - 1
    assert not [p for p in Path(second.uri).rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]


@pytest.mark.usefixtures("prefect_harness")
def test_gc_deletes_the_prefect_ui_artifacts_that_name_erased_documents():
    from prefect import flow
    from prefect.artifacts import create_table_artifact
    from prefect.client.orchestration import get_client

    from deployments.cli_erasure import prefect_artifacts

    @flow
    def reports() -> tuple:
        rows = [{"reason": "filter:gopher_min_words", "id": "gone:0123456789abcdef0123", "text": "a note"}]
        named = create_table_artifact(
            rows, key="erasure-test-rejects", description="prepare: reject-examples"
        )
        other = create_table_artifact(
            [{"id": "kept:0123456789abcdef0123", "text": "x"}], key="erasure-test-kept"
        )
        return named, other

    named, other = reports()
    rules = Rules(sources={"gone": "r1"})
    assert prefect_artifacts(rules, set(), dry_run=True)["artifacts"] >= 1
    report = prefect_artifacts(rules, set(), dry_run=False)
    assert report["artifacts"] >= 1 and report["server"]
    left, offset = set(), 0
    with get_client(sync_client=True) as client:
        while batch := client.read_artifacts(limit=200, offset=offset):
            left |= {a.id for a in batch}
            offset += len(batch)
    assert named not in left and other in left


def test_feedback_exports_of_an_erased_version_go_with_its_feedback(tmp_path):
    from llmflow.feedback import FeedbackStore

    store = ArtifactStore(tmp_path / "home")
    fb = FeedbackStore(home=store.home)
    fb.add_feedback(
        model_version="1", prompt="Who?", response="Nobody.", correction="The author of the note."
    )
    fb.add_feedback(model_version="2", prompt="What?", response="A thing.", correction="A small thing.")
    erased_export = fb.export(store, retrain_id=None)
    fb.close()
    reg = Registry(store, "m")
    for v in (1, 2):
        reg.register(f"ft{v}", f"/m{v}")
    _forget(store, "source", "private")
    reg.mark_erased(1, ["r"])
    report = purge(store)
    assert f"feedback/{erased_export['key']}" in [a["artifact"] for a in report["artifacts"]]
    assert not store.exists("feedback", erased_export["key"])
    assert report["feedback"]["llmflow_feedback"] == 1
    fb = FeedbackStore(home=store.home)
    sft, _ = fb.examples()
    assert [r["model_version"] for r in sft] == ["2"]
    fb.close()
