"""Attention through `torch.nn.attention.flex_attention` with a block mask: blocks that the mask
rules out entirely (outside a sliding window, above the diagonal) are skipped, so the cost of
sliding-window attention falls with the window instead of staying that of full attention.

transformers builds the BlockMask (its `flex_attention_mask`: causal, sliding window, padding
and packed sequences all in the mask function); the kernel call is ours, registered as two
attention implementations:

    "llmflow_flex"        flex_attention compiled (torch.compile; inductor's Triton kernel on
                          GPUs, its C++ template on CPU, forward only there): the fast path
    "llmflow_flex_eager"  flex_attention uncompiled: torch's reference (dense) implementation of
                          the same mask, for checking the block-mask path against SDPA on CPU

transformers' own "flex_attention" always compiles the kernel and the mask builder; the eager
twin compiles neither, so the equality test runs in seconds on CPU.
"""

from __future__ import annotations

import functools

import torch

FLEX = "llmflow_flex"
FLEX_EAGER = "llmflow_flex_eager"


def available() -> bool:
    """Whether training can take the flex path: a GPU. torch 2.13's flex_attention has no backward
    on CPU ("FlexAttention does not support backward on CPU"), compiled or not; forward runs."""
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, compiled=True, **kwargs):
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    if dropout:
        raise ValueError("flex attention here has no attention dropout: set attention_dropout=0")
    if attention_mask is not None and not isinstance(attention_mask, BlockMask):
        raise TypeError(
            f"expected a BlockMask from transformers' flex mask, got {type(attention_mask).__name__}"
        )
    fn = _compiled_flex() if compiled and not torch.compiler.is_compiling() else flex_attention
    out = fn(
        query, key, value, block_mask=attention_mask, scale=scaling, enable_gqa=query.shape[1] != key.shape[1]
    )
    return out.transpose(1, 2).contiguous(), None


def _eager_block_mask(
    batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
    device="cpu", **kwargs,
):  # fmt: skip
    """transformers' `flex_attention_mask` with `create_block_mask(_compile=False)`: the same
    BlockMask without compiling its builder (minutes on a small CPU)."""
    from torch.nn.attention.flex_attention import create_block_mask
    from transformers.masking_utils import (
        add_offsets_to_mask_function,
        and_masks,
        causal_mask_function,
        fast_all,
        padding_mask_function,
        prepare_padding_mask,
    )

    mask_function = mask_function or causal_mask_function
    if attention_mask is not None and not fast_all(attention_mask):
        padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
        mask_function = and_masks(mask_function, padding_mask_function(padding))
    mask_function = add_offsets_to_mask_function(mask_function, q_offset, kv_offset)
    return create_block_mask(
        mask_function, batch_size, None, q_length, kv_length, device=device, _compile=False
    )


@functools.cache
def register() -> None:
    """Make FLEX and FLEX_EAGER valid `attn_implementation` names (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flex_attention_mask

    AttentionInterface.register(FLEX, functools.partial(_forward, compiled=True))
    AttentionInterface.register(FLEX_EAGER, functools.partial(_forward, compiled=False))
    ALL_MASK_ATTENTION_FUNCTIONS.register(FLEX, flex_attention_mask)
    ALL_MASK_ATTENTION_FUNCTIONS.register(FLEX_EAGER, _eager_block_mask)
