"""The supervised task: pydocs summaries and user files, split by group, nothing lost silently."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmflow.config import InputError, TaskDataConfig
from llmflow.step import run_step
from llmflow.store import ArtifactStore
from tasks.task_data import SPLITS, assign_splits, summary_and_body, task_data_step


def load(ref) -> dict[str, list[dict]]:
    out = Path(ref.uri)
    return {
        s: [json.loads(x) for x in (out / f"{s}.jsonl").read_text().splitlines()]
        for s in (*SPLITS, "rejects")
    }


@pytest.fixture(scope="module")
def pydocs_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    cfg = TaskDataConfig(limit=400, max_prompt_chars=300)
    return cfg, home, run_step("task_data", 1, task_data_step, cfg, store=ArtifactStore(home))


def test_summary_and_body():
    assert summary_and_body("Return x.\n\nMore words.", 120) == ("Return x.", "More words.")
    assert summary_and_body("Two line\nsummary.\n\nBody.", 120) is None
    assert summary_and_body("Only a summary.", 120) is None
    assert summary_and_body("x" * 130 + "\n\nBody.", 120) is None


def test_pydocs_summary_examples(pydocs_run):
    cfg, _, ref = pydocs_run
    rows = load(ref)
    kept = [r for s in SPLITS for r in rows[s]]
    assert len(kept) == 400 == ref.stats["train"] + ref.stats["validation"] + ref.stats["test"]
    assert ref.stats["available"] > 1000 and all(ref.stats[s] > 0 for s in SPLITS)
    assert cfg.prompt_format == "signature_first"  # the default: the signature, then the body
    for r in kept:
        assert set(r) == {"id", "prompt", "response", "group"}
        lines = r["prompt"].split("\n")
        assert lines[0].startswith(("def ", "async def ")) and len(r["prompt"]) <= cfg.max_prompt_chars
        assert all(line.startswith("    ") for line in lines[1:] if line)  # the body is indented
        assert r["response"] and "\n" not in r["response"] and len(r["response"]) <= 120
        assert len(lines) >= 2 and lines[1].strip() and lines[1].strip() != r["response"]  # body, not summary
        assert lines[0].split("(")[0].split()[-1].startswith(r["group"] + ".")
    assert len({r["prompt"] for r in kept}) == len(kept)
    assert len({r["id"] for r in kept}) == len(kept)


def test_signature_last_is_the_same_task_in_another_order(pydocs_run, tmp_path):
    cfg, _, ref = pydocs_run
    last_cfg = cfg.model_copy(update={"prompt_format": "signature_last"})
    last = load(run_step("task_data", 1, task_data_step, last_cfg, store=ArtifactStore(tmp_path)))
    first = load(ref)
    for s in SPLITS:
        assert [r["response"] for r in first[s]] == [r["response"] for r in last[s]]
        for a, b in zip(first[s], last[s], strict=True):
            head, body = a["prompt"].split("\n", 1)
            assert head.startswith(("def ", "async def ")) and b["prompt"] == f"{body}\n{head}"


def test_name_words_layout_is_the_same_task_with_a_hint_line(pydocs_run, tmp_path):
    """signature_first_name_words: the signature_first prompt plus the name as words on a last
    line; the same items, responses and baselines (the hint line is not docstring text)."""
    from tasks.baselines import baseline_answers

    cfg, _, ref = pydocs_run
    words_cfg = cfg.model_copy(update={"prompt_format": "signature_first_name_words"})
    words = load(run_step("task_data", 1, task_data_step, words_cfg, store=ArtifactStore(tmp_path)))
    first = load(ref)
    for s in SPLITS:
        assert [r["id"] for r in first[s]] == [r["id"] for r in words[s]]
        assert [r["response"] for r in first[s]] == [r["response"] for r in words[s]]
        for a, b in zip(first[s], words[s], strict=True):
            assert b["prompt"].startswith(a["prompt"] + "\n")
            hint = b["prompt"][len(a["prompt"]) + 1 :]
            assert hint and hint == hint.lower() and "\n" not in hint and "_" not in hint
        train = [r["response"] for r in first["train"]]
        assert baseline_answers("builtin:pydocs-summary", [r["prompt"] for r in words[s]], train) == (
            baseline_answers("builtin:pydocs-summary", [r["prompt"] for r in first[s]], train)
        )
    # a hand-checked item: the hint is the name's subtokens
    by_id = {r["id"]: r for r in words["train"] + words["validation"] + words["test"]}
    names = {i: r["prompt"].split("(")[0].rsplit(".", 1)[-1] for i, r in by_id.items()}
    i, name = next(
        (i, n) for i, n in names.items() if "_" in n.strip("_") and n == n.lower() and "__" not in n
    )
    some = by_id[i]
    assert some["prompt"].rsplit("\n", 1)[1] == name.lower().replace("_", " ").strip()


def test_splits_are_disjoint_by_group_and_deterministic(pydocs_run, tmp_path):
    cfg, _, ref = pydocs_run
    rows = load(ref)
    groups = {s: {r["group"] for r in rows[s]} for s in SPLITS}
    assert not groups["train"] & groups["test"]
    assert not groups["train"] & groups["validation"]
    assert not groups["validation"] & groups["test"]
    again = run_step("task_data", 1, task_data_step, cfg, store=ArtifactStore(tmp_path), force=True)
    assert again.key == ref.key and load(again) == rows
    manifest = ArtifactStore(tmp_path).manifest("task_data", again.key)
    assert (
        manifest["stats"]["test"] == ref.stats["test"]
        and manifest["stats"]["rejected"] == ref.stats["rejected"]
    )


def test_train_from_packages_grows_only_the_train_split(pydocs_run, tmp_path):
    """Package docstrings join the train split; validation and test stay the standard library's."""
    cfg, _, ref = pydocs_run
    more_cfg = cfg.model_copy(update={"train_from_packages": 40})
    more_ref = run_step("task_data", 1, task_data_step, more_cfg, store=ArtifactStore(tmp_path))
    base, more = load(ref), load(more_ref)
    assert more["validation"] == base["validation"] and more["test"] == base["test"]
    assert more["train"][: len(base["train"])] == base["train"]
    extra = more["train"][len(base["train"]) :]
    assert len(extra) == 40 == more_ref.stats["train_from_packages"]
    assert all(r["group"].startswith("packages:") for r in extra)
    assert len({r["prompt"] for r in more["train"]}) == len(more["train"])
    stdlib = {r["group"] for s in SPLITS for r in base[s]}
    assert not {r["group"].removeprefix("packages:") for r in extra} & stdlib


