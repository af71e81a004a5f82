"""The pretraining loop on accelerate: one process inside a task, or many under `accelerate launch`.

    python -m model.train --config job.json                       # one process
    accelerate launch --multi_gpu --num_processes 2 -m model.train --config job.json

`job.json` = {"config": <PretrainConfig>, "shards": dir, "out": dir, "checkpoints": dir,
"tokenizer": dir or null, "init_from": model dir or null}. With `init_from` the run continues
pretraining that checkpoint (a base model's `model/` folder) instead of a fresh preset model. The
main process writes `out/model/`, `out/metrics.json` and `out/loss.csv`; when launched, it prints
`@@progress {"done","total","message"}` and `@@step {"row","fraction"}` lines that the pretrain
task turns into progress reports and live curves.

What a step is: `grad_accum` micro-batches of `batch_size` windows per process, then one
optimizer update. The learning-rate schedule runs on a progress fraction in [0, 1], the largest
of step/max_steps, tokens/max_tokens and seconds/max_seconds, so a wall-clock budget still decays
the learning rate to its floor exactly when time runs out.

The pieces the training loops share live here, once: `make_accelerator` (precision and a clean
accelerate state), `build_optimizers`, `lr_factor`/`set_lr` (the schedule), `run_fraction` and
`should_stop` (step and wall-clock budgets). The fine-tuning loops (model/sft.py, model/dpo.py)
import them; this loop and model/sft.py's save and resume through model/checkpoint.py.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llmflow.config import PretrainConfig
from model import checkpoint as ckpt
from model import flex, fsdp
from model.data import ShardError, TrainBatches, check_split, open_split, read_meta
from model.eval import evaluate_bpb
from model.hardware import hardware, resolve_precision
from model.presets import build_config, build_model, count_params

ProgressFn = Callable[[float, float, str], None]
LogFn = Callable[[str], None]
# Called on the main process after every optimizer step with that step's row (step, tokens,
# seconds, lr, loss, and val_loss/val_bpb on evaluation steps) and the run's fraction done.
StepHook = Callable[[dict[str, Any], float], None]


def make_accelerator(mixed_precision: str, grad_accum: int = 1, strategy: str = "ddp"):
    """An Accelerator for one run, precision resolved by `resolve_precision`; `strategy="fsdp"`
    shards the model with FSDP2 (model/fsdp.py), on GPUs and, with gloo, on CPU.

    accelerate keeps its state in process-wide singletons: a second run in the same process (a
    retried task, tests, pretrain then finetune) may use another precision or accumulation, so
    the state is reset first, unless we are one of several launched processes.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from model import fsdp

    if not torch.distributed.is_initialized():
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    plugin = fsdp.plugin() if strategy == "fsdp" else None
    acc = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=resolve_precision(mixed_precision),
        gradient_accumulation_steps=grad_accum,
        fsdp_plugin=plugin,
    )
    if plugin is not None:
        if acc.num_processes < 2:
            raise ValueError("strategy=fsdp needs at least 2 processes: launch with num_processes >= 2")
        fsdp.enable_on_cpu(acc, plugin)
    return acc


def lr_factor(cfg, step: int, progress: float) -> float:
    """Multiplier of cfg.lr: linear warmup by steps, then cosine / warmup-stable-decay / constant.

    `cfg` is any config with `warmup_steps` (PretrainConfig, FinetuneConfig, DPOConfig); one
    without `schedule`/`min_lr_ratio` gets cosine decay to zero.
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    schedule = getattr(cfg, "schedule", "cosine")
    floor = getattr(cfg, "min_lr_ratio", 0.0)
    p = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))
    if schedule == "wsd":
        start = 1 - cfg.decay_fraction
        return 1.0 if p < start else 1 - (1 - floor) * (p - start) / cfg.decay_fraction
    return 1.0


def set_lr(optimizers: list[torch.optim.Optimizer], lr: float) -> None:
    """The schedule is a pure function of (step, progress): no scheduler object to checkpoint."""
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = lr


def run_fraction(
    step: int,
    max_steps: int,
    seconds: float,
    max_seconds: float | None = None,
    tokens: int = 0,
    max_tokens: int | None = None,
) -> float:
    """How far the run is, in [0, inf): the largest of its step, token and wall-clock budgets."""
    p = step / max_steps
    if max_tokens:
        p = max(p, tokens / max_tokens)
    if max_seconds:
        p = max(p, seconds / max_seconds)
    return p


def should_stop(acc, fraction: float) -> bool:
    """True once `fraction` >= 1; under several processes rank 0's wall clock decides for all."""
    stop = torch.tensor([1.0 if fraction >= 1.0 else 0.0], device=acc.device)
    if acc.num_processes > 1:
        stop = acc.reduce(stop, reduction="max")
    return stop.item() > 0


