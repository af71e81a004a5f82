"""The feedback steps without Prefect: corrections merged into the task data under the held-out
rules, and DPO on preference pairs producing a candidate that evaluate and gate can load."""

from __future__ import annotations

import json

import pytest

from llmflow.config import FinetuneConfig
from llmflow.step import run_step
from tasks.feedback import (
    DATA_VERSION,
    DPO_VERSION,
    feedback_data_step,
    feedback_dpo_step,
    fingerprint,
    merge_feedback,
    read_jsonl,
)
from tests.helpers import task_rows, tiny_model_dir, tiny_tokenizer_dir, write_jsonl


def _rows(n: int) -> list[dict]:
    return [
        {"id": f"r{i}", "prompt": f"prompt {i}", "response": f"answer {i}", "group": f"g{i}"}
        for i in range(n)
    ]


def _task(store, rows):
    """A task_data artifact: 6 train, 2 validation, 2 test rows."""

    def fn(ctx):
        write_jsonl(ctx.out / "train.jsonl", rows[:6])
        write_jsonl(ctx.out / "validation.jsonl", rows[6:8])
        write_jsonl(ctx.out / "test.jsonl", rows[8:10])
        return {"train": 6}

    return run_step("task_data", 1, fn, {"t": 1}, store=store)


def test_merge_rules():
    rows = _rows(10)
    task = {"train": rows[:6], "validation": rows[6:8], "test": rows[8:10]}
    sft = [
        {"id": "f1", "prompt": rows[0]["prompt"], "response": "better"},  # replaces a train answer
        {"id": "f2", "prompt": "new prompt", "response": "old"},
        {"id": "f3", "prompt": "new  PROMPT", "response": "newest"},  # same prompt, later: wins
        {"id": "f4", "prompt": rows[8]["prompt"], "response": "leak"},  # a test prompt
        {"id": "f5", "prompt": "x", "response": ""},
    ]
    prefs = [
        {"id": "p1", "prompt": "q", "chosen": "good", "rejected": "bad"},
        {"id": "p2", "prompt": "q", "chosen": "same", "rejected": "same"},
        {"id": "p3", "prompt": rows[6]["prompt"], "chosen": "a", "rejected": "b"},
    ]
    splits, triples, rejects, counts = merge_feedback(task, sft, prefs, repeat=2)
    assert counts == {"feedback_examples": 2, "replaced": 1, "preference_pairs": 1}
    train = splits["train"]
    assert len(train) == 5 + 2 * 2  # one task row replaced, two corrections twice each
    assert [r["response"] for r in train if r["group"] == "feedback"] == [
        "better",
        "better",
        "newest",
        "newest",
    ]
    assert splits["validation"] == rows[6:8] and splits["test"] == rows[8:10]
    assert [t["id"] for t in triples] == ["p1"]
    assert sorted((r["id"], r["reason"]) for r in rejects) == [
        ("f2", "duplicate"),
        ("f4", "heldout"),
        ("f5", "invalid:missing_text"),
        ("p2", "invalid:same_answers"),
        ("p3", "heldout"),
    ]


def test_feedback_data_step_writes_the_task_layout_and_keys_on_content(store, tmp_path):
    rows = _rows(10)
    task = _task(store, rows)
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"id": "f1", "prompt": "p new", "response": "r new"}])
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    cfg = {"sft_path": str(sft), "preferences_path": str(prefs), "repeat": 3}
    fp = fingerprint(str(sft), str(prefs))
    ref = run_step(
        "feedback_data", DATA_VERSION, feedback_data_step, cfg, {"task": task}, store=store, extra=fp
    )
    out = store.local_path(ref)
    assert (
        ref.stats["train"] == 9 and ref.stats["feedback_examples"] == 1 and ref.stats["preference_pairs"] == 1
    )
    assert len(read_jsonl(str(out / "train.jsonl"))) == 9
    assert read_jsonl(str(out / "test.jsonl")) == rows[8:10]
    assert "corrections merged" in (out / "report.md").read_text()
    # the same files: cached; changed contents at the same path: a new key
    again = run_step(
        "feedback_data", DATA_VERSION, feedback_data_step, cfg, {"task": task}, store=store, extra=fp
    )
    assert again.status == "cached" and again.key == ref.key
    write_jsonl(sft, [{"id": "f1", "prompt": "p new", "response": "r newer"}])
    assert fingerprint(str(sft), str(prefs)) != fp


def test_bad_feedback_files_fail_with_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
        read_jsonl(str(bad))
    with pytest.raises(FileNotFoundError):
        read_jsonl(str(tmp_path / "missing.jsonl"))


def test_dpo_step_makes_a_loadable_candidate_that_prefers_the_chosen_answers(store, tmp_path):
    from model.finetune import load_finetuned

    tok = tiny_tokenizer_dir(tmp_path / "tok")
    tuned_dir = tmp_path / "tuned"
    tiny_model_dir(tuned_dir / "model", tok)
    (tuned_dir / "metrics.json").write_text(json.dumps({"method": "lora", "train_loss": 1.0}))
    (tuned_dir / "lineage.json").write_text(json.dumps({"base": {"key": "b"}}))

    def fake_finetune(ctx):  # a finetune artifact: the tiny model as the merged `model/`
        import shutil

        shutil.copytree(tuned_dir, ctx.out, dirs_exist_ok=True)
        return {"method": "lora"}

    tuned = run_step("finetune", 1, fake_finetune, {"x": 1}, store=store)
    prefs = [
        {"id": f"p{i}", "prompt": r["prompt"], "chosen": r["response"], "rejected": "none of the above"}
        for i, r in enumerate(task_rows(8))
    ]

    def fake_task(ctx):
        write_jsonl(ctx.out / "preferences.jsonl", prefs)
        return {"preference_pairs": len(prefs)}

    task = run_step("feedback_data", 1, fake_task, {"y": 1}, store=store)
    cfg = FinetuneConfig(lora_r=4, lora_alpha=8, max_len=64, mixed_precision="no")
    cfg.dpo.steps, cfg.dpo.batch_size, cfg.dpo.lr = 15, 8, 5e-3
    ref = run_step(
        "feedback_dpo", DPO_VERSION, feedback_dpo_step, cfg, {"model": tuned, "task": task}, store=store
    )
    s = ref.stats
    assert s["pairs"] == 8 and s["margin_after"] > s["margin_before"], s
    out = store.local_path(ref)
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["dpo"]["key"] == tuned.key and lineage["base"] == {"key": "b"}
    model, _ = load_finetuned(out)  # the layout evaluate and gate read
    assert sum(p.numel() for p in model.parameters()) > 0
