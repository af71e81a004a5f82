"""Export a registry version as a folder the Hugging Face Hub takes as it is.

    DIR/
      config.json, generation_config.json, *.safetensors   the fine-tuned weights (LoRA merged, or full;
                                                           prompt tuning: the base, see adapter/)
      tokenizer.json, tokenizer_config.json, ...          the tokenizer with its chat template
      README.md                                           the version's model card: YAML metadata with
                                                          the evaluation results as `model-index`
      adapter/                                            the peft adapter, when the method has one
      llmflow_finetune.json                               how `model.adapters.load_finetuned(DIR)` loads it

`AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load it,
`huggingface-cli upload REPO DIR` uploads it, and `push` does the same through huggingface_hub.
The folder is staged beside DIR and renamed into place, so DIR is complete or absent. Weights
travel as safetensors only: a pickled weight file in the model folder is an error, never copied.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from llmflow.config import InputError
from llmflow.registry import Registry

FINETUNE_META = "llmflow_finetune.json"  # model.adapters.FINETUNE_META (the kernel imports no model/)
PICKLED = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
SKIPPED = ("PROMPT_TUNING.md",)  # a note about the store's layout (../adapter); the card says it here


def export_version(registry: Registry, ref: int | str, out_dir: str | os.PathLike[str]) -> Path:
    """Write version `ref` (a number, vN or an alias) of `registry` to `out_dir`, which must be new
    or empty. Returns the folder."""
    entry = registry.get(ref)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"export folder {out} is not empty: name a new folder")
    model_dir = Path(entry["model_path"])
    if not (model_dir / "config.json").exists():
        raise InputError(
            f"v{entry['version']}'s model folder {model_dir} is gone (no config.json): re-run its fine-tune"
        )
    files = sorted(p for p in model_dir.iterdir() if p.name not in SKIPPED)
    pickled = [p.name for p in files if p.suffix in PICKLED]
    if pickled or not any(p.suffix == ".safetensors" for p in files):
        raise InputError(f"{model_dir} has no safetensors weights{f' (only {pickled})' if pickled else ''}")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for p in files:
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, stage / p.name)
        meta = _read_json(model_dir / FINETUNE_META)
        adapter = (model_dir / meta["adapter"]).resolve() if meta.get("adapter") else None
        if adapter is not None and adapter.is_dir():
            shutil.copytree(adapter, stage / "adapter")
            meta["adapter"] = "adapter"
        if meta:
            (stage / FINETUNE_META).write_text(json.dumps(meta, indent=2) + "\n")
        (stage / "README.md").write_text(_card(registry, entry, meta))
        if out.exists():
            out.rmdir()
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def _card(registry: Registry, entry: dict[str, Any], meta: dict[str, Any]) -> str:
    """The registry's model card, pointing at this folder instead of the store."""
    path = Path(registry.card_path(entry["version"]))
    if not path.exists():
        raise InputError(f"v{entry['version']} has no model card ({path}): re-run its gate")
    card = path.read_text(encoding="utf-8").replace(f"`{entry['model_path']}`", "this folder")
    how = "`AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` on this folder"
    if meta.get("merged", True) is False:
        how = (
            "this folder holds the base weights and `adapter/` the prompt-tuning adapter: "
            "`peft.PeftModel.from_pretrained(base, 'adapter')`"
        )
    elif meta.get("adapter"):
        how += "; `adapter/` holds the peft adapter before merging"
    return card.rstrip("\n") + f"\n\n## Files\n\nExported by `llmflow models export`: load with {how}.\n"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


# --------------------------------------------------------------------------- the Hub


def hub_token() -> str:
    """The Hugging Face token (HF_TOKEN or `hf auth login`), or a one-line error saying how to set one."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise InputError("--push needs a Hugging Face token: set HF_TOKEN or run `hf auth login`")
    return token


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise InputError(f"bad Hub repository {repo_id!r}: {str(e).splitlines()[0]}") from None
    if "/" not in repo_id:
        raise InputError(f"bad Hub repository {repo_id!r}: name it OWNER/NAME")


def upload_args(folder: str | os.PathLike[str], repo_id: str, token: str, version: int) -> dict[str, Any]:
    """The keyword arguments of `HfApi.upload_folder` for an exported version."""
    return {
        "repo_id": repo_id,
        "folder_path": str(folder),
        "repo_type": "model",
        "token": token,
        "commit_message": f"llmflow export of v{version}",
    }


def push(folder: str | os.PathLike[str], repo_id: str, token: str, version: int, private: bool = True) -> str:
    """Create the Hub repository (private unless told) if needed and upload the folder; the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return str(api.upload_folder(**upload_args(folder, repo_id, token, version)).commit_url)
