"""The artifact store: atomic publication, keys, hits and misses, remote (fsspec) roots."""

from __future__ import annotations

import hashlib
import json

import pytest

from llmflow.config import PrepareConfig, TokenizerConfig
from llmflow.step import compute_key, run_step
from llmflow.store import MANIFEST, ArtifactStore, StepRef, step_key


def _write_step(ctx):
    (ctx.out / "data.txt").write_text(f"config={ctx.config.vocab_size}")
    return {"lines": 1}


def test_key_changes_with_config_and_inputs_only():
    a = TokenizerConfig(vocab_size=1000)
    base = step_key("tokenizer", 1, a, {"data": "k1"})
    assert base == step_key("tokenizer", 1, TokenizerConfig(vocab_size=1000), {"data": "k1"})
    assert base != step_key("tokenizer", 1, TokenizerConfig(vocab_size=1001), {"data": "k1"})
    assert base != step_key("tokenizer", 1, a, {"data": "k2"})
    assert base != step_key("tokenizer", 2, a, {"data": "k1"})
    assert base != step_key("pack", 1, a, {"data": "k1"})
    # Input order does not matter; the canonical JSON is sorted.
    assert step_key("s", 1, a, {"x": "1", "y": "2"}) == step_key("s", 1, a, {"y": "2", "x": "1"})


def test_key_ignores_other_sections():
    """A step hashes its own section: changing prepare does not change the tokenizer's key."""
    from llmflow.config import PipelineConfig

    c1 = PipelineConfig()
    c2 = PipelineConfig(prepare=PrepareConfig(validation_fraction=0.1))
    assert step_key("tokenizer", 1, c1.tokenizer, {}) == step_key("tokenizer", 1, c2.tokenizer, {})
    assert step_key("prepare", 1, c1.prepare, {}) != step_key("prepare", 1, c2.prepare, {})


def test_miss_then_hit(store):
    cfg = TokenizerConfig(vocab_size=500)
    calls = []

    def fn(ctx):
        calls.append(1)
        return _write_step(ctx)

    first = run_step("tokenizer", 1, fn, cfg, store=store)
    assert first.status == "ran" and len(calls) == 1
    second = run_step("tokenizer", 1, fn, cfg, store=store)
    assert second.status == "cached" and len(calls) == 1
    assert second.key == first.key
    assert (store.local_path(second) / "data.txt").read_text() == "config=500"
    m = store.manifest("tokenizer", first.key)
    assert m["stats"] == {"lines": 1} and m["config"]["vocab_size"] == 500
    assert m["files"] == {"data.txt": {"size": 10, "sha256": hashlib.sha256(b"config=500").hexdigest()}}


def test_force_recomputes(store):
    cfg = TokenizerConfig()
    calls = []

    def fn(ctx):
        calls.append(1)
        return _write_step(ctx)

    run_step("tokenizer", 1, fn, cfg, store=store)
    ref = run_step("tokenizer", 1, fn, cfg, store=store, force=True)
    assert ref.status == "ran" and len(calls) == 2
    assert store.exists("tokenizer", ref.key)


def test_crashed_write_leaves_no_manifest(store):
    cfg = TokenizerConfig()

    def crash(ctx):
        (ctx.out / "half.bin").write_bytes(b"x" * 100)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        run_step("tokenizer", 1, crash, cfg, store=store)
    crashed = compute_key("tokenizer", 1, crash, cfg, {})
    assert store.manifest("tokenizer", crashed) is None
    assert not store.exists("tokenizer", crashed)
    # Nothing half-written is visible under the final name, and staging is cleaned up.
    step_dir = store.path("artifacts", "tokenizer")
    import os

    assert os.listdir(step_dir) == []
    # The next run (of the mended step) builds it.
    ref = run_step("tokenizer", 1, _write_step, cfg, store=store)
    key = compute_key("tokenizer", 1, _write_step, cfg, {})
    assert ref.status == "ran" and ref.key == key and store.exists("tokenizer", key)


def test_incomplete_directory_is_rebuilt_not_read(store):
    cfg = TokenizerConfig()
    key = compute_key("tokenizer", 1, _write_step, cfg, {})
    final = store.artifact_path("tokenizer", key)
    import os

    os.makedirs(final)
    with open(os.path.join(final, "data.txt"), "w") as f:
        f.write("stale")
    assert store.manifest("tokenizer", key) is None
    with pytest.raises(FileNotFoundError):
        store.local_path(("tokenizer", key))
    ref = run_step("tokenizer", 1, _write_step, cfg, store=store)
    assert ref.status == "ran"
    assert (store.local_path(ref) / "data.txt").read_text().startswith("config=")


def test_deleted_files_are_rebuilt(store):
    cfg = TokenizerConfig()
    ref = run_step("tokenizer", 1, _write_step, cfg, store=store)
    store.delete("tokenizer", ref.key)
    again = run_step("tokenizer", 1, _write_step, cfg, store=store)
    assert again.status == "ran"


def test_inputs_chain_keys(store):
    up = run_step("tokenizer", 1, _write_step, TokenizerConfig(vocab_size=100), store=store)
    down1 = run_step("pack", 1, lambda ctx: {}, {"x": 1}, {"tokenizer": up}, store=store)
    up2 = run_step("tokenizer", 1, _write_step, TokenizerConfig(vocab_size=200), store=store)
    down2 = run_step("pack", 1, lambda ctx: {}, {"x": 1}, {"tokenizer": up2}, store=store)
    assert down1.key != down2.key
    m = store.manifest("pack", down1.key)
    assert m["inputs"] == {"tokenizer": {"step": "tokenizer", "key": up.key}}


