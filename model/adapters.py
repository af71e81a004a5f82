"""What fine-tuning starts from and what it leaves: the base model, the method's wrapper, outputs.

`load_base` reads an HF model directory and checks its tokenizer belongs to it; `check_base` does
the same checks on a model skeleton (no weights), so a foreign checkpoint is refused before work
starts. `wrap_model` applies the method (peft): `lora` wraps `lora_targets`, the architecture's
linear layers (nn.Linear, or GPT-2's Conv1D) unless `target_modules` names them; `prompt` learns
`num_virtual_tokens` input embeddings initialised from `prompt_init_text`; `full` trains every
weight (the baseline). `save_finetuned` writes `adapter/` (peft format, plus `llmflow_base.json`,
the base's fingerprint) and `model/`: the merged weights (`merge_and_unload`) for LoRA, all
weights for full, and for prompt tuning (which cannot merge) a copy of the base.
`load_finetuned(dir)` is the one way to get a model to generate with: it reads
`model/llmflow_finetune.json` and returns the merged model, or the base with the prompt-tuning
adapter attached. `load_adapter` refuses an adapter trained on another base.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from llmflow.config import FinetuneConfig, InputError
from model.chat import CHAT_TEMPLATE, ROLE_TOKENS, own_format

log = logging.getLogger("llmflow.finetune")

FINETUNE_META = "llmflow_finetune.json"  # in model/: how to load it (merged or base + adapter)
BASE_META = "llmflow_base.json"  # in adapter/: which base the adapter was trained on


def load_base(model_dir: str | Path, device: str | torch.device | None = None):
    """(model, tokenizer) from an HF model directory, checked to belong together."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir} is not a model directory (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:
        raise ValueError(f"{model_dir} has no usable tokenizer: {e}") from e
    tokenizer.truncation_side = "left"  # llmflow's default for a prompt too long (model.chat.fit_prompt)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    check_compatible(model, tokenizer, where=str(model_dir))
    if device is not None:
        model.to(device)
    return model, tokenizer


def check_compatible(model, tokenizer, where: str = "model") -> None:
    """Raise ValueError when the tokenizer cannot drive the model (ids past its embeddings)."""
    n_emb = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_emb:
        raise ValueError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding table has "
            f"{n_emb} rows; this tokenizer does not belong to this model"
        )
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{where}: the tokenizer has no eos token; it cannot end a response")
    if not own_format(tokenizer):
        return  # prompts are rendered with the tokenizer's own chat template
    split = [t for t in ROLE_TOKENS if len(tokenizer(t, add_special_tokens=False)["input_ids"]) != 1]
    if split:
        log.info("%s: role tokens %s are not single tokens of this tokenizer (stopping on eos)", where, split)


class UnwrappableModel(InputError):
    """peft cannot put the configured method on this architecture."""


# Layer types peft's LoRA can wrap (peft.tuners.lora.model dispatches on these).
def _lora_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D

    return (torch.nn.Linear, Conv1D, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def lora_targets(model, requested: list[str] | None = None) -> list[str]:
    """The module names LoRA wraps: `requested`, checked, or every linear layer of the blocks
    (nn.Linear and transformers' Conv1D, as peft's "all-linear": all but the output head).

    Raises UnwrappableModel when a requested name is missing or not a layer peft can wrap, or when
    the architecture has no linear layer at all.
    """
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    arch = getattr(model.config, "model_type", type(model).__name__)
    modules = [(n, m) for n, m in model.named_modules() if n and m is not head]
    if requested:
        by_name: dict[str, list] = {}
        for n, m in modules:
            by_name.setdefault(n.rsplit(".", 1)[-1], []).append(m)
        missing = [t for t in requested if t not in by_name]
        if missing:
            raise UnwrappableModel(
                f"finetune.target_modules {missing} are not modules of this {arch} model "
                f"(its linear layers: {', '.join(lora_targets(model)) or 'none'}); leave target_modules "
                "unset to wrap them all"
            )
        bad = [t for t in requested if not all(isinstance(m, _lora_types()) for m in by_name[t])]
        if bad:
            kinds = sorted({type(m).__name__ for t in bad for m in by_name[t]})
            raise UnwrappableModel(
                f"peft cannot wrap {bad} of this {arch} model with LoRA ({', '.join(kinds)} layers); "
                "name linear layers in finetune.target_modules or use finetune.method=full"
            )
        return list(requested)
    names = sorted({n.rsplit(".", 1)[-1] for n, m in modules if isinstance(m, torch.nn.Linear | Conv1D)})
    if not names:
        raise UnwrappableModel(
            f"peft cannot wrap this {arch} model with LoRA: it has no linear layers; "
            "use finetune.method=full or prompt"
        )
    return names


def check_base(
    model_dir: str | Path, cfg: FinetuneConfig | None = None, what: str = "base model"
) -> dict[str, Any]:
    """Check a base checkpoint without loading its weights; what lineage records of it.

    A transformers causal LM (a skeleton built on the meta device), a tokenizer that loads, has
    an eos and fits the embedding table, and, for `cfg.method == "lora"`, layers peft can wrap.
    Raises InputError with one line.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (ValueError, KeyError, OSError) as e:
        raise InputError(
            f"{what} {model_dir}: not a model transformers knows ({str(e).splitlines()[0]})"
        ) from None
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except ValueError:
        raise InputError(
            f"{what} {model_dir}: a {config.model_type} model is not a causal language model "
            "(AutoModelForCausalLM cannot build it)"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:
        raise InputError(f"{what} {model_dir} has no usable tokenizer: {str(e).splitlines()[0]}") from None
    try:
        check_compatible(skeleton, tokenizer, where=f"{what} {model_dir}")
    except ValueError as e:
        raise InputError(str(e)) from None
    targets = lora_targets(skeleton, cfg.target_modules) if cfg is not None and cfg.method == "lora" else None
    return {
        "model_type": config.model_type,
        "architectures": list(getattr(config, "architectures", None) or []),
        "tokenizer_tokens": len(tokenizer),
        "embedding_rows": skeleton.get_input_embeddings().num_embeddings,
        "chat_template": "own" if tokenizer.chat_template else "llmflow",
        **({"lora_targets": targets} if targets is not None else {}),
    }


def base_fingerprint(model) -> str:
    """A hash of the base architecture and its input embeddings: identifies the base of an adapter."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    h = hashlib.sha256()
    arch = [cfg.model_type, cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers]
    h.update(json.dumps(arch).encode())
    h.update(base.get_input_embeddings().weight.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def wrap_model(model, cfg: FinetuneConfig, tokenizer_dir: str | Path | None = None):
    """Apply the fine-tuning method: a peft model for lora/prompt, the model itself for full."""
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if cfg.method == "lora":
        from transformers.pytorch_utils import Conv1D

        targets = lora_targets(model, cfg.target_modules)
        conv1d = any(
            isinstance(m, Conv1D) and n.rsplit(".", 1)[-1] in targets for n, m in model.named_modules()
        )
        pc = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
            fan_in_fan_out=conv1d,  # Conv1D (GPT-2) stores its weight as (in, out)
        )
    else:
        if tokenizer_dir is None:
            raise ValueError("prompt tuning from text needs the tokenizer directory")
        pc = PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=cfg.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=cfg.prompt_init_text,
            tokenizer_name_or_path=str(tokenizer_dir),
        )
    return get_peft_model(model, pc)


