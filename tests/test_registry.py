"""The model registry: versions, idempotent registration, atomic promotion and rollback."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from llmflow.registry import Registry, RegistryError


def _reg(store, name="demo"):
    return Registry(store, name)


def test_register_is_idempotent_per_finetune_artifact(store):
    reg = _reg(store)
    assert reg.champion() is None and reg.list() == []
    v1 = reg.register(
        "k1", "/m1", eval_key="e1", metrics={"rougeL": 0.2}, lineage={"artifacts": {"pretrain": "p"}}
    )
    v2 = reg.register("k2", "/m2", eval_key="e2", metrics={"rougeL": 0.3})
    assert (v1, v2) == (1, 2)
    assert reg.register("k1", "/m1", eval_key="e1b") == 1  # same artifact: same version, eval updated
    assert [e["version"] for e in reg.list()] == [1, 2]
    e = reg.get(1)
    assert (
        e["eval_key"] == "e1b" and e["model_path"] == "/m1" and e["lineage"]["artifacts"]["pretrain"] == "p"
    )
    # the challenger is the latest candidate registered (or re-registered) that is not champion
    assert reg.get("challenger")["version"] == 1 and reg.get("v2")["aliases"] == []
    reg.register("k2", "/m2")
    assert reg.get("v2")["aliases"] == ["challenger"]
    assert reg.find("k2")["version"] == 2 and reg.find("nope") is None


def test_promote_and_rollback(store):
    reg = _reg(store)
    for k in ("a", "b", "c"):
        reg.register(k, f"/{k}")
    with pytest.raises(RegistryError, match="no previous champion"):
        reg.rollback()
    assert reg.promote(1)["aliases"] == ["champion"]
    reg.promote("2")
    assert reg.champion()["version"] == 2
    reg.promote("v3")
    assert reg.champion()["version"] == 3 and "challenger" not in reg._index()["aliases"]
    assert reg.rollback()["version"] == 2
    assert reg.rollback()["version"] == 1
    with pytest.raises(RegistryError):
        reg.rollback()
    assert reg.champion()["version"] == 1
    assert [ev["event"] for ev in reg.history()].count("rolled_back") == 2
    reg.promote(1)  # already champion: no history entry, nothing to roll back to
    with pytest.raises(RegistryError):
        reg.rollback()


def test_bad_references_are_clear_errors(store):
    reg = _reg(store)
    reg.register("a", "/a")
    with pytest.raises(RegistryError, match="no champion"):
        reg.get("champion")
    with pytest.raises(RegistryError, match="no version 7"):
        reg.promote(7)
    with pytest.raises(RegistryError, match="bad version"):
        reg.get("latest!")
    with pytest.raises(RegistryError, match="bad model name"):
        Registry(store, "../x")
    with pytest.raises(RegistryError, match="fine-tune artifact key"):
        reg.register("", "/x")


def test_index_is_one_atomic_document_and_separate_per_name(store):
    a, b = _reg(store, "a"), _reg(store, "b")
    a.register("k", "/k")
    a.promote(1)
    assert b.champion() is None
    path = store.path("registry", "a", "index.json")
    idx = json.loads(Path(path).read_text())
    assert idx["aliases"] == {"champion": 1}
    leftovers = [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".tmp")]
    assert leftovers == []


def test_concurrent_registrations_do_not_lose_versions(store):
    reg = _reg(store)
    threads = [threading.Thread(target=reg.register, args=(f"k{i}", f"/m{i}")) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e["version"] for e in reg.list()) == list(range(1, 9))
    assert len({e["finetune_key"] for e in reg.list()}) == 8


def test_model_card_written_next_to_the_entry(store):
    reg = _reg(store)
    v = reg.register("k", "/k", card="# card\n")
    assert Path(reg.card_path(v)).read_text() == "# card\n"
    assert reg.get(v)["card"].endswith(os.path.join("registry", "demo", "v1", "README.md"))
    with pytest.raises(RegistryError):
        reg.write_card(9, "x")
