"""Architecture presets: plain transformers configs (Qwen3 or Llama), so every checkpoint loads
with `AutoModelForCausalLM.from_pretrained(dir)` and no remote code.

Sizes (non-embedding parameters, the part that scales compute):

| preset | d_model | layers | heads (kv) | ffn | non-embedding params | use |
|---|---|---|---|---|---|---|
| tiny | 64 | 2 | 4 (2) | 128 | ~70k | tests |
| small | 128 | 4 | 4 (2) | 384 | ~0.8M | CPU, seconds per step |
| demo | 192 | 6 | 6 (2) | 512 | ~2.5M | the 3-minute CPU demo |
| base | 512 | 8 | 8 (4) | 1408 | ~25M | one GPU, or a patient CPU |
| gpt125m | 768 | 12 | 12 (12) | 2048 | ~85M (+ embeddings = 125M at 50k vocab) | GPU |
| 350m | 1024 | 24 | 16 (8) | 2816 | ~300M | GPU |

Qwen3 is the default family: it is Llama plus QK-norm (stabler at the high learning rates short
runs want) and it honours `sliding_window` in transformers 5 (per-layer `layer_types`), which
Llama does not. The measured comparison is in benchmarks/RESULTS.md.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
    ),
    "small": dict(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=384,
    ),
    "demo": dict(
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=512,
    ),
    "base": dict(
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=1408,
    ),
    "gpt125m": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        intermediate_size=2048,
    ),
    "350m": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=8,
        intermediate_size=2816,
    ),
}
ARCHS = ("qwen3", "llama")

# Fields that define the weights' shapes: a checkpoint must match these to be loaded.
ARCH_FIELDS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "head_dim",
    "tie_word_embeddings",
)


def build_config(
    preset: str,
    vocab_size: int,
    *,
    arch: str = "qwen3",
    seq_len: int = 256,
    sliding_window: int | None = None,
    tie_embeddings: bool = True,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
):
    """A transformers config for `preset`. Raises ValueError on an unknown preset/arch or bad option."""
    from transformers import LlamaConfig, Qwen3Config

    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r} (known: {', '.join(PRESETS)})")
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHS)})")
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
    p = dict(PRESETS[preset])
    head_dim = p["hidden_size"] // p["num_attention_heads"]
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        head_dim=head_dim,
        max_position_embeddings=max(seq_len, 128),
        tie_word_embeddings=tie_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        attention_dropout=0.0,
        use_cache=True,
        **p,
    )
    if arch == "llama":
        if sliding_window is not None:
            raise ValueError("sliding_window needs arch 'qwen3': transformers' Llama ignores it")
        cfg = LlamaConfig(**common, attention_bias=False, mlp_bias=False)
    else:
        window = dict(use_sliding_window=False)
        if sliding_window is not None:
            # Every layer local (max_window_layers=0): Qwen3 builds `layer_types` from these.
            window = dict(use_sliding_window=True, sliding_window=sliding_window, max_window_layers=0)
        cfg = Qwen3Config(**common, attention_bias=False, **window)
    cfg._attn_implementation = "sdpa"
    return cfg


def build_model(config, dtype=None, attention: str = "sdpa"):
    """A freshly initialised causal LM for `config` (seed torch first for a reproducible init).

    `attention`: "sdpa" (fused SDPA, a dense mask for a sliding window) or model/flex.py's
    "llmflow_flex" / "llmflow_flex_eager" (flex attention with a block mask that skips the blocks
    outside the window).
    """
    from transformers import AutoModelForCausalLM

    if attention != "sdpa":
        from model import flex

        flex.register()
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=dtype)


def count_params(model, non_embedding: bool = False) -> int:
    """Unique parameters (tied weights once); `non_embedding` drops the input embedding table."""
    seen, total = set(), 0
    emb = model.get_input_embeddings().weight
    for p in model.parameters():
        if id(p) in seen or (non_embedding and p is emb):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def arch_signature(config) -> dict[str, Any]:
    """The shape-defining fields of a config (a dict or a PretrainedConfig)."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    return {k: get(k) for k in ARCH_FIELDS}
