"""MBR evidence beyond the model's samples (tasks/mbr_evidence.py): the name as words and the
nearest train items' responses, built the same way by the evaluate step and by the service, whose
neighbours come from the champion's own train split in the artifact store."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

import model.mbr as mbr
from deployments.service import create_app
from llmflow.config import EvaluateConfig, ServeConfig
from llmflow.store import ArtifactStore
from tasks import mbr_evidence as ME
from tests.helpers import tiny_model_dir, tiny_tokenizer_dir

TRAIN = [
    {
        "prompt": "def read_text(path):\n    Read the whole file at path as text.",
        "response": "Read a text file.",
    },
    {
        "prompt": "def write_text(path, data):\n    Write data to the file at path.",
        "response": "Write a text file.",
    },
    {"prompt": "def add(a, b):\n    Add two numbers.", "response": "Return the sum."},
]


def test_the_name_and_the_nearest_train_responses_per_prompt():
    ev = ME.MbrEvidence(name_weight=0.3, neighbors=2, neighbor_weight=0.5, train_rows=TRAIN)
    [groups] = ev(["def read_bytes(path):\n    Read the whole file at path as bytes."])
    assert groups[0] == (0.3, ["Read bytes."])
    assert groups[1][0] == 0.5 and groups[1][1][0] == "Read a text file." and len(groups[1][1]) == 2
    # no signature: no name; no word shared with a train prompt: no neighbours
    assert ev(["zzz qqq"]) == [[]]
    assert ME.MbrEvidence(name_weight=0.3)(["def f(x):"]) == [[(0.3, ["F."])]]  # the name alone
    assert not ME.MbrEvidence(0.0, 2, 0.5, []).retrieval  # no train split, no neighbours


def test_settings_build_the_evidence_and_name_it():
    off = EvaluateConfig()
    assert ME.from_config(off, TRAIN) is None and ME.describe(off) == ""
    cfg = EvaluateConfig(mbr_samples=4, mbr_name_weight=0.3, mbr_neighbors=10, mbr_neighbor_weight=0.5)
    assert ME.from_config(cfg, TRAIN).retrieval
    assert (
        ME.describe(cfg) == ", MBR evidence: the name as words x 0.3 and the 10 nearest train summaries x 0.5"
    )
    with pytest.raises(ValueError, match="set both"):
        EvaluateConfig(mbr_samples=4, mbr_neighbors=10)
    with pytest.raises(ValueError, match="set both"):
        ServeConfig(mbr_neighbor_weight=0.5)


def _finetuned(store: ArtifactStore, tmp_path) -> str:
    """A task_data artifact with TRAIN as its train split, and a finetune artifact (a tiny model
    under model/) whose manifest names it as its `task` input, as the finetune step writes it."""
    with store.write("task_data", "t1") as out:
        (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TRAIN))
    tok = tiny_tokenizer_dir(tmp_path / "tok")
    manifest = {"inputs": {"task": {"step": "task_data", "key": "t1"}}}
    with store.write("finetune", "f1", manifest) as out:
        tiny_model_dir(out / "model", tok)
    return str(store.local_path(("finetune", "f1")) / "model")


def test_a_models_train_split_is_found_through_its_artifact(tmp_path):
    store = ArtifactStore(tmp_path / "home")
    path = _finetuned(store, tmp_path)
    assert ME.train_rows_of_model(path, store) == TRAIN
    assert ME.train_rows_of_model(tmp_path / "tok", store) == []  # not an artifact: no split
    with store.write("pretrain", "p1", {"inputs": {"pack": {"step": "pack", "key": "x"}}}) as out:
        (out / "model").mkdir()
    assert ME.train_rows_of_model(store.local_path(("pretrain", "p1")) / "model", store) == []


def test_the_service_weighs_the_same_evidence(tmp_path, monkeypatch):
    """POST /generate with MBR passes the champion's evidence to MBR's choice: the name as words
    and its own train split's nearest responses."""
    store = ArtifactStore(tmp_path / "home")
    path = _finetuned(store, tmp_path)
    seen = []
    choose = mbr.choose
    monkeypatch.setattr(mbr, "choose", lambda c, u=None, e=(): seen.append(e) or choose(c, u, e))
    cfg = ServeConfig(mbr_samples=3, mbr_name_weight=0.3, mbr_neighbors=1, mbr_neighbor_weight=0.5)
    app = create_app(cfg, home=str(tmp_path / "home"), model_source=lambda: ("1", path), emit=lambda *a: None)
    with TestClient(app) as client:
        prompt = "def read_bytes(path):\n    Read the whole file at path as bytes."
        r = client.post("/generate", json={"prompt": prompt, "max_new_tokens": 4, "seed": 1})
        assert r.status_code == 200, r.text
        assert seen == [[(0.3, ["Read bytes."]), (0.5, ["Read a text file."])]]
        sampled = client.post("/generate", json={"prompt": prompt, "max_new_tokens": 4, "temperature": 0.7})
        assert sampled.status_code == 200 and len(seen) == 1  # sampling: no MBR, no evidence


def test_llmflow_generate_weighs_the_same_evidence(tmp_path):
    """`llmflow generate --mbr N --mbr-name-weight W --mbr-neighbors K --mbr-neighbor-weight W2`
    finds the model's train split through its artifact; bad combinations are one-line errors."""
    from tests.test_cli import _one_error_line, _run

    home = tmp_path / "home"
    path = _finetuned(ArtifactStore(home), tmp_path)
    prompt = "def read_bytes(path):\n    Read the whole file at path as bytes."
    common = ["generate", "--home", str(home), "--model", path, "--prompt", prompt, "--max-new-tokens", "4"]
    ok = _run(*common, "--temperature", "0", "--mbr", "3", "--seed", "1", "--mbr-name-weight", "0.3",
              "--mbr-neighbors", "2", "--mbr-neighbor-weight", "0.5")  # fmt: skip
    assert ok.returncode == 0 and ok.stdout.strip(), ok.stderr[-2000:]
    _one_error_line(_run(*common, "--mbr-neighbors", "2"), 2, "set both or neither")
    _one_error_line(_run(*common, "--mbr-name-weight", "0.3"), 2, "use them with --mbr N")
    bare = ["generate", "--home", str(home), "--model", str(tmp_path / "tok"), "--prompt", "x"]
    args = ["--temperature", "0", "--mbr", "2", "--mbr-neighbors", "2", "--mbr-neighbor-weight", "0.5"]
    _one_error_line(_run(*bare, *args), 1, "has no train split in the artifact store")