def test_memory_filesystem_root_works_like_a_folder():
    """A bucket URL goes through fsspec: the same code path works on a non-local filesystem."""
    store = ArtifactStore("memory://llmflow-test-store")
    assert not store.is_local
    ref = run_step("tokenizer", 1, _write_step, TokenizerConfig(vocab_size=321), store=store)
    assert ref.uri.startswith("memory://")
    assert store.exists("tokenizer", ref.key)
    local = store.local_path(ref)
    assert (local / "data.txt").read_text() == "config=321"
    assert json.loads((local / MANIFEST).read_text())["key"] == ref.key
    cached = run_step("tokenizer", 1, _write_step, TokenizerConfig(vocab_size=321), store=store)
    assert cached.status == "cached"


def test_json_documents_are_atomic(store):
    store.write_json({"a": 1}, "registry", "x.json")
    assert store.read_json("registry", "x.json") == {"a": 1}
    assert store.read_json("registry", "missing.json", default={}) == {}


def test_list_returns_complete_artifacts(store):
    run_step("tokenizer", 1, _write_step, TokenizerConfig(vocab_size=100), store=store)
    run_step("tokenizer", 1, _write_step, TokenizerConfig(vocab_size=200), store=store)
    assert len(store.list("tokenizer")) == 2
    assert store.list("nothing") == []


def test_stepref_roundtrip():
    ref = StepRef(step="a", key="k", uri="/x", stats={"n": 1})
    assert StepRef.model_validate_json(ref.model_dump_json()) == ref


# --------------------------------------------------------------------------- damaged artifacts


def _two_files(ctx):
    (ctx.out / "part").mkdir()
    (ctx.out / "part" / "a.bin").write_bytes(b"a" * 1000)
    (ctx.out / "part" / "b.bin").write_bytes(b"b" * 1000)
    return {"files": 2}


def _damage(path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:10])
    else:  # same size, other bytes
        path.write_bytes(b"x" * path.stat().st_size)


@pytest.mark.parametrize("how", ["deleted", "truncated", "overwritten"])
def test_a_damaged_artifact_is_rebuilt_not_served(store, how, caplog):
    calls = []

    def fn(ctx):
        calls.append(1)
        return _two_files(ctx)

    ref = run_step("prepare", 1, fn, {"x": 1}, store=store)
    assert store.manifest("prepare", ref.key)["files"]["part/a.bin"]["size"] == 1000
    assert run_step("prepare", 1, fn, {"x": 1}, store=store).status == "cached"
    _damage(store.local_path(ref) / "part" / "a.bin", how)

    with caplog.at_level("WARNING", logger="llmflow.store"):
        assert not store.exists("prepare", ref.key) and store.ref("prepare", ref.key) is None
        again = run_step("prepare", 1, fn, {"x": 1}, store=store)
    assert again.status == "ran" and again.key == ref.key and len(calls) == 2
    assert (store.local_path(again) / "part" / "a.bin").read_bytes() == b"a" * 1000
    assert any("part/a.bin" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)
    assert run_step("prepare", 1, fn, {"x": 1}, store=store).status == "cached"


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_a_damaged_remote_artifact_is_rebuilt(how):
    """On a remote store the sizes are checked (one listing), hashes would need a download."""
    store = ArtifactStore(f"memory://llmflow-damaged-{how}")
    ref = run_step("prepare", 1, _two_files, {"x": 1}, store=store)
    path = store.artifact_path("prepare", ref.key) + "/part/a.bin"
    if how == "deleted":
        store.fs.rm(path)
    else:
        store.fs.pipe(path, b"short")
    assert not store.exists("prepare", ref.key)
    again = run_step("prepare", 1, _two_files, {"x": 1}, store=store)
    assert again.status == "ran" and store.fs.cat(path) == b"a" * 1000
    assert store.exists("prepare", ref.key)


# --------------------------------------------------------------------------- staging leftovers


def test_stale_staging_folders_are_removed_and_live_ones_kept(store):
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from llmflow.store import _HOST, STALE_AFTER

    step_dir = Path(store.path("artifacts", "tokenizer"))
    step_dir.mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    old = time.time() - STALE_AFTER - 60
    try:
        folders = {
            "dead writer": (f".tmp-aaaa-{int(gone.stdout)}@{_HOST}-x1", None),
            "live writer": (f".tmp-bbbb-{writer.pid}@{_HOST}-x2", old),  # however old
            "other host, recent": (".tmp-cccc-123@elsewhere-x3", None),
            "other host, old": (".tmp-dddd-123@elsewhere-x4", old),
            "unnamed, old": (".tmp-eeee-abcd1234", old),
            "interrupted replace": ("f" * 64 + ".old-1234abcd", None),
        }
        for name, mtime in folders.values():
            (step_dir / name).mkdir()
            (step_dir / name / "half.bin").write_bytes(b"x")
            if mtime is not None:
                os.utime(step_dir / name, (mtime, mtime))

        with store.write("tokenizer", "k" * 64) as out:  # a writer of this process is live too
            (out / "data.txt").write_text("x")
            run_step("tokenizer", 1, _write_step, TokenizerConfig(), store=store)
            assert out.exists()
        left = {p.name for p in step_dir.iterdir() if p.name.startswith(".") or ".old-" in p.name}
    finally:
        writer.kill()
        writer.wait()
    kept = {what for what, (name, _) in folders.items() if name in left}
    assert kept == {"live writer", "other host, recent"}
