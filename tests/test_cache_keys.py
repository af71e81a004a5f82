"""Caches follow the code and the files: a step's key hashes the code it reaches, and the same key
gives the same artifact, byte for byte, in another home."""

from __future__ import annotations

import json
import shutil
from pathlib import Path, PurePosixPath

import pytest

import llmflow.step
from llmflow.code_hash import EXCLUDED, PACKAGES, ROOT, CodeHasher, code_hash, excluded
from llmflow.config import PrepareConfig, load_config
from llmflow.step import run_step
from llmflow.store import MANIFEST, TIMING_FIELDS
from tasks.gate import GateFailed
from tasks.prepare import VERSION, prepare_step
from tasks.pretrain import pretrain_step
from tests.test_prepare import make_inputs, prose


def project_copy(tmp_path: Path) -> Path:
    """The project's packages copied elsewhere, to edit without touching the checkout."""
    root = tmp_path / "project"
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def append(path: Path, text: str = "\n# an edit\n") -> None:
    with open(path, "a") as f:
        f.write(text)


def test_editing_a_filter_recomputes_prepare_and_an_unrelated_module_does_not(tmp_path, store, monkeypatch):
    root = project_copy(tmp_path)
    inputs = make_inputs(store, [{"id": f"d{i}", "text": prose(i)} for i in range(8)])

    def run():  # a fresh hasher reads the copy's files as they are now
        monkeypatch.setattr(llmflow.step, "code_hash", CodeHasher(root).of)
        return run_step("prepare", VERSION, prepare_step, PrepareConfig(), inputs, store=store)

    first = run()
    assert first.status == "ran" and run().status == "cached"
    append(root / "tasks" / "bias.py")  # evaluate's, not prepare's
    assert run().status == "cached"
    append(root / "tasks" / "filters.py")
    edited = run()
    assert edited.status == "ran" and edited.key != first.key
    code = store.manifest("prepare", edited.key)["code"]
    assert code["sha256"] == CodeHasher(root).of(prepare_step).sha256
    assert "tasks.filters" in code["modules"] and "tasks.bias" not in code["modules"]


def test_the_code_hash_follows_imports_anywhere_and_not_the_checkout_path(tmp_path):
    h = code_hash(pretrain_step)
    assert "model.train" in h.modules  # imported inside pretrain_step
    assert {"tasks.pretrain", "model", "llmflow"} <= set(h.modules)  # the step's file and packages
    assert not [m for m in h.modules if excluded(m)]
    assert CodeHasher(project_copy(tmp_path)).of(pretrain_step) == h  # same code elsewhere
    assert code_hash(pretrain_step) is h  # cached for the process


@pytest.mark.parametrize("module", sorted(EXCLUDED))
def test_infrastructure_modules_are_not_part_of_the_code_hash(tmp_path, module):
    """The runner, store, Prefect adapter, config schema and event names carry a step's output
    without shaping it; pretrain imports all of them."""
    root = project_copy(tmp_path)
    before = CodeHasher(root).of(pretrain_step)
    path = CodeHasher(root).module_file(module)
    assert path is not None, f"{module} is in EXCLUDED but is no module"
    append(path)
    assert CodeHasher(root).of(pretrain_step) == before
    if path.name == "__init__.py":  # a package: its modules too
        for sub in path.parent.glob("*.py"):
            append(sub)
        assert CodeHasher(root).of(pretrain_step) == before
    append(root / "model" / "train.py")
    assert CodeHasher(root).of(pretrain_step) != before


# --------------------------------------------------------------------------- same key, same bytes


# The one file that still differs between homes; it is compared without what differs, and the
# manifests list it without its size and hash.
CHECKPOINT_STATE = "pretrain/*/checkpoints/*/state.json"
EXCEPTIONS = (CHECKPOINT_STATE,)


def _normalized(rel: PurePosixPath, path: Path, home: Path) -> bytes | dict:
    if rel.match(CHECKPOINT_STATE):
        # The training clock is part of a checkpoint: resuming a run with a time budget
        # (pretrain.max_seconds) needs the seconds already spent. Compare everything else.
        state = json.loads(path.read_text())
        state.pop("elapsed")
        for row in state["rows"]:
            row.pop("seconds")
            row.pop("tokens_per_s", None)
        return state
    if path.name == MANIFEST:
        m = {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING_FIELDS}
        excepted = [f for f in m["files"] if any(rel.parent.joinpath(f).match(p) for p in EXCEPTIONS)]
        for f in excepted:
            del m["files"][f]
        return m
    return path.read_bytes()


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_the_smoke_pipeline_gives_the_same_artifacts_in_two_homes(tmp_path, one_thread):
    """Every data file of every step (and of the sub-artifacts: sources, shards) is identical;
    manifests too, but for when and how fast. The registry is not an artifact: it records when
    and where (this home's paths) a model was promoted; the gate's decision is compared."""
    from flows.pipeline import STEPS, pipeline

    cfg = load_config("smoke")
    homes = [tmp_path / "a", tmp_path / "b"]
    runs = []
    for home in homes:  # the smoke model fails the gate: the summary comes with the failure
        with pytest.raises(GateFailed) as e:
            pipeline(config=cfg, home=str(home))
        runs.append(e.value.summary)
    assert all(ref["status"] == "ran" for run in runs for ref in run.values())
    keys = [{step: ref["key"] for step, ref in run.items()} for run in runs]
    assert list(keys[0]) == STEPS and keys[0] == keys[1]

    files = [
        {
            PurePosixPath(p.relative_to(home / "artifacts").as_posix()): p
            for p in (home / "artifacts").rglob("*")
            if p.is_file()
        }
        for home in homes
    ]
    assert files[0].keys() == files[1].keys()
    assert {p.parts[0] for p in files[0]} >= set(STEPS)
    different = [
        str(rel) for rel in sorted(files[0])
        if _normalized(rel, files[0][rel], homes[0]) != _normalized(rel, files[1][rel], homes[1])
    ]  # fmt: skip
    assert different == []


def test_a_retry_of_a_forced_run_has_the_same_key():
    """The retry's step function is wrapped (tasks/common.py) but must hash like the step's own."""
    from tasks.common import _resuming
    from tasks.tokenizer import train_tokenizer

    fn = train_tokenizer.step_fn
    assert code_hash(_resuming(fn)) == code_hash(fn)
