"""The supervised fine-tuning recipe (LoRA, prompt tuning, full): one explicit loop, torchtune style.

`finetune` loads the base, encodes the rows (model/sft_data.py), wraps the model for the method
(model/adapters.py) and runs `train_sft`. The loop is built from model/train.py's pieces
(accelerate and mixed precision, the AdamW builder, warmup + cosine schedule, step and wall-clock
budgets) and model/checkpoint.py: every `checkpoint_every` steps it saves the trainable weights
(the adapter, or all weights for full), optimizer, RNG states and step, and a rerun with the same
checkpoint directory resumes exactly: the same per-step losses as a run that never stopped.

Under `accelerate launch` (DDP; LoRA, prompt tuning or full) each of the W processes trains on
its own batch of the same step, batch `step * W + rank` of the epoch order, and the logged loss
is their mean; `python -m model.sft --config job.json` is the launched entry (see `main`).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmflow.config import FinetuneConfig
from model import checkpoint as ckpt
from model.adapters import base_fingerprint, load_base, param_counts, wrap_model
from model.sft_data import IGNORE, BucketedBatches, SFTData, build_sft, collate
from model.train import (
    LogFn,
    ProgressFn,
    StepHook,
    build_optimizers,
    lr_factor,
    make_accelerator,
    run_fraction,
    set_lr,
    should_stop,
)

log = logging.getLogger("llmflow.finetune")


@torch.no_grad()
def mean_loss(model, examples: list[dict[str, list[int]]], pad_id: int, batch_size: int = 16) -> float:
    """Token-weighted mean cross-entropy over the response tokens of `examples`."""
    if not examples:
        return float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for s in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[s : s + batch_size], pad_id).items()}
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        total += float(model(**batch).loss) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


def sft_loss(model, batch: dict[str, torch.Tensor], prompt_weight: float = 0.0) -> torch.Tensor:
    """The training loss of a collated batch: the mean cross-entropy of the response tokens, or,
    with `prompt_weight` > 0, the weighted mean over every real token, the prompt's weighing
    `prompt_weight` and the response's 1 (bos and padding are never targets)."""
    if not prompt_weight:
        return model(**batch).loss
    ids, attention = batch["input_ids"], batch["attention_mask"]
    # prompt tuning prepends virtual tokens: the last len(ids) positions are the real ones
    logits = model(input_ids=ids, attention_mask=attention).logits[:, -ids.shape[1] :]
    weight = torch.where(batch["labels"][:, 1:] != IGNORE, 1.0, prompt_weight) * attention[:, 1:]
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none"
    )
    return (ce * weight.flatten()).sum() / weight.sum()


@dataclass
class TrainResult:
    model: Any
    stats: dict[str, Any]
    history: list[dict[str, float]]


def _neftune(model, alpha: float):
    """NEFTune's noise on the input embeddings in training mode (transformers' hook); the handle
    to remove it, or None when `alpha` is 0."""
    if not alpha:
        return None
    from transformers.integrations.neftune import neftune_post_forward_hook

    embed = model.get_input_embeddings()
    embed.neftune_noise_alpha = alpha
    return embed.register_forward_hook(neftune_post_forward_hook)


def train_sft(
    model,
    train: list[dict[str, list[int]]],
    validation: list[dict[str, list[int]]],
    cfg: FinetuneConfig,
    pad_id: int,
    progress: ProgressFn | None = None,
    checkpoint_dir: str | Path | None = None,
    log: LogFn = log.info,
    on_step: StepHook | None = None,
) -> TrainResult:
    """The fine-tuning loop. `model` is already wrapped (see `wrap_model`); returns it unwrapped.

    With `checkpoint_dir`, saves a checkpoint every `cfg.checkpoint_every` steps (and at the end)
    and, when `cfg.resume`, first continues from the newest one that loads (CheckpointError when
    none does, or when they belong to another model or adapter). `progress(fraction, 1.0, msg)`
    is called after every step with msg `step N loss L`, and `on_step(row, fraction)` with the
    step's history row (step, tokens so far, seconds, lr, loss).
    """
    if not train:
        raise ValueError("no usable training examples (all rows were rejected?)")
    acc = make_accelerator(cfg.mixed_precision)
    world, rank, main = acc.num_processes, acc.process_index, acc.is_main_process
    say = log if main else (lambda _m: None)
    optimizers = build_optimizers(model, cfg, fused=torch.cuda.is_available())
    model, *optimizers = acc.prepare(model, *optimizers)
    raw, raw_opts = acc.unwrap_model(model), [o.optimizer for o in optimizers]
    params = [p for p in model.parameters() if p.requires_grad]
    batches = BucketedBatches([len(e["input_ids"]) for e in train], cfg.batch_size, cfg.seed)

    torch.manual_seed(cfg.seed)  # dropout; a resume restores the generator from the checkpoint
    step, elapsed, history = 0, 0.0, []
    if checkpoint_dir is not None and cfg.resume:
        state = ckpt.latest(checkpoint_dir, raw, raw_opts, rank=rank)
        if state is not None:
            step, elapsed, history = state["step"], state["elapsed"], state["history"]
            say(f"resumed from {state['path']} at step {step}")

    def save_checkpoint() -> None:
        state = {"elapsed": elapsed, "history": history, "config": cfg.model_dump(mode="json")}
        ckpt.save(
            checkpoint_dir, step, raw, raw_opts, state,
            is_main=main, rank=rank, keep=cfg.keep_checkpoints, barrier=acc.wait_for_everyone,
        )  # fmt: skip

    model.train()
    noise = _neftune(raw, cfg.neftune_alpha)
    t_start = time.time() - elapsed
    while True:
        elapsed = time.time() - t_start
        done = run_fraction(step, cfg.max_steps, elapsed, cfg.max_seconds)
        if should_stop(acc, done):
            break
        lr = cfg.lr * lr_factor(cfg, step, done)
        set_lr(raw_opts, lr)
        examples = [train[i] for i in batches(step * world + rank)]
        batch = {k: v.to(acc.device) for k, v in collate(examples, pad_id).items()}
        loss = sft_loss(model, batch, cfg.prompt_loss_weight)
        acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        step += 1
        # every process takes its own batch: the run's tokens are about `world` times this one's
        tokens = (history[-1]["tokens"] if history else 0) + world * sum(
            len(e["input_ids"]) for e in examples
        )
        elapsed = time.time() - t_start
        mean = acc.reduce(loss.detach(), reduction="mean").item() if world > 1 else loss.item()
        history.append({"step": step, "tokens": tokens, "loss": mean, "lr": lr, "seconds": round(elapsed, 3)})
        fraction = min(run_fraction(step, cfg.max_steps, elapsed, cfg.max_seconds), 1.0)
        if progress is not None and main:
            progress(fraction, 1.0, f"step {step} loss {history[-1]['loss']:.3f}")
        if on_step is not None and main:
            on_step(dict(history[-1]), fraction)
        if checkpoint_dir is not None and step % cfg.checkpoint_every == 0:
            save_checkpoint()
    if checkpoint_dir is not None and history and step % cfg.checkpoint_every:
        save_checkpoint()
    seconds = time.time() - t_start
    if noise is not None:
        noise.remove()
    model = acc.unwrap_model(model)
    tail = [h["loss"] for h in history[-10:]]
    stats = {
        "method": cfg.method,
        "steps": step,
        "train_loss": round(sum(tail) / len(tail), 4) if tail else float("nan"),
        "first_loss": round(history[0]["loss"], 4) if history else float("nan"),
        "val_loss": round(mean_loss(model, validation, pad_id, cfg.batch_size), 4) if validation else None,
        "seconds": round(seconds, 2),
        "mixed_precision": acc.mixed_precision,
        "num_processes": world,
    }
    return TrainResult(model=model, stats=stats, history=history)


