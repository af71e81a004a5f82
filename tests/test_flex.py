"""Sliding-window attention through flex attention (block mask) equals the masked SDPA path.

Forward only: uncompiled flex_attention has no backward in torch 2.13, and compiling it on CPU
takes minutes; the compiled path (and its backward) runs in benchmarks/gpu.py."""

from __future__ import annotations

import pytest
import torch

from model import flex
from model.presets import build_config, build_model

VOCAB = 300


@pytest.mark.parametrize("window", [8, None])
def test_flex_block_mask_path_equals_masked_sdpa(window):
    torch.manual_seed(0)
    config = build_config("tiny", VOCAB, seq_len=64, sliding_window=window)
    sdpa = build_model(config).eval()
    fx = build_model(config, attention=flex.FLEX_EAGER).eval()
    fx.load_state_dict(sdpa.state_dict())
    assert fx.config._attn_implementation == flex.FLEX_EAGER
    x = torch.randint(0, VOCAB, (2, 64))
    pad = torch.ones_like(x)
    pad[0, :5] = 0  # left padding: the block mask carries it too
    with torch.no_grad():
        for mask in (None, pad):
            a = sdpa(input_ids=x, attention_mask=mask).logits
            b = fx(input_ids=x, attention_mask=mask).logits
            keep = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.bool()
            torch.testing.assert_close(b[keep], a[keep], rtol=0, atol=1e-5)
    if window is not None:  # and the window matters: full attention gives other logits
        full = build_model(build_config("tiny", VOCAB, seq_len=64)).eval()
        full.load_state_dict(sdpa.state_dict())
        with torch.no_grad():
            assert (full(input_ids=x).logits - sdpa(input_ids=x).logits).abs().max() > 1e-3
