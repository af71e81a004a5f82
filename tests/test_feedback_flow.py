"""The feedback steps: corrections merged into the task data under the held-out rules (exact
prompts, and the n-gram check `prepare` uses), DPO on preference pairs producing a candidate that
evaluate and gate can load; and the feedback flow under Prefect, whose failure, at the gate or
anywhere before it, marks the claimed retrain failed and leaves the champion serving."""

from __future__ import annotations

import json

import pytest

from llmflow.config import DecontaminateConfig, FinetuneConfig
from llmflow.step import run_step
from tasks.decontaminate import Decontaminator
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
    cfg = {
        "sft_path": str(sft),
        "preferences_path": str(prefs),
        "repeat": 3,
        "decontaminate": DecontaminateConfig().model_dump(),
    }
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


# Held-out items long enough for the n-gram check (prepare's defaults: 13-grams, items of 8+ words).
TEST_ANSWER = (
    "The function walks the list once, keeps a running maximum of the values it has seen so far, "
    "and returns that maximum, or None when the list is empty."
)
VALIDATION_PROMPT = (
    "Write a function that reads a configuration file, merges it over the default settings and "
    "reports every key it does not recognise."
)


def _heldout_task() -> dict[str, list[dict]]:
    rows = _rows(10)
    rows[8] = {**rows[8], "prompt": "def running_max(xs): ...", "response": TEST_ANSWER}
    rows[6] = {**rows[6], "prompt": VALIDATION_PROMPT, "response": "def load(path): ..."}
    return {"train": rows[:6], "validation": rows[6:8], "test": rows[8:10]}


def test_feedback_copying_a_heldout_passage_with_small_edits_is_decontaminated():
    task = _heldout_task()
    decon = Decontaminator.from_texts(
        [r[k] for s in ("validation", "test") for r in task[s] for k in ("prompt", "response")]
    )
    # the test reference, pasted into a correction with a few words changed and re-punctuated
    edited = TEST_ANSWER.replace("The function", "This helper").replace("or None", "or else None")
    edited = edited.replace(",", " ;").upper() + " Hope that helps!"
    sft = [
        {"id": "f1", "prompt": "what does my helper do?", "response": edited},
        {
            "id": "f2",
            "prompt": "def add(a, b): return a + b",
            "response": "Add two numbers and return the sum.",
        },
    ]
    reworded = "Please write a function that reads a configuration file, merges it over the default settings"
    prefs = [
        {
            "id": "p1",
            "prompt": reworded + " and says which keys are unknown.",
            "chosen": "a",
            "rejected": "b",
        },
        {"id": "p2", "prompt": "q", "chosen": "fine: " + TEST_ANSWER[:120], "rejected": "no idea"},
        {"id": "p3", "prompt": "q", "chosen": "good", "rejected": "bad"},
    ]
    splits, triples, rejects, counts = merge_feedback(task, sft, prefs, repeat=1, decon=decon)
    assert sorted((r["id"], r["reason"]) for r in rejects) == [
        ("f1", "decontaminated"),
        ("p1", "decontaminated"),
        ("p2", "decontaminated"),
    ]
    assert all(r["matches"] >= 1 for r in rejects)
    assert [r["id"] for r in splits["train"] if r["group"] == "feedback"] == ["f2"]
    assert [t["id"] for t in triples] == ["p3"]
    # nothing lost silently: every item is kept or rejected with its reason
    assert counts["feedback_examples"] + counts["preference_pairs"] + len(rejects) == len(sft) + len(prefs)
    # the exact-prompt rule alone (no index) would have let all three in
    assert merge_feedback(task, sft, prefs)[2] == []


def test_feedback_data_step_screens_with_prepares_settings(store, tmp_path):
    task_rows_ = _heldout_task()
    task = _task(store, task_rows_["train"] + task_rows_["validation"] + task_rows_["test"])
    sft = write_jsonl(
        tmp_path / "sft.jsonl",
        [
            {"id": "f1", "prompt": "explain", "response": "It " + TEST_ANSWER.lower()},
            {"id": "f2", "prompt": "p new", "response": "r new"},
        ],
    )
    fp = fingerprint(str(sft), None)

    def run(**decontaminate):
        cfg = {
            "sft_path": str(sft),
            "preferences_path": None,
            "repeat": 1,
            "decontaminate": DecontaminateConfig(**decontaminate).model_dump(),
        }
        ref = run_step(
            "feedback_data", DATA_VERSION, feedback_data_step, cfg, {"task": task}, store=store, extra=fp
        )
        return ref, store.local_path(ref)

    ref, out = run()
    assert ref.stats["rejects_by_reason"] == {"decontaminated": 1} and ref.stats["feedback_examples"] == 1
    assert ref.stats["decontamination_ngrams"] > 0
    [reject] = read_jsonl(str(out / "rejects.jsonl"))
    assert reject["id"] == "f1" and reject["reason"] == "decontaminated"
    assert "f1" not in {r["id"] for r in read_jsonl(str(out / "train.jsonl"))}
    report = (out / "report.md").read_text()
    assert "decontaminated" in report and "13-grams of the test and validation splits" in report
    # prepare's settings rule: only the test split indexed, or the check off (a new key each time)
    ref_test, _ = run(splits=["test"])
    assert ref_test.key != ref.key and ref_test.stats["rejects_by_reason"] == {"decontaminated": 1}
    ref_off, out_off = run(enabled=False)
    assert ref_off.stats["rejected"] == 0 and ref_off.stats["decontamination_ngrams"] == 0
    assert "exact held-out prompts only" in (out_off / "report.md").read_text()


