"""The Prefect layer: the store key is the cache key, deleted files are rebuilt, force recomputes."""

from __future__ import annotations

import pytest
from prefect import flow

from flows.runner import StepRunner
from llmflow.config import TokenizerConfig
from llmflow.store import ArtifactStore
from tasks.common import step_task

CALLS: list[str] = []


def _count_words(ctx):
    """Count the words of a fixed text (a stand-in step with real output)."""
    CALLS.append(ctx.key)
    text = "the quick brown fox jumps over the lazy dog " * ctx.config.vocab_size
    (ctx.out / "counts.txt").write_text(str(len(text.split())))
    ctx.progress(1, 1, "counted")
    ctx.report("# counted\n")
    return {"words": len(text.split())}


count_words = step_task("count_words", 1, _count_words, retries=0)


@flow
def one_step(config: TokenizerConfig, home: str, force: bool = False) -> dict:
    run = StepRunner(home=home, force=force)
    run(count_words, config)
    return run.summary()


@pytest.mark.usefixtures("prefect_harness")
def test_cached_rebuilt_and_forced(tmp_path):
    home = str(tmp_path / "home")
    cfg = TokenizerConfig(vocab_size=100)
    CALLS.clear()

    first = one_step(cfg, home)["count_words"]
    assert first["status"] == "ran" and first["stats"] == {"words": 900}
    assert len(CALLS) == 1

    for _ in range(2):  # the second call may be served by the store, the third by Prefect's cache
        again = one_step(cfg, home)["count_words"]
        assert again["status"] == "cached" and again["key"] == first["key"]
    assert len(CALLS) == 1

    ArtifactStore(home).delete("count_words", first["key"])
    rebuilt = one_step(cfg, home)["count_words"]
    assert rebuilt["status"] == "ran" and len(CALLS) == 2
    assert ArtifactStore(home).exists("count_words", first["key"])

    forced = one_step(cfg, home, force=True)["count_words"]
    assert forced["status"] == "ran" and len(CALLS) == 3

    changed = one_step(TokenizerConfig(vocab_size=101), home)["count_words"]
    assert changed["status"] == "ran" and changed["key"] != first["key"]


@flow
def one_step_state(config: TokenizerConfig, home: str) -> str:
    return count_words(config, {}, home=home, return_state=True).name


@pytest.mark.usefixtures("prefect_harness")
def test_second_run_is_a_prefect_cache_hit_on_the_store_key(tmp_path):
    """The run that builds an artifact records it under the store key: the next run is Cached."""
    home = str(tmp_path / "home")
    cfg = TokenizerConfig(vocab_size=77)
    CALLS.clear()
    assert one_step_state(cfg, home) == "Completed"
    assert one_step_state(cfg, home) == "Cached"
    assert len(CALLS) == 1
    ArtifactStore(home).delete("count_words", CALLS[0])
    assert one_step_state(cfg, home) == "Completed"  # files gone: rebuilt, not served from the record
    assert len(CALLS) == 2
    assert one_step_state(cfg, home) == "Cached"


FORCED: list[bool] = []


def _fails_once(ctx):
    """Records whether its run is forced; the first try fails (a retry then succeeds)."""
    FORCED.append(ctx.force)
    if len(FORCED) % 2:
        raise OSError("transient")
    return {}


fails_once = step_task("fails_once", 1, _fails_once, retries=1, retry_delay_seconds=0)


@flow
def retried(config: TokenizerConfig, home: str, force: bool) -> str:
    return fails_once(config, {}, home=home, force=force, return_state=True).name


@pytest.mark.usefixtures("prefect_harness")
def test_a_retry_of_a_forced_run_resumes_its_own_first_try(tmp_path):
    """Only a forced run's first try is told to start afresh; its retry resumes what that try left."""
    FORCED.clear()
    assert retried(TokenizerConfig(vocab_size=64), str(tmp_path / "a"), force=False) == "Completed"
    assert FORCED == [False, False]
    FORCED.clear()
    assert retried(TokenizerConfig(vocab_size=64), str(tmp_path / "b"), force=True) == "Completed"
    assert FORCED == [True, False]


@pytest.mark.usefixtures("prefect_harness")
def test_a_prefect_cache_hit_whose_files_changed_is_rebuilt(tmp_path, caplog):
    """The Prefect record is only offered while the files are as the manifest lists them."""
    home = str(tmp_path / "home")
    cfg = TokenizerConfig(vocab_size=78)
    CALLS.clear()
    assert one_step_state(cfg, home) == "Completed"
    assert one_step_state(cfg, home) == "Cached"
    counts = ArtifactStore(home).local_path(("count_words", CALLS[0])) / "counts.txt"
    counts.write_text("")  # truncated
    with caplog.at_level("WARNING", logger="llmflow.store"):
        assert one_step_state(cfg, home) == "Completed"
    assert len(CALLS) == 2 and counts.read_text() == "702"
    assert any("counts.txt" in r.getMessage() for r in caplog.records)
    assert one_step_state(cfg, home) == "Cached"


@flow
def one_step_ref(config: TokenizerConfig, home: str):
    state = count_words(config, {}, home=home, return_state=True)
    return state.name, state.result()


@pytest.mark.usefixtures("prefect_harness")
def test_a_cache_record_answers_only_its_own_store(tmp_path):
    """Prefect's records are shared by every home: the same step and config built in two homes are
    two artifacts, and each home's cache hit returns its own (uri and stats), not the last one built."""
    homes = [str(tmp_path / "a"), str(tmp_path / "b")]
    cfg = TokenizerConfig(vocab_size=79)
    CALLS.clear()
    built = [one_step_ref(cfg, home) for home in homes]
    assert [name for name, _ in built] == ["Completed", "Completed"] and len(CALLS) == 2
    for home, (_, ref) in zip(homes, built, strict=True):
        name, again = one_step_ref(cfg, home)
        assert name == "Cached" and again.key == ref.key
        assert again.uri == ref.uri and again.uri.startswith(ArtifactStore(home).root)
    assert len(CALLS) == 2
