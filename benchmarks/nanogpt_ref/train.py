"""nanoGPT's training loop (reimplemented; MIT, Copyright (c) 2022 Andrej Karpathy, see LICENSE).

`RECIPE` is train.py's defaults, overridden by config/train_shakespeare_char.py, overridden by the
README's "I only have a macbook" command line: `--device=cpu --compile=False --eval_iters=20
--log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
--max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`. The loop is upstream's: random windows
(`torch.randint`), an eval of `eval_iters` batches of train and val every `eval_interval` iterations
(iteration 0 included), a checkpoint whenever val improves (always_save_checkpoint False), warmup +
cosine to `min_lr`, grad clipping, and iterations 0..max_iters inclusive. Single process, fp32, no
DDP, no compile (the recipe disables it), no wandb.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext

import numpy as np
import torch

from .model import GPT, GPTConfig

RECIPE = dict(
    eval_interval=250, log_interval=1, eval_iters=20, always_save_checkpoint=False,
    gradient_accumulation_steps=1, batch_size=12, block_size=64,
    n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False,
    learning_rate=1e-3, max_iters=2000, weight_decay=1e-1, beta1=0.9, beta2=0.99, grad_clip=1.0,
    decay_lr=True, warmup_iters=100, lr_decay_iters=2000, min_lr=1e-4, device="cpu", seed=1337,
)  # fmt: skip


def get_lr(it: int, c: dict) -> float:
    if it < c["warmup_iters"]:
        return c["learning_rate"] * (it + 1) / (c["warmup_iters"] + 1)
    if it > c["lr_decay_iters"]:
        return c["min_lr"]
    ratio = (it - c["warmup_iters"]) / (c["lr_decay_iters"] - c["warmup_iters"])
    return c["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (c["learning_rate"] - c["min_lr"])


def train(train_data: np.ndarray, val_data: np.ndarray, vocab_size: int, out_dir: str, log=print, **kw):
    """Run the recipe on uint16 char-id arrays; return (model, {"seconds", "iters", "val_loss" ...})."""
    c = {**RECIPE, **kw}
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(c["seed"])
    ctx = nullcontext()
    device = c["device"]

    def get_batch(split):
        data = train_data if split == "train" else val_data
        ix = torch.randint(len(data) - c["block_size"], (c["batch_size"],))
        x = torch.stack([torch.from_numpy(data[i : i + c["block_size"]].astype(np.int64)) for i in ix])
        y = torch.stack(
            [torch.from_numpy(data[i + 1 : i + 1 + c["block_size"]].astype(np.int64)) for i in ix]
        )
        return x.to(device), y.to(device)

    model_args = dict(n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"], block_size=c["block_size"],
                      bias=c["bias"], vocab_size=vocab_size, dropout=c["dropout"])  # fmt: skip
    model = GPT(GPTConfig(**model_args)).to(device)
    opt = model.configure_optimizers(c["weight_decay"], c["learning_rate"], (c["beta1"], c["beta2"]), "cpu")

    @torch.no_grad()
    def estimate_loss():
        out = {}
        model.eval()
        for split in ("train", "val"):
            losses = torch.zeros(c["eval_iters"])
            for k in range(c["eval_iters"]):
                x, y = get_batch(split)
                with ctx:
                    _, loss = model(x, y)
                losses[k] = loss.item()
            out[split] = losses.mean().item()
        model.train()
        return out

    x, y = get_batch("train")
    start = t0 = time.time()
    iter_num, best_val, history = 0, 1e9, []
    while True:
        lr = get_lr(iter_num, c) if c["decay_lr"] else c["learning_rate"]
        for g in opt.param_groups:
            g["lr"] = lr
        if iter_num % c["eval_interval"] == 0:
            losses = estimate_loss()
            history.append({"iter": iter_num, **losses})
            log(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            if losses["val"] < best_val or c["always_save_checkpoint"]:
                best_val = losses["val"]
                if iter_num > 0:
                    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "model_args": model_args,
                            "iter_num": iter_num, "best_val_loss": best_val, "config": c}  # fmt: skip
                    torch.save(ckpt, os.path.join(out_dir, "ckpt.pt"))
        for _ in range(c["gradient_accumulation_steps"]):
            with ctx:
                _, loss = model(x, y)
                loss = loss / c["gradient_accumulation_steps"]
            x, y = get_batch("train")
            loss.backward()
        if c["grad_clip"] != 0.0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), c["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        t1 = time.time()
        dt, t0 = t1 - t0, t1
        if iter_num % c["log_interval"] == 0 and iter_num % 100 == 0:  # upstream prints every iteration
            log(
                f"iter {iter_num}: loss {loss.item() * c['gradient_accumulation_steps']:.4f}, time {dt * 1000:.2f}ms"
            )
        iter_num += 1
        if iter_num > c["max_iters"]:
            break
    seconds = time.time() - start
    return model, {
        "seconds": seconds,
        "iters": iter_num,
        "history": history,
        "params": model.get_num_params(),
    }
