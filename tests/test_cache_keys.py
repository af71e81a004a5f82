"""Caches follow the code: a step's key hashes the code it reaches."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import llmflow.step
from llmflow.code_hash import EXCLUDED, PACKAGES, ROOT, CodeHasher, code_hash
from llmflow.config import PrepareConfig
from llmflow.step import run_step
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
    assert not EXCLUDED & set(h.modules)
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
    append(root / "model" / "train.py")
    assert CodeHasher(root).of(pretrain_step) != before