def build_optimizers(model, cfg, fused: bool = False) -> list[torch.optim.Optimizer]:
    """AdamW (no decay on norms/biases), or Muon for 2-D hidden matrices + AdamW for the rest.

    Only parameters with `requires_grad` are optimised, so the same builder serves pretraining,
    full fine-tuning and adapters (LoRA / prompt tuning). `cfg` needs `lr`; `weight_decay` and
    `optimizer` default to 0 and AdamW (FinetuneConfig, DPOConfig).
    Muon uses `adjust_lr_fn="match_rms_adamw"` (Moonshot's scaling) so one `lr` serves both.
    Embeddings and the output head stay on AdamW, as Muon's authors advise.
    """
    decay = getattr(cfg, "weight_decay", 0.0)
    emb = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    params = [p for p in dict.fromkeys(model.parameters()) if p.requires_grad]
    matrices = [p for p in params if p.ndim == 2 and id(p) not in emb]
    embeds = [p for p in params if id(p) in emb]
    vectors = [p for p in params if p.ndim < 2]
    adam_kw = dict(lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused or None)
    if getattr(cfg, "optimizer", "adamw") == "muon":
        from model.muon import use_float32_on_cpu

        use_float32_on_cpu()  # the library's bfloat16 iteration is ~90x slower on CPUs
        muon = torch.optim.Muon(matrices, lr=cfg.lr, weight_decay=decay, adjust_lr_fn="match_rms_adamw")
        groups = [{"params": embeds, "weight_decay": decay}, {"params": vectors, "weight_decay": 0.0}]
        return [muon, torch.optim.AdamW(groups, **adam_kw)]
    groups = [
        {"params": matrices + embeds, "weight_decay": decay},
        {"params": vectors, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    return [torch.optim.AdamW(groups, **adam_kw)]


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token: 6N (N without the input embedding) + attention 12 * L * d * T."""
    c = model.config
    n = count_params(model, non_embedding=True)
    attn_span = min(seq_len, getattr(c, "sliding_window", None) or seq_len)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 6 * n + 12 * c.num_hidden_layers * c.num_attention_heads * head_dim * attn_span


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = ["step", "tokens", "lr", "loss", "val_loss", "val_bpb"]  # no wall-clock: same run, same file
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def train(
    cfg: PretrainConfig,
    shards_dir: str | Path,
    out_dir: str | Path,
    checkpoint_dir: str | Path | None = None,
    tokenizer_dir: str | Path | None = None,
    on_progress: ProgressFn | None = None,
    log: LogFn = print,
    init_from: str | Path | None = None,
    on_step: StepHook | None = None,
) -> dict[str, Any]:
    """Pretrain from scratch, or from the weights at `init_from` (or resume from
    `checkpoint_dir`); returns the metrics dict.

    Raises ShardError for unusable shards, ValueError for a vocabulary/model mismatch, and
    CheckpointError for a checkpoint that cannot be resumed.
    """
    from accelerate.utils import set_seed
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out_dir, shards_dir = Path(out_dir), Path(shards_dir)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else out_dir / "checkpoints"
    acc = make_accelerator(cfg.mixed_precision, cfg.grad_accum, cfg.strategy)
    sharded = fsdp.is_sharded(acc)
    precision = acc.mixed_precision
    main = acc.is_main_process
    say = log if main else (lambda _m: None)

    meta = read_meta(shards_dir)
    vocab = int(meta["vocab_size"])
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        tok_len = len(AutoTokenizer.from_pretrained(tokenizer_dir))
        if tok_len > vocab:
            raise ValueError(
                f"tokenizer has {tok_len} tokens but the shards' vocab_size is {vocab}: "
                f"they come from different tokenizers"
            )
    check_split(open_split(shards_dir, "validation", meta), "validation", cfg.seq_len, vocab)  # fail early
    data = TrainBatches(
        shards_dir, cfg.seq_len, cfg.batch_size, seed=cfg.seed, rank=acc.process_index, vocab_size=vocab
    )

    set_seed(cfg.seed)  # identical init on every process
    # a sliding window under torch.compile goes through flex attention, which skips the blocks
    # outside the window; uncompiled, flex runs torch's dense reference, so SDPA stays
    use_flex = cfg.sliding_window is not None and cfg.compile and flex.available()
    if init_from is not None:
        from model.hub import load_init

        model = load_init(init_from, vocab, cfg.seq_len)
    else:
        config = build_config(
            cfg.preset,
            vocab,
            arch=cfg.arch,
            seq_len=cfg.seq_len,
            sliding_window=cfg.sliding_window,
            tie_embeddings=cfg.tie_embeddings,
            bos_token_id=meta.get("bos_id"),
            eos_token_id=meta.get("eos_id"),
            pad_token_id=meta.get("pad_id"),
        )
        model = build_model(config, attention=flex.FLEX if use_flex else "sdpa")
    if cfg.gradient_checkpointing:
        enable = (
            getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        )
        enable()
        model.config.use_cache = False
    optimizers = build_optimizers(model, cfg, fused=torch.cuda.is_available())
    model, *optimizers = acc.prepare(model, *optimizers)
    raw = acc.unwrap_model(model)
    raw_opts = [o.optimizer for o in optimizers]
    if cfg.compile:
        model = torch.compile(model)

    n_params = count_params(raw)
    fpt = flops_per_token(raw, cfg.seq_len)
    hw, peak, watts = hardware()
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * acc.num_processes

    step, tokens, elapsed, rows = 0, 0, 0.0, []
    if cfg.resume:
        state = ckpt.latest(
            checkpoint_dir, raw, raw_opts, rank=acc.process_index, sharded=acc if sharded else None
        )
        if state is not None:
            step, tokens, elapsed, rows = state["step"], state["tokens"], state["elapsed"], state["rows"]
            say(f"resumed from {state['path']} at step {step}")
    name = f"{raw.config.model_type} from {init_from}" if init_from else f"{cfg.arch}/{cfg.preset}"
    say(
        f"pretrain {name}: {n_params / 1e6:.2f}M params, {acc.num_processes} process(es) "
        f"({'fsdp' if sharded else 'ddp' if acc.num_processes > 1 else 'single'}), "
        f"{precision}, {tokens_per_step} tokens/step on {hw}"
    )

    def progress_of(step: int, tokens: int, seconds: float) -> float:
        return run_fraction(step, cfg.max_steps, seconds, cfg.max_seconds, tokens, cfg.max_tokens)

    def evaluate() -> dict[str, float]:
        return evaluate_bpb(raw, shards_dir, "validation", cfg.seq_len, cfg.batch_size, cfg.eval_batches, acc)

    def save_checkpoint() -> None:
        state = {"tokens": tokens, "elapsed": elapsed, "rows": rows, "config": cfg.model_dump(mode="json")}
        ckpt.save(
            checkpoint_dir, step, raw, raw_opts, state,
            is_main=main, rank=acc.process_index, keep=cfg.keep_checkpoints, barrier=acc.wait_for_everyone,
            sharded=acc if sharded else None,
        )  # fmt: skip

    model.train()
    seen = hashlib.sha256()  # this process's batches, to show that replicas saw different data
    t_start = time.time() - elapsed
    window_t, window_tok = time.time(), 0
    last_val: dict[str, float] | None = None
    while True:
        elapsed = time.time() - t_start
        done = progress_of(step, tokens, elapsed)
        if should_stop(acc, done):
            break
        lr = cfg.lr * lr_factor(cfg, step, done)
        set_lr(raw_opts, lr)
        loss_sum = torch.zeros((), device=acc.device)
        for micro in range(cfg.grad_accum):
            x, y = data.batch(step, micro)
            seen.update(x.numpy().tobytes())
            with acc.accumulate(model):
                logits = model(input_ids=x.to(acc.device)).logits
                loss = torch.nn.functional.cross_entropy(
                    logits.float().reshape(-1, logits.size(-1)), y.to(acc.device).reshape(-1)
                )
                acc.backward(loss)
                if acc.sync_gradients and cfg.grad_clip > 0:
                    acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                for opt in optimizers:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
        mean_loss = acc.reduce(loss_sum / cfg.grad_accum, reduction="mean").item()
        if not math.isfinite(mean_loss):
            raise FloatingPointError(
                f"loss is {mean_loss} at step {step}: lower pretrain.lr or enable grad_clip"
            )
        step += 1
        tokens += tokens_per_step
        window_tok += tokens_per_step
        elapsed = time.time() - t_start
        row: dict[str, Any] = {
            "step": step,
            "tokens": tokens,
            "seconds": round(elapsed, 3),
            "lr": lr,
            "loss": mean_loss,
        }
        if step % cfg.log_every == 0 or step == 1:
            tps = window_tok / max(time.time() - window_t, 1e-9)
            row["tokens_per_s"] = round(tps, 1)
            window_t, window_tok = time.time(), 0
            say(f"step {step} loss {mean_loss:.4f} lr {lr:.2e} {tps:,.0f} tok/s")
        if step % cfg.eval_every == 0:
            last_val = evaluate()
            row.update(val_loss=last_val["loss"], val_bpb=last_val["bpb"])
            say(f"step {step} val_loss {last_val['loss']:.4f} val_bpb {last_val['bpb']:.4f}")
        rows.append(row)
        fraction = min(progress_of(step, tokens, elapsed), 1.0)
        if on_progress is not None and main:
            on_progress(fraction, 1.0, f"step {step} loss {mean_loss:.3f}")
        if on_step is not None and main:
            on_step(dict(row), fraction)
        if step % cfg.checkpoint_every == 0:
            save_checkpoint()

    train_seconds = time.time() - t_start
    if last_val is not None and rows and rows[-1]["step"] == step:
        final = last_val
    else:
        final = evaluate()
        if rows:
            rows[-1].update(val_loss=final["loss"], val_bpb=final["bpb"])
    if not rows or step % cfg.checkpoint_every:
        save_checkpoint()

    tps = tokens / max(train_seconds, 1e-9)
    flops = fpt * tokens
    metrics = {
        "val_bpb": final["bpb"],
        "val_loss": final["loss"],
        "val_ppl": final["ppl"],
        "train_loss": rows[-1]["loss"] if rows else None,
        "steps": step,
        "tokens": tokens,
        "seconds": round(train_seconds, 2),
        "tokens_per_s": round(tps, 1),
        "params": n_params,
        "params_non_embedding": count_params(raw, non_embedding=True),
        "flops": flops,
        "flops_per_token": fpt,
        "mfu": flops / max(train_seconds, 1e-9) / (peak * acc.num_processes),
        "peak_flops_assumed": peak * acc.num_processes,
        "hardware": hw,
        "energy_wh": watts * acc.num_processes * train_seconds / 3600,
        "watts_assumed": watts * acc.num_processes,
        "num_processes": acc.num_processes,
        "strategy": "fsdp" if sharded else "ddp",
        "replicas": _replicas(acc, raw, seen.hexdigest()),
        "mixed_precision": precision,
        "arch": raw.config.model_type if init_from else cfg.arch,
        "preset": None if init_from else cfg.preset,
    }
    weights = fsdp.full_state_dict(acc, model) if sharded else None  # collective: every process
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        raw.save_pretrained(out_dir / "model", safe_serialization=True, state_dict=weights)
        if tokenizer_dir is not None and (Path(tokenizer_dir) / "config.json").exists():
            from transformers import AutoTokenizer  # a base model's folder: its tokenizer only

            AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out_dir / "model")
        elif tokenizer_dir is not None:
            for f in Path(tokenizer_dir).iterdir():
                if f.is_file() and f.name != "manifest.json":
                    shutil.copy2(f, out_dir / "model" / f.name)
        _write_csv(out_dir / "loss.csv", rows)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        say(f"done: {step} steps, {tokens:,} tokens, val_bpb {final['bpb']:.4f}, {tps:,.0f} tok/s")
    acc.wait_for_everyone()
    return metrics


def _replicas(acc, model, data_sha: str) -> list[dict[str, Any]]:
    """Per process: a digest of the batches it trained on and of the weights it holds. DDP
    replicas must differ in the first and agree in the second (the gradients were all-reduced);
    under FSDP each process holds its own shards, so both differ."""
    mine = {"rank": acc.process_index, "data_sha256": data_sha, "weights_sha256": fsdp.shard_digest(model)}
    if acc.num_processes == 1:
        return [mine]
    from accelerate.utils import gather_object

    return sorted(gather_object([mine]), key=lambda r: r["rank"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="job JSON (see the module docstring)")
    args = parser.parse_args(argv)
    job = json.loads(Path(args.config).read_text())
    cfg = PretrainConfig.model_validate(job["config"])

    def progress(done: float, total: float, message: str) -> None:
        print("@@progress " + json.dumps({"done": done, "total": total, "message": message}), flush=True)

    def step_row(row: dict[str, Any], fraction: float) -> None:
        print("@@step " + json.dumps({"row": row, "fraction": fraction}), flush=True)

    try:
        train(
            cfg, job["shards"], job["out"], job.get("checkpoints"), job.get("tokenizer"),
            on_progress=progress, log=lambda m: print(m, flush=True), init_from=job.get("init_from"),
            on_step=step_row,
        )  # fmt: skip
    except (ShardError, ckpt.CheckpointError, ValueError) as e:
        print(f"@@error {type(e).__name__}: {e}", flush=True)
        raise SystemExit(2) from None
    finally:
        from accelerate.state import PartialState

        if PartialState._shared_state and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
