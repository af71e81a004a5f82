"""Sampling from a causal LM with transformers' `generate` (KV cache, temperature, top-k, top-p)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from model.chat import ROLE_TOKENS, end_marker, fit_prompt, format_prompt
from model.mbr import Evidence
from model.sampling import sample_continuations, supports


def resolve_model_dir(path: str | Path) -> tuple[Path, Path]:
    """(weights directory, tokenizer directory) for any checkpoint a run leaves behind.

    Accepts a model directory (config.json), a step artifact holding `model/`, or a training
    checkpoint `checkpoints/step-N/` (weights in `model/`, tokenizer in the artifact's `model/`
    or the pretrain work directory's run: the nearest ancestor `model/` with tokenizer files).
    """
    path = Path(path)
    weights = path if (path / "config.json").exists() else path / "model"
    if not (weights / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a model directory, artifact or checkpoint (no config.json)")
    for d in (weights, *[p / "model" for p in weights.parents]):
        if (d / "tokenizer_config.json").exists() or (d / "tokenizer.json").exists():
            return weights, d
    raise ValueError(f"{path} has no tokenizer files beside it or in an enclosing model/ directory")


def load(model_dir: str | Path, device: str | None = None):
    """Load a model written by pretrain/finetune (see resolve_model_dir): (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, tok_dir = resolve_model_dir(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    except Exception as e:
        raise ValueError(f"{model_dir} has no usable tokenizer: {e}") from e
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval()
    return model, tokenizer


class CopyBias:
    """A logits processor that adds `bias` to the logits of the tokens of each row's prompt.

    A small model asked to summarise often answers with a fluent phrase it memorised from its
    training data ("Return the median of the population variance.") instead of the words in
    front of it; the copy mechanism of pointer-generator summarisers (See et al. 2017) is the
    usual cure. This is its decoding-time form: every token that occurs in the prompt (special
    and role tokens and whitespace excepted) gets `bias` added to its logit, so the answer leans toward the
    prompt's words. `prompt_ids` holds one list per prompt; sampling with several sequences per
    prompt repeats each row's bias (transformers expands the batch prompt by prompt).
    """

    def __init__(self, prompt_ids: list[list[int]], vocab_size: int, bias: float, exclude: set[int]):
        self.bias = torch.zeros((len(prompt_ids), vocab_size))
        for i, ids in enumerate(prompt_ids):
            keep = sorted({t for t in ids if t not in exclude and 0 <= t < vocab_size})
            self.bias[i, keep] = bias
        self._placed: tuple | None = None

    def per_row(self, repeats: int) -> torch.Tensor:
        """The bias of each row when every prompt is repeated `repeats` times, prompt by prompt."""
        return self.bias.repeat_interleave(repeats, dim=0) if repeats > 1 else self.bias

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        key = (scores.device, scores.dtype, scores.shape[0])
        if self._placed is None or self._placed[0] != key:  # moved and expanded once per generate
            bias = self.per_row(scores.shape[0] // self.bias.shape[0])
            self._placed = (key, bias.to(device=scores.device, dtype=scores.dtype))
        return scores + self._placed[1][:, : scores.shape[-1]]


class NullContrast:
    """A logits processor for context-aware decoding (Shi et al. 2023) / classifier-free guidance
    for language models (Sanchez et al. 2023): the next-token log-probabilities given the prompt
    are pushed away from those given a null prompt, `log p(y|x) + weight * (log p(y|x) - log
    p(y|null))`, so answers the model would give without reading the prompt (a memorised phrase
    about the wrong thing) lose to answers the prompt supports. The null branch runs the same model
    on `null_ids` (one list per prompt, left-padded here) and the tokens generated so far, with its
    own KV cache; sampling several sequences per prompt repeats each prompt's null row."""

    def __init__(self, model, null_ids: list[list[int]], prompt_width: int, weight: float, pad_id: int):
        width = max(len(ids) for ids in null_ids)
        self.ids = torch.full((len(null_ids), width), pad_id, dtype=torch.long)
        self.mask = torch.zeros((len(null_ids), width), dtype=torch.long)
        for i, ids in enumerate(null_ids):
            self.ids[i, width - len(ids) :] = torch.tensor(ids)
            self.mask[i, width - len(ids) :] = 1
        self.model, self.width, self.weight = model, prompt_width, weight
        self.cache = None
        self.seen = 0  # generated tokens already fed to the null branch

    def _null_logprobs(self, input_ids: torch.Tensor) -> torch.Tensor:
        from transformers import DynamicCache

        device = input_ids.device
        new = input_ids[:, self.width :]
        if self.cache is None:
            rows = input_ids.shape[0]
            reps = rows // self.ids.shape[0]
            ids = torch.cat([self.ids.repeat_interleave(reps, 0).to(device), new], 1)
            self.mask = torch.cat([self.mask.repeat_interleave(reps, 0).to(device), torch.ones_like(new)], 1)
            self.cache = DynamicCache(config=self.model.config)
        else:
            ids = new[:, self.seen :]
            self.mask = torch.cat([self.mask, torch.ones_like(ids)], 1)
        self.seen = new.shape[1]
        position = (self.mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        kw = {_cache_arg(self.model): self.cache}
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=position, use_cache=True, **kw)
        return out.logits[:, -1].float().log_softmax(-1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        cond = scores.float().log_softmax(-1)
        null = self._null_logprobs(input_ids)[:, : cond.shape[-1]]
        return (cond + self.weight * (cond - null)).to(scores.dtype)


def _copy_exclusions(tokenizer) -> set[int]:
    """The ids a copy bias never boosts: special tokens and the single-token chat roles."""
    exclude = set(tokenizer.all_special_ids)
    for token in ROLE_TOKENS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        exclude.update(ids if len(ids) == 1 else [])
    return exclude


def _copy_processor(model, tokenizer, encoded: list[list[int]], bias: float, exclude: set[int] | None = None):
    """`generate(logits_processor=...)` for a copy bias; empty when `bias` is 0. `exclude` (grown
    here by the whitespace pieces seen) defaults to `_copy_exclusions(tokenizer)`."""
    if not bias:
        return {}
    from transformers import LogitsProcessorList

    exclude = _copy_exclusions(tokenizer) if exclude is None else exclude
    seen = {t for ids in encoded for t in ids} - exclude
    exclude.update(t for t in seen if not tokenizer.decode([t]).strip())  # newlines, indentation
    vocab = model.get_output_embeddings().weight.shape[0]
    return {"logits_processor": LogitsProcessorList([CopyBias(encoded, vocab, bias, exclude)])}


def _with_contrast(kwargs: dict, model, null_ids, width: int, weight: float, pad_id: int) -> dict:
    """`generate()` kwargs with a fresh `NullContrast` first in the logits processors (before any
    copy bias, which then applies to the contrasted log-probabilities)."""
    from transformers import LogitsProcessorList

    rest = [p for p in kwargs.get("logits_processor", []) if not isinstance(p, NullContrast)]
    return {
        "logits_processor": LogitsProcessorList([NullContrast(model, null_ids, width, weight, pad_id), *rest])
    }


def _marker_id(tokenizer) -> int | None:
    """The id of the answer's end marker (`<|end|>`, `<|im_end|>`) when it is one token."""
    marker = end_marker(tokenizer)
    ids = tokenizer(marker, add_special_tokens=False)["input_ids"] if marker else []
    return ids[0] if len(ids) == 1 and ids[0] != tokenizer.unk_token_id else None


def stop_token_ids(tokenizer) -> list[int]:
    """The ids that end an answer: eos, and the end marker where the tokenizer has it as one token."""
    marker = _marker_id(tokenizer)
    return [tokenizer.eos_token_id] + ([marker] if marker is not None else [])


def stop_strings(tokenizer) -> list[str]:
    """The end marker as text, where it is several tokens (llmflow's format in a foreign vocabulary)."""
    marker = end_marker(tokenizer)
    return [marker] if marker and _marker_id(tokenizer) is None else []


def prompt_budget(model, tokenizer, max_new_tokens: int) -> int:
    """How many prompt tokens (besides bos) fit in the context beside `max_new_tokens`; may be <= 0."""
    max_ctx = getattr(model.config, "max_position_embeddings", None) or 10**9
    bos = 1 if tokenizer.bos_token_id is not None else 0
    return max_ctx - max_new_tokens - bos


def encode_prompt(tokenizer, prompt: str, budget: int) -> tuple[list[int], bool]:
    """(bos + the prompt's ids cut to `budget` as `model.chat.fit_prompt` says, whether it was cut)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids, cut = fit_prompt(tokenizer, prompt, max(1, budget))
    return bos + ids, cut


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    batch_size: int = 16,
    seed: int | None = None,
    mbr_samples: int = 0,
    mbr_temperature: float = 0.8,
    mbr_utility=None,
    mbr_evidence: Sequence[Evidence] | None = None,
    copy_bias: float = 0.0,
    contrast: float = 0.0,
    contrast_prompts: list[str] | None = None,
) -> list[str]:
    """Continue each prompt; returns only the new text. temperature 0 = greedy.

    Prompts are left-padded in batches; one too long for the context is cut as
    `model.chat.fit_prompt` says (the tokenizer's `truncation_side`). Generation stops at
    eos or the answer's end marker (`<|end|>`, or a foreign template's), a token or a text. With
    `mbr_samples` N > 0 (and temperature 0), each answer is chosen by minimum Bayes risk
    (model/mbr.py) among the greedy answer and N samples at `mbr_temperature`; `mbr_evidence`, one
    per prompt, adds pseudo-references to that choice (`model.mbr.choose`). `copy_bias` > 0
    adds that much to the logits of the prompt's own tokens in every decoding (`CopyBias`).
    `contrast` w > 0 is context-aware decoding (`NullContrast`) against the empty prompt, or
    against `contrast_prompts` (rendered, one per prompt), applied before the copy bias.
    """
    if mbr_evidence is not None and len(mbr_evidence) != len(prompts):
        raise ValueError(
            f"mbr_evidence has {len(mbr_evidence)} entries for {len(prompts)} prompts: one per prompt"
        )
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    stop_ids, stop_text = stop_token_ids(tokenizer), stop_strings(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    budget = prompt_budget(model, tokenizer, max_new_tokens)  # room for the answer
    outputs: list[str] = []
    no_copy = _copy_exclusions(tokenizer) if copy_bias else set()  # once, not per batch
    null_prompt = format_prompt("", tokenizer=tokenizer) if contrast else ""
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        encoded = [encode_prompt(tokenizer, p, budget)[0] for p in chunk]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for j, ids in enumerate(encoded):
            input_ids[j, width - len(ids) :] = torch.tensor(ids)
            attention[j, width - len(ids) :] = 1
        copy = _copy_processor(model, tokenizer, encoded, copy_bias, no_copy)
        if contrast:
            nulls = contrast_prompts[i : i + batch_size] if contrast_prompts else [null_prompt] * len(chunk)
            null_ids = [encode_prompt(tokenizer, p, budget)[0] for p in nulls]
            copy = _with_contrast(copy, model, null_ids, width, contrast, pad_id)
        sampling = temperature > 0
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_k=top_k if sampling else None,
            top_p=top_p if sampling else None,
            eos_token_id=stop_ids,
            pad_token_id=pad_id,
            **copy,
            **({"stop_strings": stop_text, "tokenizer": tokenizer} if stop_text else {}),
        )
        answers = _decode(tokenizer, out[:, width:], stop_ids, stop_text)
        if mbr_samples > 0 and not sampling:
            from model.mbr import choose

            if contrast:  # a fresh null branch for the samples
                copy = _with_contrast(copy, model, null_ids, width, contrast, pad_id)
            repeated = _repeated_prompts(model, input_ids.to(device), attention.to(device), mbr_samples)
            if "num_return_sequences" in repeated or contrast or stop_text or not supports(model):
                drawn = model.generate(
                    **repeated,
                    max_new_tokens=max_new_tokens,
                    do_sample=True,
                    temperature=mbr_temperature,
                    eos_token_id=stop_ids,
                    pad_token_id=pad_id,
                    **copy,
                    **({"stop_strings": stop_text, "tokenizer": tokenizer} if stop_text else {}),
                )
                samples = _decode(tokenizer, drawn[:, width:], stop_ids, stop_text)
            else:  # the same draws without transformers' per-step overheads (model/sampling.py)
                bias = copy["logits_processor"][0].per_row(mbr_samples).to(device) if copy else None
                drawn = sample_continuations(
                    model,
                    repeated,
                    max_new_tokens=max_new_tokens,
                    temperature=mbr_temperature,
                    stop_ids=stop_ids,
                    row_bias=bias,
                )
                samples = [tokenizer.decode(ids, skip_special_tokens=True) for ids in drawn]
            answers = [
                choose(
                    [a, *samples[j * mbr_samples : (j + 1) * mbr_samples]],
                    mbr_utility,
                    mbr_evidence[i + j] if mbr_evidence is not None else (),
                )
                for j, a in enumerate(answers)
            ]
        outputs += answers
    return outputs


def _repeated_prompts(model, input_ids: torch.Tensor, attention: torch.Tensor, repeats: int) -> dict:
    """`generate()` inputs for `repeats` samples of each (left-padded) prompt, rows repeated prompt
    by prompt as `num_return_sequences` repeats them, with the prompts' KV cache computed ONCE and
    repeated: transformers would run the prompt once per sample, most of the cost of minimum
    Bayes risk decoding's 16 samples (a 2x saving for the demo's prompts). The cache covers all
    but each prompt's last token, which `generate` then runs itself; position ids are the ones
    `generate` derives from the attention mask. A peft model (prompt tuning's virtual tokens are
    added inside its `generate`) gets `num_return_sequences` instead."""
    if getattr(model, "peft_config", None) is not None or input_ids.shape[1] < 2:
        return {"input_ids": input_ids, "attention_mask": attention, "num_return_sequences": repeats}
    from transformers import DynamicCache

    name = _cache_arg(model)
    cache = DynamicCache(config=model.config)
    position = (attention.long().cumsum(-1) - 1).masked_fill(attention == 0, 1)
    model(
        input_ids=input_ids[:, :-1],
        attention_mask=attention[:, :-1],
        position_ids=position[:, :-1],
        use_cache=True,
        **{name: cache},
    )
    cache.batch_repeat_interleave(repeats)
    return {
        "input_ids": input_ids.repeat_interleave(repeats, dim=0),
        "attention_mask": attention.repeat_interleave(repeats, dim=0),
        name: cache,
    }


def _cache_arg(model) -> str:
    """The forward argument that takes a KV cache: transformers 5.2x calls it `cache`, earlier
    releases `past_key_values`."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _decode(tokenizer, rows: torch.Tensor, stop_ids: list[int], stop_text=None) -> list[str]:
    """New tokens -> text, each row cut at its first stop id (and at a stop text, if any)."""
    out = []
    for row in rows.tolist():
        cut = next((k for k, t in enumerate(row) if t in stop_ids), len(row))
        text = tokenizer.decode(row[:cut], skip_special_tokens=True)
        out.append(text.split(stop_text[0], 1)[0] if stop_text else text)
    return out