def finetune(
    model_dir: str | Path,
    train_rows: list[dict[str, Any]],
    validation_rows: list[dict[str, Any]],
    cfg: FinetuneConfig,
    progress: ProgressFn | None = None,
    checkpoint_dir: str | Path | None = None,
    log: LogFn = log.info,
    on_step: StepHook | None = None,
) -> tuple[TrainResult, Any, dict[str, SFTData]]:
    """Load the base at `model_dir`, fine-tune it with `cfg.method`: (result, tokenizer, data).

    `checkpoint_dir`: where `train_sft` saves and resumes checkpoints (None: no checkpoints).
    """
    model, tokenizer = load_base(model_dir)
    tokenizer.truncation_side = cfg.truncation_side  # saved with the model (save_finetuned)
    fingerprint = base_fingerprint(model)
    data = {
        "train": build_sft(train_rows, tokenizer, cfg.max_len),
        "validation": build_sft(validation_rows, tokenizer, cfg.max_len),
    }
    torch.manual_seed(cfg.seed)  # the adapter's initialisation
    model = wrap_model(model, cfg, tokenizer_dir=model_dir)
    trainable, total = param_counts(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    result = train_sft(
        model, data["train"].examples, data["validation"].examples, cfg, pad_id, progress, checkpoint_dir, log,
        on_step,
    )  # fmt: skip
    result.stats.update(
        trainable_params=trainable,
        total_params=total,
        trainable_fraction=round(trainable / total, 6),
        base_fingerprint=fingerprint,
        train_examples=len(data["train"].examples),
        validation_examples=len(data["validation"].examples),
        truncated=data["train"].truncated + data["validation"].truncated,
        rejected=len(data["train"].rejects) + len(data["validation"].rejects),
        rejects_by_reason=dict(
            Counter(data["train"].rejects_by_reason) + Counter(data["validation"].rejects_by_reason)
        ),
    )
    return result, tokenizer, data


def main(argv: list[str] | None = None) -> None:
    """The launched entry: job JSON {"config", "base", "train", "validation", "out", "checkpoints",
    "base_name"}. The main process saves the fine-tuned model to `out` (adapters.save_finetuned)
    and `out/launched.json` (stats, history, rejects) for the finetune step to finish from."""
    from model import adapters
    from model.sft_data import read_rows

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="job JSON (see main's docstring)")
    job = json.loads(Path(parser.parse_args(argv).config).read_text())
    cfg = FinetuneConfig.model_validate(job["config"])
    out = Path(job["out"])

    def progress(done: float, total: float, message: str) -> None:
        print("@@progress " + json.dumps({"done": done, "total": total, "message": message}), flush=True)

    try:
        val_rows = read_rows(job["validation"]) if job.get("validation") else []
        result, tokenizer, data = finetune(
            job["base"], read_rows(job["train"]), val_rows, cfg, progress, job["checkpoints"],
            log=lambda m: print(m, flush=True),
        )  # fmt: skip
        from accelerate.state import PartialState

        if PartialState().is_main_process:
            stats = result.stats
            adapters.save_finetuned(
                result.model,
                tokenizer,
                out,
                cfg.method,
                job["base"],
                stats["base_fingerprint"],
                job["base_name"],
            )
            rejects = {split: d.rejects for split, d in data.items()}
            launched = {"stats": stats, "history": result.history, "rejects": rejects}
            (out / "launched.json").write_text(json.dumps(launched))
        PartialState().wait_for_everyone()
    except (ckpt.CheckpointError, ValueError) as e:
        print(f"@@error {type(e).__name__}: {e}", flush=True)
        raise SystemExit(2) from None
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