def param_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters; for peft models total includes the frozen base."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def save_finetuned(
    model,
    tokenizer,
    out: str | Path,
    method: str,
    base_dir: str | Path,
    fingerprint: str,
    base_name: str | None = None,
) -> None:
    """Write `out/adapter/` (peft; not for full) and `out/model/` (loadable, with tokenizer).

    LoRA: the adapter, then the merged weights. Prompt tuning: the adapter and a copy of the base
    (`load_finetuned` attaches the adapter). Full: the weights only. `base_name` is what the
    adapter's config and card call the base instead of its local path (which differs per home).
    """
    out = Path(out)
    model_out = out / "model"
    meta: dict[str, Any] = {
        "method": method,
        "merged": method != "prompt",
        "base_fingerprint": fingerprint,
        "truncation_side": tokenizer.truncation_side,  # how it was trained to see long prompts
    }
    if method in ("lora", "prompt"):
        model.save_pretrained(out / "adapter")  # peft reads the base's config at its real path
        if base_name is not None:
            _rename_base(out / "adapter", base_name)
        (out / "adapter" / BASE_META).write_text(json.dumps({"fingerprint": fingerprint}, indent=2))
        meta["adapter"] = "../adapter"
    if method == "prompt":
        shutil.copytree(base_dir, model_out, ignore=shutil.ignore_patterns(FINETUNE_META))
        (model_out / "PROMPT_TUNING.md").write_text(
            "Prompt tuning cannot be merged into the weights: this folder is a copy of the base model.\n"
            "Generate with `model.adapters.load_finetuned(<artifact dir>)`, which attaches ../adapter.\n"
        )
    else:
        merged = model.merge_and_unload() if method == "lora" else model
        merged.save_pretrained(model_out)
    tokenizer.chat_template = tokenizer.chat_template or CHAT_TEMPLATE  # the base's own, or llmflow's
    tokenizer.save_pretrained(model_out)
    (model_out / FINETUNE_META).write_text(json.dumps(meta, indent=2))


def _rename_base(adapter_dir: Path, name: str) -> None:
    """Call the base `name` in a saved adapter's config and card instead of its local path."""
    config_file = adapter_dir / "adapter_config.json"
    config = json.loads(config_file.read_text())
    path, config["base_model_name_or_path"] = config.get("base_model_name_or_path"), name
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    card = adapter_dir / "README.md"
    if path and card.exists():
        card.write_text(card.read_text().replace(path, name))


def load_adapter(base, adapter_dir: str | Path, is_trainable: bool = False):
    """Attach a saved peft adapter to `base`, refusing an adapter trained on another base."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter_dir} is not a peft adapter (no adapter_config.json)")
    meta = adapter_dir / BASE_META
    if meta.exists():
        want, have = json.loads(meta.read_text())["fingerprint"], base_fingerprint(base)
        if want != have:
            raise ValueError(
                f"adapter {adapter_dir} was trained on another base model (fingerprint {want}, this base is {have})"
            )
    try:
        return PeftModel.from_pretrained(base, adapter_dir, is_trainable=is_trainable)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(
            f"adapter {adapter_dir} does not fit this base model: {str(e).splitlines()[0]}"
        ) from e


def load_finetuned(path: str | Path, device: str | torch.device | None = None):
    """(model, tokenizer) ready to generate from a finetune artifact dir or its `model/` folder.

    Merged (LoRA, full) models load with AutoModelForCausalLM; prompt tuning loads the base copy
    in `model/` and attaches `../adapter` (a PeftModel; `generate` works the same). Eval mode.
    The tokenizer's `truncation_side` is the one the model was fine-tuned with.
    """
    path = Path(path)
    model_dir = path / "model" if (path / "model" / "config.json").exists() else path
    meta_path = model_dir / FINETUNE_META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"merged": True}
    model, tokenizer = load_base(model_dir)
    tokenizer.truncation_side = meta.get("truncation_side", "left")
    if not meta.get("merged", True):
        model = load_adapter(model, (model_dir / meta["adapter"]).resolve())
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval()
    return model, tokenizer