def test_one_line_docstrings_grow_only_the_train_split(pydocs_run, tmp_path):
    """train_one_line_docstrings: the functions of train modules whose whole docstring is one
    line join the train split (signature -> that line); validation and test are unchanged, and the
    response is the docstring Python itself reports for the function."""
    import importlib
    import inspect

    cfg, _, ref = pydocs_run
    more_ref = run_step(
        "task_data",
        1,
        task_data_step,
        cfg.model_copy(update={"train_one_line_docstrings": True}),
        store=ArtifactStore(tmp_path),
    )
    base, more = load(ref), load(more_ref)
    assert more["validation"] == base["validation"] and more["test"] == base["test"]
    assert more["train"][: len(base["train"])] == base["train"]
    extra = more["train"][len(base["train"]) :]
    assert len(extra) == more_ref.stats["train_one_line"] > 50
    assert {r["group"] for r in extra} <= {r["group"] for r in base["train"]}
    assert len({r["prompt"] for r in more["train"]}) == len(more["train"])
    for r in extra:
        assert "\n" not in r["prompt"] and r["prompt"].startswith(("def ", "async def "))
        assert r["response"] and "\n" not in r["response"] and len(r["response"]) <= cfg.max_summary_chars
    checked = 0
    for r in extra:  # the label, from the imported function rather than the source walk
        qualname = r["prompt"].split("(")[0].split()[-1]
        try:
            module = obj = importlib.import_module(r["group"])
            for part in qualname.removeprefix(r["group"] + ".").split("."):
                obj = getattr(obj, part)
            python_source = inspect.getsourcefile(obj) == module.__file__
        except Exception:  # a platform-only module, a name bound at run time, a C function
            continue
        if python_source and obj.__doc__:  # not replaced by a C accelerator's (datetime's)
            assert inspect.cleandoc(obj.__doc__).strip() == r["response"], qualname
            checked += 1
    assert checked >= 20
    words_cfg = cfg.model_copy(
        update={"train_one_line_docstrings": True, "prompt_format": "signature_first_name_words"}
    )
    words = load(run_step("task_data", 1, task_data_step, words_cfg, store=ArtifactStore(tmp_path)))
    hinted = words["train"][-len(extra) :]
    assert [r["response"] for r in hinted] == [r["response"] for r in extra]
    assert all(h["prompt"].startswith(r["prompt"]) for h, r in zip(hinted, extra, strict=True))
    assert sum(h["prompt"].count("\n") == 1 for h in hinted) > len(hinted) // 2  # the name hint line
    with pytest.raises(ValueError, match="train_one_line_docstrings"):
        TaskDataConfig(train_one_line_docstrings=True, source="tasks.jsonl")


def test_package_examples_that_repeat_held_out_items_are_dropped():
    """A package docstring that copies a held-out item (packages vendor the stdlib) is rejected."""
    from llmflow.erasure import Rules
    from tasks import pydocs
    from tasks.task_data import Example, module_examples, package_train_examples

    cfg = TaskDataConfig(train_from_packages=3)
    first = next(ex for ex in module_examples(pydocs.package_modules(), cfg, []) if len(ex.key.split()) >= 30)
    body = first.prompt.split("\n", 1)[1]
    held_out = [Example("held", f"def other.name(x):\n{body}", "Something else entirely.", "other")]
    rejects: list[dict] = []
    got, erased = package_train_examples(cfg, held_out, set(), Rules(), rejects)
    assert erased == 0 and len(got) == 3 and first.prompt not in {e.prompt for e in got}
    assert {r["reason"] for r in rejects if r["id"] == first.id} == {"contaminated"}
    got2, _ = package_train_examples(cfg, [], {first.prompt}, Rules(), rejects := [])
    assert first.prompt not in {e.prompt for e in got2}
    assert {r["reason"] for r in rejects if r["id"] == first.id} == {"duplicate"}


