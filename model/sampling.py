"""Many samples per prompt, fast: the decode loop behind minimum Bayes risk decoding's draws.

transformers' `generate` keeps every row of the batch in every step until the last one ends,
and draws each token with `torch.multinomial` over the whole vocabulary after top-k has already
zeroed all but k logits. For MBR's 16 prompts x 32 samples on a CPU that is most of the cost:
on the demo's model a third of the time went to `multinomial` (one exponential variate per
vocabulary entry per row) and most rows had finished long before the longest. This loop draws
the same distribution (the row's logits plus its copy bias, divided by the temperature, cut to
the top k, then to the top-p nucleus, as transformers orders its warpers) from the k kept
logits only, and drops a row from the batch, KV cache included, once it emits a stop token.
"""

from __future__ import annotations

import torch

DEFAULT_TOP_K = 50  # transformers' default when the generation config sets none

# Generation-config settings that change the sampled distribution, with their neutral values: a
# model whose config sets any of them otherwise (a repetition penalty, min-p, ...) is sampled by
# transformers itself (`supports`).
_NEUTRAL = {
    "repetition_penalty": 1.0,
    "typical_p": 1.0,
    "min_p": 0.0,
    "top_h": None,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "no_repeat_ngram_size": 0,
    "min_length": 0,
    "min_new_tokens": 0,
    "guidance_scale": 1.0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
    "watermarking_config": None,
}


def _setting(model, key: str):
    """`key` of the model's generation config; None when it has no config or leaves it unset."""
    return getattr(getattr(model, "generation_config", None), key, None)


def supports(model) -> bool:
    """Whether this loop draws what transformers would for `model`: its generation config asks
    for nothing beyond temperature, top-k and top-p."""
    return all(_setting(model, k) in (None, [], v) for k, v in _NEUTRAL.items())


def sampling_top_k(model, top_k: int | None) -> int | None:
    """The top-k `generate` would use: the argument, else the model's generation config, else 50;
    None when that is 0 (no cut)."""
    if top_k is None:
        top_k = _setting(model, "top_k")
        top_k = DEFAULT_TOP_K if top_k is None else top_k
    return top_k or None


def sampling_top_p(model, top_p: float | None) -> float | None:
    """The top-p `generate` would use: the argument, else the model's generation config (None: 1)."""
    return top_p if top_p is not None else _setting(model, "top_p")


def draw(scores: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """One token per row of `scores` (rows x vocab), sampled from softmax(scores / temperature)
    restricted to the top `top_k` and then to the smallest prefix holding `top_p` of the mass
    (always at least one token)."""
    scores = scores / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        scores, index = scores.topk(top_k, dim=-1)
    else:
        scores, index = scores.sort(dim=-1, descending=True)
    if top_p is not None and top_p < 1.0:
        probs = scores.softmax(-1)
        before = probs.cumsum(-1) - probs  # the mass of the tokens ranked above each one
        scores = scores.masked_fill(before >= top_p, float("-inf"))
    choice = torch.multinomial(scores.softmax(-1), 1)
    return index.gather(-1, choice).squeeze(-1)


@torch.no_grad()
def sample_continuations(
    model,
    inputs: dict,
    *,
    max_new_tokens: int,
    temperature: float,
    stop_ids: list[int],
    top_k: int | None = None,
    top_p: float | None = None,
    row_bias: torch.Tensor | None = None,
) -> list[list[int]]:
    """New token ids for each row of `inputs` (from `model.generate._repeated_prompts`: the rows'
    left-padded `input_ids` and `attention_mask` and a KV cache of all but their last token),
    each cut before its first stop id. `row_bias` (rows x vocab) is added to the row's logits at
    every step (the copy bias). `top_k` and `top_p` default to the model's generation config, as
    in transformers; the caller checks `supports(model)` first."""
    if not temperature > 0:
        raise ValueError(f"sampling needs a temperature > 0, got {temperature}")
    name = next(k for k in inputs if k not in ("input_ids", "attention_mask"))  # the cache's argument
    cache = inputs[name]
    mask = inputs["attention_mask"]
    current = inputs["input_ids"][:, -1:]
    top_k, top_p = sampling_top_k(model, top_k), sampling_top_p(model, top_p)
    stops = torch.tensor(stop_ids, device=current.device)
    rows = torch.arange(current.shape[0], device=current.device)  # the original row of each live row
    out: list[list[int]] = [[] for _ in range(current.shape[0])]
    for _ in range(max_new_tokens):
        position = mask.sum(-1, keepdim=True) - 1
        logits = (
            model(
                input_ids=current, attention_mask=mask, position_ids=position, use_cache=True, **{name: cache}
            )
            .logits[:, -1]
            .float()
        )
        if row_bias is not None:
            logits = logits + row_bias[rows, : logits.shape[-1]]
        token = draw(logits, temperature, top_k, top_p)
        done = torch.isin(token, stops)
        for r, t in zip(rows[~done].tolist(), token[~done].tolist(), strict=True):
            out[r].append(t)
        if done.all():
            break
        if done.any():
            keep = (~done).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            rows, token, mask = rows[keep], token[keep], mask[keep]
        current = token[:, None]
        mask = torch.cat([mask, torch.ones_like(current)], dim=-1)
    return out
