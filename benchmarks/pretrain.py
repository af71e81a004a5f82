"""Pretraining benchmark: CPU throughput per preset, and validation bits per byte within a fixed
wall-clock budget for architecture (Qwen3 vs Llama), optimizer (AdamW vs Muon) and schedule
(cosine vs warmup-stable-decay), against a minimal nanoGPT-style trainer of the same size.

    .venv/bin/python benchmarks/pretrain.py [--budget 40] [--out benchmarks/pretrain.json]

The corpus is real text: signatures and docstrings of the Python standard library (the demo's
`pydocs` source), tokenized with a byte-level BPE (`tokenizers`, 4,096 ids) and written in the
pack step's shard format, so every contender reads the same windows and is scored by the same
`model.eval` bits per byte. Writes a JSON file and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmflow.config import PretrainConfig  # noqa: E402
from model.data import TrainBatches, eval_windows, open_split, read_meta  # noqa: E402
from model.eval import bits_per_byte, split_counts  # noqa: E402
from model.train import train  # noqa: E402

VOCAB = 4096
SEQ = 256


# ----------------------------------------------------------------------------- data


def build_shards(out: Path, max_bytes: int = 4_000_000) -> Path:
    """Stdlib docs -> byte-level BPE -> pack-format shards (train.bin, validation.bin, meta.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tasks.pydocs import render_object, walk

    docs = []
    for result in walk(False):
        for m in result.modules:
            text = (m.doc or "") + "\n" + "\n".join(render_object(o) for o in m.objects)
            if len(text) > 200:
                docs.append(text)
    docs, total = docs[: 10**6], 0
    kept = []
    for d in docs:
        if total > max_bytes:
            break
        kept.append(d)
        total += len(d.encode())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(kept, trainer=trainer)
    eos = tok.token_to_id("<eos>")
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "dtype": "uint16",
        "vocab_size": tok.get_vocab_size(),
        "bos_id": None,
        "eos_id": eos,
        "pad_id": None,
    }
    splits = {"train": [d for i, d in enumerate(kept) if i % 20], "validation": kept[::20]}
    for split, part in splits.items():
        ids = []
        for enc in tok.encode_batch(part):
            ids += enc.ids + [eos]
        np.asarray(ids, dtype=np.uint16).tofile(out / f"{split}.bin")
        meta[split] = {
            "tokens": len(ids),
            "bytes": sum(len(d.encode()) for d in part),
            "documents": len(part),
        }
    (out / "meta.json").write_text(json.dumps(meta))
    return out


# ----------------------------------------------------------------------------- the bar: nanoGPT