def test_the_installed_packages_are_in_the_key_when_they_are_read():
    from tasks.task_data import fingerprint

    plain = fingerprint(TaskDataConfig())
    with_packages = fingerprint(TaskDataConfig(train_from_packages=10))
    assert plain.startswith("python-") and "packages" not in plain
    assert with_packages.startswith(plain + "-packages-")
    assert fingerprint(TaskDataConfig(include_packages=True)) == with_packages


def test_train_from_packages_needs_the_builtin_task():
    with pytest.raises(ValueError, match="train_from_packages"):
        TaskDataConfig(train_from_packages=10, include_packages=True)
    with pytest.raises(ValueError, match="train_from_packages"):
        TaskDataConfig(train_from_packages=10, source="tasks.jsonl")


def test_assign_splits_fractions_and_stability():
    groups = [f"g{i}" for i in range(200) for _ in range(i % 7 + 1)]
    split = assign_splits(groups, 0.1, 0.1)
    share = {s: sum(split[g] == s for g in groups) / len(groups) for s in SPLITS}
    assert 0.09 < share["test"] < 0.15 and 0.09 < share["validation"] < 0.15
    assert assign_splits(list(reversed(groups)), 0.1, 0.1) == split
    tiny = assign_splits(["a", "b", "c"], 0.01, 0.01)
    assert sorted(tiny.values()) == ["test", "train", "validation"]


def test_file_source_jsonl_with_messages_and_rejects(tmp_path: Path):
    rows = [
        {"prompt": "What is 2+2?", "response": "4", "group": "math"},
        {"prompt": "What is 3+3?", "response": "6", "group": "math"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."},
            ]
        },
        {"prompt": "no response"},
        {"prompt": "empty response", "response": "  "},
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"prompt": "What is 2+2?", "response": "four"},
    ]
    f = tmp_path / "task.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    ref = run_step(
        "task_data", 1, task_data_step, TaskDataConfig(source=str(f)), store=ArtifactStore(tmp_path / "h")
    )
    out = load(ref)
    kept = {r["prompt"]: r for s in SPLITS for r in out[s]}
    assert kept["Hi"]["response"] == "Hello!"
    assert kept["System: Be brief.\n\nUser: Name a colour."]["response"] == "Blue."
    assert kept["What is 2+2?"]["response"] == "4"
    assert len(kept) == 4
    reasons = sorted(r["reason"] for r in out["rejects"])
    assert reasons == [
        "duplicate",
        "invalid:empty",
        "invalid:json",
        "invalid:messages",
        "invalid:missing_field",
    ]
    assert ref.stats["rejected"] == 5
    math_splits = {s for s in SPLITS for r in out[s] if r["group"] == "math"}
    assert len(math_splits) == 1


def test_file_source_parquet(tmp_path: Path):
    table = pa.table(
        {"prompt": [f"question {i}" for i in range(30)], "response": [f"answer {i}" for i in range(30)]}
    )
    pq.write_table(table, tmp_path / "t.parquet")
    cfg = TaskDataConfig(
        source=str(tmp_path / "t.parquet"), validation_fraction=0.2, test_fraction=0.2, limit=20
    )
    ref = run_step("task_data", 1, task_data_step, cfg, store=ArtifactStore(tmp_path / "h"))
    assert sum(ref.stats[s] for s in SPLITS) == 20 and ref.stats["available"] == 30
    assert ref.stats["test"] >= 3 and ref.stats["validation"] >= 3


def test_bad_sources_are_clear_errors(tmp_path: Path):
    with pytest.raises(InputError, match="unknown builtin"):
        run_step(
            "task_data",
            1,
            task_data_step,
            TaskDataConfig(source="builtin:nope"),
            store=ArtifactStore(tmp_path),
        )
    (tmp_path / "bad.jsonl").write_text('{"x": 1}\n')
    with pytest.raises(InputError, match="no usable examples.*invalid:missing_field 1"):
        run_step(
            "task_data",
            1,
            task_data_step,
            TaskDataConfig(source=str(tmp_path / "bad.jsonl")),
            store=ArtifactStore(tmp_path),
        )
    missing = TaskDataConfig(source=str(tmp_path / "nope.jsonl"))
    with pytest.raises(InputError, match="task_data.source: no such file"):
        run_step("task_data", 1, task_data_step, missing, store=ArtifactStore(tmp_path))


def test_fingerprint_follows_the_task_file(tmp_path: Path):
    from tasks.task_data import fingerprint

    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    cfg = TaskDataConfig(source=str(f))
    first = fingerprint(cfg)
    f.write_text(json.dumps({"prompt": "p2", "response": "r2"}) + "\n")
    assert fingerprint(cfg) != first
    assert fingerprint(TaskDataConfig()).startswith("python-")
