"""The `base_model` step: a checkpoint brought from elsewhere, as an artifact the later steps read.

`finetune.base` (fine-tune it, no tokenizer training or pretraining) and `pretrain.init_from`
(continue pretraining it) name a local directory or a hub name (model/hub.py). `preflight` resolves
and checks it before any step runs (a missing model, a hub name offline and not cached, a
tokenizer larger than the embedding table, layers peft cannot wrap: one-line InputErrors) and
gives the fingerprint of its files, the step's `extra`, so that a changed checkpoint changes the
key.

Output: `model/`, what `AutoModelForCausalLM` / `AutoTokenizer` load (config, safetensors
weights hard-linked from the source when they share a disk, else copied; tokenizer files; the
model card), the tokenizer carrying its own chat template or, when it has none, llmflow's
(model/chat.py); `base.json`: source, hub revision, licence, architecture, tokenizer and
embedding sizes. The pack, pretrain, finetune, evaluate and serve steps use this tokenizer and
template; no llmflow tokenizer is trained. `base.json` names the base as the config does, never by
its place in a hub cache: the same key gives the same files on any machine.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from llmflow.config import BaseModelConfig, InputError, PipelineConfig
from llmflow.step import StepContext
from llmflow.store import ArtifactStore, StepRef
from model import hub
from model.adapters import check_base
from model.chat import CHAT_TEMPLATE
from tasks.common import step_task

VERSION = 1
WEIGHTS = ("*.safetensors", "*.safetensors.index.json")
FILES = ("*.json", "*.jinja", "*.model", "*.tiktoken", "*.txt", "README.md", "LICENSE*")
BASE_JSON = "base.json"


def _what(config: PipelineConfig) -> str:
    return "finetune.base" if config.finetune.base else "pretrain.init_from"


def preflight(config: PipelineConfig) -> tuple[BaseModelConfig, str] | None:
    """(the step's section, the files' fingerprint) of the configured base model, checked; None
    when the pipeline pretrains from scratch. Raises InputError before any work starts."""
    section = config.base_model()
    if section is None:
        return None
    what = _what(config)
    base = hub.resolve(section.source, what)
    weights(base.path, f"{what} {section.source!r}")
    check_base(base.path, config.finetune, what=f"{what} {section.source!r}")
    return section, hub.fingerprint(base)


def weights(path: Path, what: str) -> list[Path]:
    """The safetensors weight files of a model directory; InputError when it has none."""
    found = sorted(f for pattern in WEIGHTS for f in Path(path).glob(pattern))
    if not any(f.suffix == ".safetensors" for f in found):
        raise InputError(
            f"{what} has no safetensors weights (llmflow never unpickles *.bin): convert it with "
            "`save_pretrained(..., safe_serialization=True)`"
        )
    return found


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link to the file behind `src` (the hub cache keeps symlinks to blobs), else a copy."""
    try:
        os.link(src.resolve(), dst)
    except OSError:  # another disk, or links not allowed: copy
        shutil.copyfile(src, dst)


def base_model_step(ctx: StepContext) -> dict[str, Any]:
    """Bring a base checkpoint in: its weights, its tokenizer and chat template, its licence."""
    from transformers import AutoTokenizer

    cfg: BaseModelConfig = ctx.config
    base = hub.resolve(cfg.source)
    model_dir = ctx.out / "model"
    model_dir.mkdir()
    for f in weights(base.path, f"base model {cfg.source!r}"):
        _link_or_copy(f, model_dir / f.name)
    for f in sorted({f for pattern in FILES for f in base.path.glob(pattern)}):
        if f.is_file() and not (model_dir / f.name).exists():
            shutil.copyfile(f, model_dir / f.name)  # copies: the tokenizer files may be rewritten
    info = check_base(model_dir, what=f"base model {cfg.source!r}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(model_dir)
    record = {
        "source": cfg.source,
        "hub": base.hub_name,
        "revision": base.revision,
        "license": hub.licence(model_dir),
        **info,
    }
    (ctx.out / BASE_JSON).write_text(json.dumps(record, indent=2))
    ctx.report(
        f"# Base model `{cfg.source}`\n\n"
        + "".join(f"- {k}: {v}\n" for k, v in record.items())
        + "\nIts own tokenizer is used for packing, fine-tuning, evaluation and serving; "
        + (
            "prompts use its own chat template.\n"
            if info["chat_template"] == "own"
            else "it has no chat template, so llmflow's is used (its role markers are plain text "
            "in this vocabulary unless they are tokens of it).\n"
        )
    )
    return record


def tokenizer_dir(path: Path) -> Path:
    """The tokenizer folder of a `tokenizer` or `base_model` artifact."""
    return path / "model" if (path / BASE_JSON).exists() else path


def base_record(store: ArtifactStore, ref: StepRef) -> dict[str, Any] | None:
    """`base.json` of the base_model artifact at or above `ref` (None: pretrained from scratch)."""
    todo, seen = [(ref.step, ref.key)], set()
    while todo:
        step, key = todo.pop()
        if (step, key) in seen:
            continue
        seen.add((step, key))
        if step == "base_model":
            path = Path(store.local_path((step, key))) / BASE_JSON
            return {"key": key, **json.loads(path.read_text())} if path.exists() else None
        inputs = (store.manifest(step, key) or {}).get("inputs") or {}
        todo += [(r["step"], r["key"]) for r in inputs.values()]
    return None


base_model = step_task("base_model", VERSION, base_model_step)
