"""A base checkpoint named by the user: a local model directory or a Hugging Face hub name.

`resolve(source)` turns `pretrain.init_from` / `finetune.base` into a local directory with a
`config.json`: a path that exists is used as it is; anything else that is a valid repo id is
looked up through `huggingface_hub.snapshot_download`, from the local cache only when the hub is
offline (`HF_HUB_OFFLINE=1`, read when called), so a cached model works without a network. Only
what a causal LM needs is fetched (configs, safetensors weights, tokenizer files, the card):
no remote code, no pickled weights.

`describe(path)` reads what lineage and the model card say about the base: its architecture and
licence (the card's YAML `license`, else the config's), and `fingerprint` identifies the files,
so that a changed local directory changes the keys of the steps built on it. Every failure is a
`BaseModelError` (an InputError) with one line that says what to change.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from llmflow.config import InputError

# What a causal LM needs from a hub repo: no *.py (remote code), no *.bin/*.pt (pickles).
ALLOW_PATTERNS = [
    "*.json",
    "*.jinja",
    "*.safetensors",
    "*.model",
    "*.tiktoken",
    "*.txt",
    "README.md",
    "LICENSE*",
]


class BaseModelError(InputError):
    """A base model that cannot be used: missing, not cached while offline, or not a causal LM."""


@dataclass(frozen=True)
class BaseSource:
    """A resolved base model: what the user named, where it is, and which files these are."""

    source: str
    path: Path
    revision: str | None  # the hub commit; None for a local directory

    @property
    def hub_name(self) -> str | None:
        """The hub repo id, or None for a local directory."""
        return self.source if self.revision is not None else None


def offline() -> bool:
    """Whether the hub may not be reached: HF_HUB_OFFLINE as set now (huggingface_hub reads it at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "on", "yes", "true"}


def _cache_dir() -> str | None:
    """HF_HUB_CACHE / HF_HOME as set now (huggingface_hub reads them at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith(("/", "./", "../", "~"))
        or source.count("/") > 1
        or os.sep != "/"
        and os.sep in source
    )


def resolve(source: str, what: str = "base model") -> BaseSource:
    """The local directory of `source` (a directory or a hub name), or BaseModelError."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    p = Path(source).expanduser()
    if p.exists() or _looks_like_path(source):
        if not p.is_dir():
            raise BaseModelError(f"{what} {source!r}: no such model directory (and not a hub name)")
        if not (p / "config.json").exists():
            raise BaseModelError(f"{what} {source!r} is not a transformers model directory (no config.json)")
        return BaseSource(source, p.resolve(), None)
    try:
        validate_repo_id(source)
    except HFValidationError:
        raise BaseModelError(f"{what} {source!r}: no such directory, and not a valid hub name") from None
    try:
        path = snapshot_download(
            source, cache_dir=_cache_dir(), local_files_only=offline(), allow_patterns=ALLOW_PATTERNS
        )
    except LocalEntryNotFoundError:
        if offline():
            raise BaseModelError(
                f"{what} {source!r} is not in the local Hugging Face cache and the hub is offline "
                f"(HF_HUB_OFFLINE=1): download it first (`hf download {source}`) or name a local directory"
            ) from None
        raise BaseModelError(
            f"{what} {source!r} could not be fetched from the hub and is not cached: check the network"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise BaseModelError(f"{what} {source!r} does not exist on the Hugging Face hub") from None
    except GatedRepoError:
        raise BaseModelError(
            f"{what} {source!r} is gated: accept its licence on the hub and log in (`hf auth login`)"
        ) from None
    path = Path(path)
    if not (path / "config.json").exists():
        raise BaseModelError(f"{what} {source!r} on the hub has no config.json: not a transformers model")
    return BaseSource(source, path, path.name)


def fingerprint(base: BaseSource) -> str:
    """The hub commit, or a hash of the local directory's file names, sizes and modification times."""
    if base.revision is not None:
        return base.revision
    h = hashlib.sha256()
    for f in sorted(base.path.rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(base.path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def licence(path: Path) -> str | None:
    """The base's licence: the model card's YAML `license` (`license_name` for "other"), else the config's."""
    from huggingface_hub.repocard import metadata_load

    card = Path(path) / "README.md"
    meta = {}
    if card.exists():
        try:
            meta = metadata_load(card) or {}
        except Exception:  # a card with broken YAML says nothing about the licence; the run goes on
            meta = {}
    value = meta.get("license")
    if value == "other" and meta.get("license_name"):
        value = f"other ({meta['license_name']})"
    if value is None:
        value = json.loads((Path(path) / "config.json").read_text()).get("license")
    if isinstance(value, list):
        value = ", ".join(map(str, value))
    return str(value) if value else None


def load_init(model_dir: str | Path, vocab: int, seq_len: int):
    """The checkpoint pretraining continues from, checked against the shards and the context."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rows = model.get_input_embeddings().num_embeddings
    if vocab > rows:
        raise ValueError(
            f"the shards' vocabulary ({vocab}) is larger than the embedding table of {model_dir} "
            f"({rows} rows): pack with the base model's own tokenizer"
        )
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and seq_len > max_pos:
        raise ValueError(f"pretrain.seq_len {seq_len} is over the {max_pos} positions of {model_dir}")
    return model
