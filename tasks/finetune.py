"""The `finetune` step: supervised fine-tuning of the pretrained base on the task data.

Inputs: `base` (pretrain, or base_model for `finetune.base`: `model/` with tokenizer files) and `task` (task_data: train.jsonl,
validation.jsonl). Output: `adapter/` (peft; not for method=full), `model/` (load it with
`model.adapters.load_finetuned(artifact_dir)`: merged for LoRA/full, base copy + adapter for
prompt tuning), `metrics.json`, `loss.csv`, `rejects.jsonl` (rows not used, with reasons) and
`lineage.json` (base, data, config, code hash; `base_model`: the checkpoint brought in, its hub
revision and licence, when the base is or continues one) for the registry. No file holds a wall-clock
figure or a local path (the training time is in the manifest's timings): the same key gives the
same files in any home. While it trains, the loss curve, tokens/s and time left are shown live
(tasks/live_curves.py: a `finetune-live-curve` artifact and TensorBoard event files).

Checkpoints (trainable weights, optimizer, RNG states, step) are written every
`checkpoint_every` steps to a work directory outside the staging folder,
`<LLMFLOW_HOME>/work/finetune/<key>/checkpoints`, so a killed or retried task with the same key
resumes where it stopped. A forced run (`force`) removes that directory first and starts from
step 0 (a Prefect retry of it resumes its own checkpoints); a successful run removes it too.
With `num_processes > 1` the loop runs under `accelerate launch` (DDP, `python -m model.sft`) on
this machine; its main process writes the model files, the step the rest.
"""

from __future__ import annotations

import csv
import json
import shutil
from typing import Any

import llmflow
from llmflow import events
from llmflow.step import StepContext
from llmflow.store import StepRef
from model import adapters, sft, sft_data
from model import launch as launcher
from tasks.base_model import base_record
from tasks.common import step_task
from tasks.live_curves import LiveCurves

VERSION = 2


def finetune_step(ctx: StepContext) -> dict[str, Any]:
    """Fine-tune the pretrained base on the task (LoRA / prompt tuning / full); resumes from the
    step's own checkpoints."""
    if ctx.force and ctx.work_dir.exists():  # first, before anything can fail: step 0, not resumed
        ctx.logger.info("forced run: removing the earlier run's checkpoints in %s", ctx.work_dir)
        shutil.rmtree(ctx.work_dir)
    cfg = ctx.config
    launcher.check_machine(cfg)
    base_dir = ctx.input_path("base") / "model"
    task_dir = ctx.input_path("task")
    train_rows = sft_data.read_rows(task_dir / "train.jsonl")
    val_path = task_dir / "validation.jsonl"
    val_rows = sft_data.read_rows(val_path) if val_path.exists() and val_path.stat().st_size else []
    ctx.logger.info(
        "finetune %s on %d train / %d validation rows", cfg.method, len(train_rows), len(val_rows)
    )

    ckpts = ctx.work_dir / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    base_ref = ctx.inputs["base"]
    brought = base_record(ctx.store, base_ref)
    hub_name = brought.get("hub") if brought is not None and base_ref.step == "base_model" else None
    base_name = hub_name or f"{base_ref.step}/{base_ref.key}/model"  # never a local path
    with LiveCurves(ctx, f"Fine-tuning ({cfg.method}): live") as live:
        if launcher.is_launched(cfg):
            stats, history, rejects = _launched(ctx, cfg, base_dir, task_dir, ckpts, base_name)
        else:
            result, tokenizer, data = sft.finetune(
                base_dir, train_rows, val_rows, cfg, progress=ctx.progress, checkpoint_dir=ckpts,
                log=lambda m: ctx.logger.info("%s", m), on_step=live,
            )  # fmt: skip
            stats, history = result.stats, result.history
            rejects = {split: d.rejects for split, d in data.items()}
            adapters.save_finetuned(
                result.model, tokenizer, ctx.out, cfg.method, base_dir, stats["base_fingerprint"], base_name
            )
    ctx.timings["seconds"] = stats.pop("seconds")

    with open(ctx.out / "loss.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "loss", "lr"], extrasaction="ignore")
        w.writeheader()
        w.writerows(history)
    with open(ctx.out / "rejects.jsonl", "w") as f:
        for split, rows in rejects.items():
            for r in rows:
                f.write(json.dumps({**r, "split": split}) + "\n")
    (ctx.out / "metrics.json").write_text(json.dumps(stats, indent=2))
    lineage = {
        "base": {"step": base_ref.step, "key": base_ref.key},
        "base_model": None
        if brought is None
        else {k: brought.get(k) for k in ("key", "source", "hub", "revision", "license", "model_type")},
        "data": {"step": "task_data", "key": ctx.inputs["task"].key},
        "config": cfg.model_dump(mode="json"),
        "code": {"llmflow": llmflow.__version__, "sha256": ctx.code},
        "base_fingerprint": stats["base_fingerprint"],
    }
    (ctx.out / "lineage.json").write_text(json.dumps(lineage, indent=2))
    shutil.rmtree(ctx.work_dir, ignore_errors=True)  # the artifact is complete: checkpoints go

    ctx.table(
        [{"metric": k, "value": v} for k, v in stats.items() if not isinstance(v, dict)],
        name="finetune-metrics",
    )
    reasons = (
        "\n".join(f"| {k} | {v} |" for k, v in sorted(stats["rejects_by_reason"].items())) or "| — | 0 |"
    )
    ctx.report(
        f"# Fine-tuning ({cfg.method})\n\n"
        f"- steps: {stats['steps']}\n"
        f"- train loss: {stats['first_loss']} → {stats['train_loss']}; validation loss: {stats['val_loss']}\n"
        f"- trainable parameters: {stats['trainable_params']:,} of {stats['total_params']:,} "
        f"({100 * stats['trainable_fraction']:.2f}%)\n"
        f"- examples: {stats['train_examples']} train, {stats['validation_examples']} validation, "
        f"{stats['truncated']} prompt-truncated, {stats['rejected']} rejected\n\n"
        f"| reject reason | rows |\n|---|---|\n{reasons}\n\n"
        "Load for generation: `model.adapters.load_finetuned(<this artifact>)`.\n"
    )
    return stats


def _launched(ctx: StepContext, cfg, base_dir, task_dir, ckpts, base_name: str):
    """Run model.sft under `accelerate launch` (DDP); (stats, history, rejects) from its main process."""
    val = task_dir / "validation.jsonl"
    job = {
        "config": cfg.model_dump(mode="json"), "base": str(base_dir), "train": str(task_dir / "train.jsonl"),
        "validation": str(val) if val.exists() and val.stat().st_size else None,
        "out": str(ctx.out), "checkpoints": str(ckpts), "base_name": base_name,
    }  # fmt: skip
    job_file = ctx.work_dir / "job.json"
    job_file.write_text(json.dumps(job))
    cmd = launcher.command("model.sft", job_file, cfg)
    launcher.run(cmd, cfg.num_processes, ctx.progress, lambda m: ctx.logger.info("%s", m), "fine-tuning")
    result = json.loads((ctx.out / "launched.json").read_text())
    (ctx.out / "launched.json").unlink()
    return result["stats"], result["history"], result["rejects"]


def _events(ref: StepRef) -> list[tuple[str, str, dict[str, Any]]]:
    payload = {
        "key": ref.key,
        "uri": ref.uri,
        **{k: ref.stats.get(k) for k in ("method", "val_loss", "train_loss")},
    }
    return [(events.MODEL_FINETUNED, events.resource_id("model", ref.key[:12]), payload)]


finetune = step_task("finetune", VERSION, finetune_step, events=_events)
