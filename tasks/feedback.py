"""Feedback steps: served-model feedback turned into training data, and preference tuning.

`feedback_data` (inputs: task: task_data) merges the supervised examples of a feedback export
(`sft.jsonl`, corrections as `{id, prompt, response}`) into the task's train split and carries
the preference triples (`preferences.jsonl`, `{id, prompt, chosen, rejected}`) along. Its output
has the task_data layout, so `finetune` and `evaluate` read it like any task data:

* validation.jsonl and test.jsonl are the task's, unchanged: the retrained model is judged on
  the same held-out set as the champion, and the gate's comparison stays paired;
* a correction whose prompt is a held-out (validation/test) prompt is rejected (`heldout`):
  training on it would leak the test set into the model that is then scored on it;
* a correction or preference pair that shares a word n-gram with a held-out prompt or response
  is rejected (`decontaminated`): the same check, index and settings (`prepare.decontaminate`)
  as `prepare` applies to pretraining documents (tasks/decontaminate.py), so a pasted test
  answer with a few words changed does not get in either;
* a correction of a training prompt replaces that row's response (feedback is newer);
* of several corrections of one prompt the latest wins (`duplicate` for the others);
* each feedback example is repeated `repeat` times: a few corrections among hundreds of task
  rows would otherwise hardly be sampled by a short fine-tune.

`feedback_dpo` (inputs: model: finetune, task: feedback_data) runs DPO
(`model.dpo.dpo_train`) on the preference triples with a fresh LoRA adapter over the
fine-tuned model as reference, and saves the merged model in the finetune artifact layout
(`model/`, `adapter/`, `metrics.json`, `lineage.json`), so `evaluate` and `gate` take it as
the candidate.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import fsspec
from pydantic import BaseModel, ConfigDict, Field

from llmflow.step import StepContext
from tasks.common import step_task
from tasks.decontaminate import Decontaminator

DATA_VERSION = 1
DPO_VERSION = 1
HELDOUT = ("validation", "test")


class FeedbackTuning(BaseModel):
    """How feedback enters a fine-tune (a parameter of the `feedback-finetune` flow)."""

    model_config = ConfigDict(extra="forbid")

    repeat: int = Field(default=4, ge=1, le=100, description="Times each correction is repeated in train.")
    dpo: bool = Field(default=True, description="Tune on preference pairs (DPO) after the supervised step.")
    min_pairs: int = Field(default=1, ge=1, description="Fewer usable preference pairs skip DPO.")


def read_jsonl(path: str | None) -> list[dict[str, Any]]:
    """Rows of a local or fsspec JSONL file (None -> []). Raises on a missing file or bad JSON."""
    if not path:
        return []
    rows = []
    with fsspec.open(path, "r", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{n}: a row is a JSON object")
                rows.append(row)
    return rows


def fingerprint(sft_path: str | None, preferences_path: str | None) -> str:
    """sha256 of the feedback files' contents: the step key follows the data, not the path."""
    h = hashlib.sha256()
    for p in (sft_path, preferences_path):
        h.update(b"\0")
        if p:
            with fsspec.open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def _text(row: dict[str, Any], *keys: str) -> bool:
    return all(isinstance(row.get(k), str) and row[k].strip() for k in keys)


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def merge_feedback(
    task: dict[str, list[dict[str, Any]]],
    sft: list[dict[str, Any]],
    prefs: list[dict[str, Any]],
    repeat: int = 1,
    decon: Decontaminator | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """(splits, preference triples, rejects, counts): the rules in the module docstring. `decon`
    indexes the held-out splits (None: the exact prompt check only)."""
    heldout = {_norm(r["prompt"]) for s in HELDOUT for r in task[s] if isinstance(r.get("prompt"), str)}
    rejects: list[dict[str, Any]] = []

    def contaminated(r: dict[str, Any], *keys: str) -> int:
        """Shared n-grams of the item's texts, as one document (0 when it may be trained on)."""
        if decon is None:
            return 0
        keep, _, _, found = decon("\n\n".join(r[k] for k in keys))
        return 0 if keep else found

    latest: dict[str, dict[str, Any]] = {}
    for i, r in enumerate(sft):
        rid = str(r.get("id", f"sft-{i}"))
        if not _text(r, "prompt", "response"):
            rejects.append({"id": rid, "kind": "sft", "reason": "invalid:missing_text"})
        elif _norm(r["prompt"]) in heldout:
            rejects.append({"id": rid, "kind": "sft", "reason": "heldout"})
        elif found := contaminated(r, "prompt", "response"):
            rejects.append({"id": rid, "kind": "sft", "reason": "decontaminated", "matches": found})
        else:
            key = _norm(r["prompt"])
            if key in latest:
                rejects.append({"id": latest[key]["id"], "kind": "sft", "reason": "duplicate"})
            latest[key] = {"id": rid, "prompt": r["prompt"], "response": r["response"], "group": "feedback"}
    train, replaced = [], 0
    for r in task["train"]:
        if isinstance(r.get("prompt"), str) and _norm(r["prompt"]) in latest:
            replaced += 1  # the correction supersedes the task's answer
            continue
        train.append(r)
    for ex in latest.values():
        train.extend({**ex, "id": f"{ex['id']}#{k}" if k else ex["id"]} for k in range(repeat))
    triples = []
    for i, r in enumerate(prefs):
        rid = str(r.get("id", f"pref-{i}"))
        if not _text(r, "prompt", "chosen", "rejected"):
            rejects.append({"id": rid, "kind": "preference", "reason": "invalid:missing_text"})
        elif r["chosen"].strip() == r["rejected"].strip():
            rejects.append({"id": rid, "kind": "preference", "reason": "invalid:same_answers"})
        elif _norm(r["prompt"]) in heldout:
            rejects.append({"id": rid, "kind": "preference", "reason": "heldout"})
        elif found := contaminated(r, "prompt", "chosen", "rejected"):
            rejects.append({"id": rid, "kind": "preference", "reason": "decontaminated", "matches": found})
        else:
            triples.append({k: r[k] for k in ("prompt", "chosen", "rejected")} | {"id": rid})
    counts = {"feedback_examples": len(latest), "replaced": replaced, "preference_pairs": len(triples)}
    return {"train": train, **{s: task[s] for s in HELDOUT}}, triples, rejects, counts


def feedback_data_step(ctx: StepContext) -> dict[str, Any]:
    """Merge feedback corrections into the task data; carry the preference pairs."""
    cfg = ctx.config
    task_dir = ctx.input_path("task")
    task = {s: read_jsonl(str(task_dir / f"{s}.jsonl")) for s in ("train", *HELDOUT)}
    sft, prefs = read_jsonl(cfg.get("sft_path")), read_jsonl(cfg.get("preferences_path"))
    d = cfg["decontaminate"]  # prepare.decontaminate: feedback is screened like training data
    decon = (
        Decontaminator.from_task_dir(task_dir, d["ngram"], d["splits"], d["min_matches"], d["min_words"])
        if d["enabled"]
        else None
    )
    splits, triples, rejects, counts = merge_feedback(task, sft, prefs, cfg.get("repeat", 1), decon)
    if not splits["train"]:
        raise ValueError("feedback_data: the merged train split is empty")
    for s, rows in splits.items():
        _write(ctx.out / f"{s}.jsonl", rows)
    _write(ctx.out / "preferences.jsonl", triples)
    _write(ctx.out / "rejects.jsonl", rejects)
    by_reason: dict[str, int] = {}
    for r in rejects:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    stats = {
        **{s: len(rows) for s, rows in splits.items()},
        **counts,
        "repeat": cfg.get("repeat", 1),
        "rejected": len(rejects),
        "rejects_by_reason": by_reason,
        "decontamination_ngrams": len(decon) if decon is not None else 0,
    }
    screened = (
        f"{len(decon):,} word {d['ngram']}-grams of the {' and '.join(d['splits'])} splits, as `prepare` "
        "screens pretraining data"
        if decon is not None
        else "exact held-out prompts only (`prepare.decontaminate.enabled` is false)"
    )
    ctx.report(
        "# Feedback data\n\n"
        f"- corrections merged into train: {counts['feedback_examples']} (x{stats['repeat']}), "
        f"replacing {counts['replaced']} task answers\n"
        f"- preference pairs: {counts['preference_pairs']}\n"
        f"- rejected: {len(rejects)} {by_reason or ''}\n"
        f"- held-out check: {screened}\n"
        f"- splits: {stats['train']} train, {stats['validation']} validation, {stats['test']} test "
        "(held-out splits unchanged, so the gate compares like with like)\n\n"
        f"Sources: `{cfg.get('sft_path')}`, `{cfg.get('preferences_path')}`\n"
    )
    return stats


def feedback_dpo_step(ctx: StepContext) -> dict[str, Any]:
    """DPO on the preference pairs over the fine-tuned model; a finetune-layout candidate."""
    from model import launch as launcher
    from model.adapters import save_finetuned
    from model.dpo import dpo_train

    cfg = ctx.config  # FinetuneConfig: LoRA settings and its `dpo` section
    tuned = ctx.input_path("model")
    base_name = f"finetune/{ctx.inputs['model'].key}/model"
    if launcher.is_launched(cfg):  # DDP under accelerate launch: model/dpo.py's main saves the candidate
        launcher.check_machine(cfg)
        job = {"config": cfg.model_dump(mode="json"), "model": str(tuned / "model"), "out": str(ctx.out),
               "triples": str(ctx.input_path("task") / "preferences.jsonl"), "base_name": base_name}  # fmt: skip
        job_file = ctx.out / "job.json"
        job_file.write_text(json.dumps(job))
        cmd = launcher.command("model.dpo", job_file, cfg)
        launcher.run(cmd, cfg.num_processes, ctx.progress, lambda m: ctx.logger.info("%s", m), "DPO")
        job_file.unlink()
        stats = json.loads((ctx.out / "launched.json").read_text())
        (ctx.out / "launched.json").unlink()
    else:
        triples = read_jsonl(str(ctx.input_path("task") / "preferences.jsonl"))
        model, tokenizer, stats = dpo_train(
            tuned / "model", triples, cfg.dpo, lora=cfg, progress=ctx.progress
        )
        save_finetuned(
            model, tokenizer, ctx.out, "lora", tuned / "model", stats["base_fingerprint"], base_name
        )
    ctx.timings["seconds"] = stats.pop("seconds")  # wall clock: the manifest's, not the files'
    sft_metrics = json.loads((tuned / "metrics.json").read_text())
    stats = {**stats, "sft": {k: sft_metrics.get(k) for k in ("method", "train_loss", "val_loss")}}
    (ctx.out / "metrics.json").write_text(json.dumps(stats, indent=2))
    lineage = json.loads((tuned / "lineage.json").read_text())
    lineage["dpo"] = {"step": "finetune", "key": ctx.inputs["model"].key, "config": cfg.dpo.model_dump()}
    (ctx.out / "lineage.json").write_text(json.dumps(lineage, indent=2))
    ctx.report(
        "# Preference tuning (DPO)\n\n"
        f"- pairs: {stats['pairs']} ({stats['rejected']} rejected), {stats['steps']} steps, beta {stats['beta']}\n"
        f"- preference margin log p(chosen) - log p(rejected): {stats['margin_before']} -> "
        f"{stats['margin_after']} (reference {stats['reference_margin']})\n"
    )
    return {k: v for k, v in stats.items() if k != "base_fingerprint"}


feedback_data = step_task("feedback_data", DATA_VERSION, feedback_data_step)
feedback_dpo = step_task("feedback_dpo", DPO_VERSION, feedback_dpo_step)