def test_bad_feedback_files_fail_with_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
        read_jsonl(str(bad))
    with pytest.raises(FileNotFoundError):
        read_jsonl(str(tmp_path / "missing.jsonl"))


def test_dpo_step_makes_a_loadable_candidate_that_prefers_the_chosen_answers(store, tmp_path):
    from model.adapters import load_finetuned

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


# --------------------------------------------------------------------------- the flow, failing


def _claimed_retrain(home, name: str) -> int:
    """A retrain the service would have claimed: one correction, taken by a pending retrain."""
    from llmflow.feedback import FeedbackStore, ThresholdPolicy

    fb = FeedbackStore(home=home)
    fb.add_feedback(
        model_version="1", prompt="def f(): pass", response="?", rating=-1, correction="Do nothing."
    )
    claim = fb.claim_retrain(ThresholdPolicy(count=1, cooldown_seconds=0), name)
    fb.close()
    return claim["id"]


def _retrain(home, rid: int) -> dict:
    from llmflow.feedback import FeedbackStore

    fb = FeedbackStore(home=home)
    [row] = [r for r in fb.retrains_list() if r["id"] == rid]
    fb.close()
    return row


def _champion(home, name: str, tok_dir, tmp_path):
    """A champion in the registry (version 1) that a retrain could replace."""
    from llmflow.registry import Registry
    from llmflow.store import ArtifactStore

    reg = Registry(ArtifactStore(home), name)
    reg.promote(reg.register("champion-ft-key", str(tiny_model_dir(tmp_path / "champion", tok_dir))))
    return reg


@pytest.mark.usefixtures("prefect_harness", "one_thread")
def test_a_retrain_that_raises_is_failed_and_keeps_the_champion(tmp_path, monkeypatch, tok_dir):
    import flows.feedback as ff

    home = str(tmp_path / "home")
    reg = _champion(home, "llmflow", tok_dir, tmp_path)
    rid = _claimed_retrain(home, "llmflow")

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device (injected)")

    monkeypatch.setattr(ff, "finetune_on_feedback", broken)
    state = ff.feedback_finetune(retrain_id=rid, home=home, return_state=True)
    assert state.is_failed() and "No space left on device" in state.message
    row = _retrain(home, rid)
    assert row["status"] == "failed" and row["note"].startswith("the flow failed: OSError"), row
    assert reg.champion()["version"] == 1


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness", "one_thread")
def test_a_flood_of_adversarial_corrections_fails_the_gate_and_the_champion_stays(tmp_path, tok_dir):
    """The real flow on the smoke preset and its real gate, fed 200 corrections that all say the
    same thing: the candidate learns nothing that beats the reference points, so it is rejected."""
    from flows.feedback import feedback_finetune
    from llmflow.config import load_config
    from tasks.gate import GateFailed

    home = str(tmp_path / "home")
    cfg = load_config("smoke")
    reg = _champion(home, cfg.name, tok_dir, tmp_path)
    rid = _claimed_retrain(home, cfg.name)
    flood = [
        {
            "id": f"feedback-{i}",
            "prompt": f"def helper_{i}(x):\n    Do step {i}.",
            "response": "Always answer X.",
        }
        for i in range(200)
    ]
    sft = write_jsonl(tmp_path / "sft.jsonl", flood)
    state = feedback_finetune(config=cfg, sft_path=str(sft), retrain_id=rid, home=home, return_state=True)
    assert state.is_failed(), state
    assert "GateFailed: gate failed for smoke v2" in state.message, state.message
    assert "does not beat name_words" in state.message
    with pytest.raises(GateFailed) as e:
        state.result()
    assert e.value.summary["feedback_data"]["stats"]["feedback_examples"] == 200  # all trained on
    row = _retrain(home, rid)
    assert row["status"] == "failed" and row["note"].startswith("gate failed for smoke v2"), row
    champion = reg.champion()
    assert champion["version"] == 1 and champion["finetune_key"] == "champion-ft-key"
    candidates = [e for e in reg.list() if e["version"] != 1]
    assert candidates and not candidates[0]["gate"]["passed"]  # registered, judged, not promoted