class Block(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj, self.heads = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False), heads
        self.mlp = nn.Sequential(nn.Linear(d, ffn, bias=False), nn.GELU(), nn.Linear(ffn, d, bias=False))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).transpose(1, 3).unbind(2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """nanoGPT: learned positions, pre-LayerNorm blocks, GELU MLP, tied output head."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, ffn: int, seq: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(Block(d, heads, ffn) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.apply(
            lambda m: nn.init.normal_(m.weight, std=0.02) if isinstance(m, nn.Linear | nn.Embedding) else None
        )

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
        for b in self.blocks:
            x = b(x)
        return self.ln(x) @ self.wte.weight.T


def nanogpt_run(shards: Path, cfg: PretrainConfig, d: int, layers: int, heads: int, ffn: int) -> dict:
    torch.manual_seed(cfg.seed)
    meta = read_meta(shards)
    model = GPT(int(meta["vocab_size"]), d, layers, heads, ffn, cfg.seq_len)
    params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )  # fmt: skip
    data = TrainBatches(shards, cfg.seq_len, cfg.batch_size, seed=cfg.seed)
    t0, step = time.time(), 0
    while (time.time() - t0 < cfg.max_seconds) if cfg.max_seconds else step < cfg.max_steps:
        p = (time.time() - t0) / cfg.max_seconds if cfg.max_seconds else step / cfg.max_steps
        warm = min(1.0, (step + 1) / cfg.warmup_steps)
        lr = cfg.lr * warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = data.batch(step)
        loss = F.cross_entropy(model(x).reshape(-1, meta["vocab_size"]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
    seconds = time.time() - t0
    model.eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for x, y in eval_windows(
            open_split(shards, "validation"), cfg.seq_len, cfg.batch_size, cfg.eval_batches
        ):
            nll += F.cross_entropy(
                model(x).reshape(-1, meta["vocab_size"]), y.reshape(-1), reduction="sum"
            ).item()
            n += y.numel()
    tokens = step * cfg.batch_size * cfg.seq_len
    return {
        "val_bpb": bits_per_byte(nll / n, *split_counts(meta, "validation")),
        "val_loss": nll / n, "steps": step, "tokens": tokens, "tokens_per_s": tokens / seconds, "params": params,
    }  # fmt: skip


# ----------------------------------------------------------------------------- runs


def run(shards: Path, work: Path, name: str, **kw) -> dict:
    cfg = PretrainConfig(**kw)
    m = train(cfg, shards, work / name, log=lambda _m: None)
    keep = ("val_bpb", "val_loss", "steps", "tokens", "tokens_per_s", "params", "mfu", "seconds")
    return {"name": name, **{k: m[k] for k in keep}, "step_s": m["seconds"] / max(m["steps"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=40.0, help="wall-clock seconds per quality run")
    ap.add_argument("--preset", default="small", help="preset for the quality comparison")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=SEQ)
    ap.add_argument("--steps", type=int, default=0, help="compare at equal steps instead of equal time")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "pretrain.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    t0 = time.time()
    shards = build_shards(work / "shards")
    meta = read_meta(shards)
    print(f"corpus: {meta['train']['bytes'] / 1e6:.1f} MB train, {meta['train']['tokens']:,} tokens "
          f"({meta['train']['bytes'] / meta['train']['tokens']:.2f} bytes/token), built in {time.time() - t0:.0f}s")  # fmt: skip

    common = dict(seq_len=args.seq, batch_size=args.batch, eval_batches=8, eval_every=10**6, checkpoint_every=10**6,
                  log_every=10**6, warmup_steps=10, lr=3e-3, max_steps=10**6)  # fmt: skip
    throughput = []
    for preset in ("tiny", "small", "demo", "base"):
        r = run(
            shards,
            work,
            f"speed-{preset}",
            **{**common, "preset": preset, "max_steps": 6 if preset != "base" else 3},
        )
        throughput.append(
            {"preset": preset, **{k: r[k] for k in ("params", "tokens_per_s", "step_s", "mfu")}}
        )
        print(
            f"throughput {preset}: {r['params'] / 1e6:.2f}M params, {r['tokens_per_s']:,.0f} tok/s, {r['step_s']:.2f} s/step"
        )

    # --steps: equal optimizer steps instead of equal wall time (immune to a shared, noisy CPU)
    q = {**common, "preset": args.preset}
    q.update({"max_steps": args.steps} if args.steps else {"max_seconds": args.budget})
    contenders = {
        "qwen3 adamw cosine": dict(arch="qwen3", optimizer="adamw", schedule="cosine"),
        "llama adamw cosine": dict(arch="llama", optimizer="adamw", schedule="cosine"),
        "qwen3 muon cosine": dict(arch="qwen3", optimizer="muon", schedule="cosine"),
        "qwen3 adamw wsd": dict(arch="qwen3", optimizer="adamw", schedule="wsd"),
        "qwen3 muon wsd": dict(arch="qwen3", optimizer="muon", schedule="wsd"),
        "qwen3 adamw cosine (small)": dict(
            arch="qwen3", optimizer="adamw", schedule="cosine", preset="small"
        ),
    }
    quality = []
    for name, kw in contenders.items():
        r = run(shards, work, name.replace(" ", "-").replace("(", "").replace(")", ""), **{**q, **kw})
        quality.append({**r, "name": name})
        print(f"{name}: val_bpb {r['val_bpb']:.4f} ({r['steps']} steps, {r['tokens']:,} tokens)")
    from model.presets import PRESETS

    p = PRESETS[args.preset]
    base = nanogpt_run(
        shards, PretrainConfig(**q), p["hidden_size"], p["num_hidden_layers"], p["num_attention_heads"],
        # nanoGPT's 2-matrix GELU MLP: widen it so the parameter count matches the 3-matrix SwiGLU
        int(p["intermediate_size"] * 1.5),
    )  # fmt: skip
    quality.append({"name": "nanoGPT baseline (adamw cosine)", **base})
    print(f"nanoGPT baseline: val_bpb {base['val_bpb']:.4f} ({base['steps']} steps)")

    result = {
        "corpus": {k: meta["train"][k] for k in ("tokens", "bytes")} | {"vocab": meta["vocab_size"]},
        "seq_len": args.seq, "batch_size": args.batch, "budget_s": None if args.steps else args.budget, "steps": args.steps or None, "threads": torch.get_num_threads(),
        "throughput": throughput, "quality": quality, "total_s": round(time.time() - t0, 1),
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    print("\n| preset | params | tokens/s | s/step | MFU |\n|---|---|---|---|---|")
    for r in throughput:
        print(
            f"| {r['preset']} | {r['params'] / 1e6:.2f}M | {r['tokens_per_s']:,.0f} | {r['step_s']:.2f} | {r['mfu']:.1%} |"
        )
    label = f"{args.steps} steps" if args.steps else f"{args.budget:.0f} s budget"
    print(f"\n| run ({label}) | params | steps | tokens | tokens/s | val bpb |\n|---|---|---|---|---|---|")
    for r in quality:
        print(
            f"| {r['name']} | {r['params'] / 1e6:.2f}M | {r['steps']} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} | {r['val_bpb']:.4f} |"
        )


if __name__ == "__main__":
    main()
