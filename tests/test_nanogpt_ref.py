"""The nanoGPT reference used by benchmarks/nanogpt_compare.py: the recipe, its schedule, and that
the loop learns; plus the comparison's text split and scoring helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks.nanogpt_compare import chunks, full_split_loss, split_text
from benchmarks.nanogpt_ref.model import GPT, GPTConfig
from benchmarks.nanogpt_ref.train import RECIPE, get_lr, train


def test_recipe_is_the_readme_cpu_command():
    want = dict(block_size=64, batch_size=12, n_layer=4, n_head=4, n_embd=128, max_iters=2000,
                lr_decay_iters=2000, dropout=0.0, eval_iters=20, learning_rate=1e-3, min_lr=1e-4,
                warmup_iters=100, beta2=0.99, device="cpu")  # fmt: skip
    assert {k: RECIPE[k] for k in want} == want


def test_schedule_warms_up_then_cosine_to_min_lr():
    assert get_lr(0, RECIPE) == pytest.approx(1e-3 / 101)
    assert get_lr(100, RECIPE) == pytest.approx(1e-3)
    assert get_lr(1050, RECIPE) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))
    assert get_lr(2000, RECIPE) == pytest.approx(1e-4)


def test_model_ties_head_and_scales_residual_init():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=40, n_layer=4, n_head=4, n_embd=64, bias=False))
    assert m.lm_head.weight is m.transformer.wte.weight
    std = m.transformer.h[0].mlp.c_proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(8), rel=0.1)


def test_loop_learns_and_full_split_loss_counts_every_window(tmp_path):
    torch.set_num_threads(1)
    text = "the quick brown fox jumps over the lazy dog. " * 200
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    small = dict(block_size=16, batch_size=8, n_layer=1, n_head=2, n_embd=32, eval_interval=20, eval_iters=2)
    model, info = train(ids, ids, len(chars), str(tmp_path), log=lambda m: None,
                        max_iters=60, lr_decay_iters=60, warmup_iters=5, learning_rate=3e-3, **small)  # fmt: skip
    assert info["iters"] == 61  # iterations 0..max_iters inclusive, as upstream
    assert info["history"][-1]["val"] < info["history"][0]["val"] - 1.0
    nats, count = full_split_loss(model, ids, 16)
    assert count == (len(ids) - 1) // 16 * 16
    assert nats / count < math.log(len(chars))  # better than uniform


def test_split_and_chunks_keep_every_character():
    text = "".join(f"line {i}\n" for i in range(5000))
    tr, va = split_text(text)
    assert tr + va == text and len(tr) == int(len(text) * 0.9)
    parts = chunks(tr, size=1000)
    assert "".join(parts) == tr and all(p.endswith("\n") for p in parts[:-1])
