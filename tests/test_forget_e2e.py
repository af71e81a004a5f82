"""Forgetting a source end to end, through the command line: plant a canary in one source, train,
forget the source and retrain, purge; then no byte under LLMFLOW_HOME holds the canary, every
artifact built from the source is gone (the packed token shards and models hold it as token ids
and weights, which no text search finds), and the new champion's lineage excludes the source."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.livestack import SMOKE_SETS

ROOT = Path(__file__).resolve().parents[1]
CANARY = "Zorblax-Quentworth-7731"  # one made-up name, as a person's name in a private source

SENTENCES = [
    "{c} wrote this note about the garden behind the old library, where the roses grow along the wall.",
    "The meeting with {c} is on Tuesday, and we will talk about the budget for the next school year.",
    "When {c} moved to the city, the first thing she did was to find a quiet place to read in the park.",
    "Our friend {c} likes to cook soup in the winter, and she shares the recipe with all of the neighbours.",
    "It was {c} who found the lost cat in the street and brought it back to the family on the corner.",
    "In the letter, {c} asks about the weather at the lake and whether the boat is still in the shed.",
]


def _llmflow(*args: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, "-m", "deployments.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
    return res


def _files_with(root: Path, needle: bytes) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_forgotten_source_leaves_no_trace_and_the_new_champion_is_clean(tmp_path):
    from prefect.settings import PREFECT_API_URL

    from llmflow.erasure import Rules, load_requests
    from llmflow.erasure_lineage import find_affected
    from llmflow.feedback import FeedbackStore
    from llmflow.registry import Registry
    from llmflow.store import ArtifactStore

    home = tmp_path / "home"
    private = tmp_path / "private"
    private.mkdir()
    for i, s in enumerate(SENTENCES):
        (private / f"note{i}.txt").write_text(" ".join(s.format(c=CANARY) for _ in range(2)) + "\n")
    sources = (
        "ingest.sources=[{name: pydocs, kind: builtin, path: pydocs, license: PSF-2.0, limit: 200}, "
        f"{{name: private, kind: text, path: '{private}', license: unknown}}]"
    )
    sets = [*SMOKE_SETS, sources, "pretrain.max_steps=6", "finetune.max_steps=3", "task_data.limit=200"]
    args = ["--config", "smoke", "--home", str(home), *[a for s in sets for a in ("--set", s)]]
    # the subprocesses use the session's Prefect server instead of starting their own
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "LLMFLOW_HOME": str(home)}

    r = _llmflow("run", *args, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    store = ArtifactStore(home)
    reg = Registry(store, "smoke")
    assert reg.champion()["version"] == 1
    # The canary reached training: prepare kept the private documents, and everything down to
    # the model was built from them.
    canary_rules = Rules(sources={"private": "test"})
    before = find_affected(store, canary_rules)
    assert len(before.documents["private"]) == len(SENTENCES)
    assert {"ingest_source", "ingest", "doc_shard", "prepare", "tokenizer", "pack", "pretrain"} <= {
        s for s, _ in before.artifacts
    }
    assert before.versions == {"smoke": [1]}
    # Prefect recorded the built artifacts in its result storage (named by store, step and key).
    storage = Path(os.environ["PREFECT_HOME"]) / "storage"
    recorded = [k for _, k in before.artifacts if any(storage.glob(f"llmflow-*-{k}"))]
    assert len(recorded) >= 7, sorted(p.name for p in storage.glob("llmflow-*"))
    assert _files_with(home, CANARY.encode())
    # What the service kept of an answer of the erased model (it could repeat the data).
    fb = FeedbackStore(home=str(home))
    gid = fb.record_generation("1", "Who wrote the note?", f"{CANARY} wrote it.")
    fb.add_feedback(model_version="1", prompt="Who wrote the note?", response=f"{CANARY} wrote it.", rating=1)
    fb.record_generation("2", "What is heapq?", "A heap queue.")  # another version: stays
    fb.close()

    r = _llmflow(
        "forget", "--source", "private", "--reason", "subject access: erase", "--retrain", *args, env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = " ".join(r.stdout.split())
    assert "Recorded erasure request" in out and "smoke v1" in out
    [req] = load_requests(store)
    assert req.kind == "source" and req.values == ["private"] and req.reason == "subject access: erase"
    assert req.matched["documents"] == {"private": len(SENTENCES)}
    champion = reg.champion()
    assert champion["version"] == 2 and reg.get(1)["erased"]["requests"] == [req.id]
    listing = _llmflow("models", "list", "--home", str(home), "--name", "smoke", env=env)
    assert "ERASED" in listing.stdout, listing.stdout

    r = _llmflow("gc", "--erased", "--home", str(home), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Deleted" in r.stdout and "smoke v1: retired" in " ".join(r.stdout.split())

    # No byte of any file under the home holds the canary: artifacts, manifests, reports, the
    # registry and model cards, the request log, the feedback database and its WAL.
    assert _files_with(home, CANARY.encode()) == []
    # Every artifact built from the source is gone, the token shards and weights included.
    for step, key in before.artifacts:
        assert not os.path.exists(store.artifact_path(step, key)), (step, key)
        assert not os.path.exists(store.path("work", step, key)), (step, key)
    assert find_affected(store, canary_rules).artifacts == set()
    # Prefect's cache records of the deleted artifacts are gone too.
    assert not [k for _, k in before.artifacts if any(storage.glob(f"llmflow-*-{k}"))]
    # The new champion's lineage excludes the source; the erased version serves nothing.
    champion = reg.champion()
    arts = champion["lineage"]["artifacts"]
    assert not set(arts.values()) & {k for _, k in before.artifacts}
    ingest = store.manifest("ingest", arts["ingest"])
    assert ingest["stats"]["erased"] == {"private": "all"} and "private" not in ingest["stats"]["by_source"]
    assert reg.get(1)["aliases"] == [] and reg.get(1)["erased"]["purged"]
    assert "Erased data" in Path(reg.card_path(1)).read_text()
    fb = FeedbackStore(home=str(home))
    assert fb.get_generation(gid) is None and fb.count() == 0 and fb.known_version("2")
    fb.close()
