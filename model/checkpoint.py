"""Training checkpoints: everything needed to continue a run as if it had never stopped.

A checkpoint is a directory `step-NNNNNNNN/` holding

    model/            save_pretrained of the trained weights, loadable on its own: the whole
                      model (config.json + model.safetensors) for pretraining and full
                      fine-tuning; for a peft model only the adapter (adapter_config.json +
                      adapter_model.safetensors: LoRA matrices or prompt-tuning embeddings)
    optimizer.pt      optimizer state_dicts (a list: AdamW, plus Muon when used)
    rng-<rank>.pt     torch CPU (and CUDA) generator states of each process
    state.json        step, elapsed seconds (with the step, all the lr schedule depends on), the
                      base architecture, what the loop adds (tokens, loss history, config);
                      written LAST

An FSDP run (`sharded`: model/fsdp.py) writes instead of model weights and optimizer.pt its
shards, one file per process: `model/config.json`, `model/pytorch_model_fsdp_0/` and
`model/optimizer_0/` (torch.distributed.checkpoint), next to the same rng and state files.

Both training loops (model/train.py, model/sft.py) save and resume through this module; each
draws its batches as a pure function of (seed, step), so the step is the data position. Neither
draws from the process-wide `random` or `numpy.random` generators, so their states are not saved:
other threads of the process (Prefect's client backs off with `random.uniform`) move them at
times that depend on the machine's load, and saving them made two identical runs' checkpoints
differ. Checkpoints written before that still load; their saved states are ignored.

It is written to a temporary directory and renamed, and `state.json` is its completion mark, so a
process killed mid-save leaves no directory that looks complete. Loading never unpickles code:
tensors through safetensors and `torch.load(weights_only=True)`, the rest as JSON.

`latest()` walks checkpoints newest first and returns the first that loads; corrupt or partial
ones are skipped with a warning. When none loads, the run stops (`NoUsableCheckpoint`) and says
to re-run with `--force`, which removes them and starts from step 0. A checkpoint of another
architecture is an error, not a fallback: resuming it would silently train something else.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from llmflow.config import InputError
from model import fsdp
from model.presets import arch_signature

log = logging.getLogger("llmflow.model")
STATE = "state.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FIELDS = ("peft_type", "r", "lora_alpha", "target_modules", "num_virtual_tokens")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed (corrupt, partial, or of another architecture)."""


class NoUsableCheckpoint(CheckpointError, InputError):
    """Checkpoints exist and none loads. Starting over would discard them unasked and a retry
    fails the same way, so the run stops; the message says how to start from step 0."""


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def save(
    root: str | Path,
    step: int,
    model,
    optimizers: list[torch.optim.Optimizer],
    state: dict[str, Any],
    *,
    is_main: bool = True,
    rank: int = 0,
    keep: int = 2,
    barrier=None,
    sharded=None,
) -> Path:
    """Write checkpoint `step` under `root`; keep the `keep` newest. Every process must call it.

    The main process writes model, optimizer and state; each process writes its own torch RNG
    state. `barrier` (e.g. accelerator.wait_for_everyone) orders the two. With `sharded` (the
    Accelerator of an FSDP run) every process writes its shards of model and optimizer with DCP
    (model/fsdp.py) and the main process only the model's config.json next to them.
    """
    root = Path(root)
    final = step_dir(root, step)
    tmp = root / f".tmp-step-{step:08d}"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if barrier:
        barrier()
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, tmp / f"rng-{rank}.pt")
    if sharded is not None:
        fsdp.save(sharded, model, optimizers, tmp / "model")
        if is_main:
            model.config.save_pretrained(tmp / "model")
    elif is_main:
        model.save_pretrained(tmp / "model", safe_serialization=True)
        torch.save([o.state_dict() for o in optimizers], tmp / "optimizer.pt")
    if barrier:
        barrier()
    if is_main:
        full = {**state, "step": step, "arch": arch_signature(model.config)}
        with open(tmp / STATE, "w") as f:
            json.dump(full, f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(root.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    if barrier:
        barrier()
    return final


def candidates(root: str | Path) -> list[Path]:
    """Checkpoint directories, newest first (complete or not)."""
    root = Path(root)
    return sorted(root.glob("step-*"), reverse=True) if root.exists() else []


def _is_adapter(ckpt: Path) -> bool:
    return (ckpt / "model" / ADAPTER_CONFIG).exists()


def check_arch(ckpt: Path, config, state: dict[str, Any] | None = None) -> None:
    """Raise CheckpointError if the checkpoint's model is not shaped like `config`.

    The shape comes from `model/config.json`, or for adapter checkpoints from state.json's `arch`.
    """
    try:
        if (ckpt / "model" / "config.json").exists() or not (state and "arch" in state):
            theirs = arch_signature(json.loads((ckpt / "model" / "config.json").read_text()))
        else:
            theirs = state["arch"]
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{ckpt}: unreadable model config ({e})") from e
    ours = arch_signature(config)
    diff = {k: (theirs[k], ours[k]) for k in ours if theirs.get(k) != ours[k]}
    if diff:
        what = ", ".join(f"{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"checkpoint {ckpt} is of another architecture ({what}); "
            f"use a fresh checkpoint directory or the matching preset"
        )


def check_adapter(ckpt: Path, model) -> None:
    """Raise CheckpointError unless the checkpoint's adapter is configured like `model`'s."""
    if not hasattr(model, "peft_config"):
        raise CheckpointError(f"checkpoint {ckpt} is of another architecture (an adapter; this run has none)")
    try:
        theirs = json.loads((ckpt / "model" / ADAPTER_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{ckpt}: unreadable adapter config ({e})") from e
    ours = model.peft_config["default"].to_dict()

    def norm(v):
        return sorted(v) if isinstance(v, list | set | tuple) else v

    diff = {
        k: (theirs.get(k), ours.get(k)) for k in ADAPTER_FIELDS if norm(theirs.get(k)) != norm(ours.get(k))
    }
    if diff:
        what = ", ".join(f"{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"checkpoint {ckpt} is of another architecture (adapter {what})")


def _load_adapter_weights(ckpt: Path, model, weights: dict[str, torch.Tensor]) -> None:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    want = set(get_peft_model_state_dict(model))
    if set(weights) != want:
        raise CheckpointError(
            f"{ckpt}: adapter weights do not match the model "
            f"(missing {sorted(want - set(weights))[:3]}, unexpected {sorted(set(weights) - want)[:3]})"
        )
    try:
        set_peft_model_state_dict(model, weights)
    except RuntimeError as e:  # shape mismatch
        raise CheckpointError(f"{ckpt}: adapter weights do not fit the model ({e})") from e


def load(
    ckpt: str | Path, model, optimizers: list[torch.optim.Optimizer], rank: int = 0, sharded=None
) -> dict[str, Any]:
    """Restore model (or adapter), optimizers and RNG states from one checkpoint; returns state.json.

    `sharded`: the Accelerator of an FSDP run; its shards are read back with DCP (model/fsdp.py).
    """
    ckpt = Path(ckpt)
    state_path = ckpt / STATE
    if not state_path.exists():
        raise CheckpointError(f"{ckpt} is partial: no {STATE}")
    try:
        state = json.loads(state_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{ckpt}: corrupt {STATE} ({e})") from e
    adapter = _is_adapter(ckpt)
    check_arch(ckpt, model.config, state)
    if sharded is not None:
        return _load_sharded(ckpt, model, optimizers, rank, sharded, state)
    if adapter:
        check_adapter(ckpt, model)
    elif hasattr(model, "peft_config"):
        raise CheckpointError(
            f"checkpoint {ckpt} is of another architecture (whole model; this run has an adapter)"
        )
    try:
        weights = load_file(
            ckpt / "model" / ("adapter_model.safetensors" if adapter else "model.safetensors")
        )
        opt_states = torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu")
        rng_file = ckpt / f"rng-{rank}.pt"
        rng = torch.load(rng_file if rng_file.exists() else ckpt / "rng-0.pt", weights_only=True)
    except Exception as e:  # safetensors/pickle raise many types on truncated files
        first = (str(e).strip().splitlines() or [""])[0]  # torch's unpickling errors run to pages
        raise CheckpointError(f"{ckpt}: corrupt checkpoint files ({type(e).__name__}: {first})") from e
    if len(opt_states) != len(optimizers):
        raise CheckpointError(
            f"{ckpt} holds {len(opt_states)} optimizer states, this run has {len(optimizers)} "
            f"(optimizer changed?)"
        )
    if adapter:
        _load_adapter_weights(ckpt, model, weights)
    else:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        tied = set(getattr(model, "_tied_weights_keys", None) or {})
        missing = [
            k
            for k in missing
            if k not in tied and not (model.config.tie_word_embeddings and k == "lm_head.weight")
        ]
        if missing or unexpected:
            raise CheckpointError(
                f"{ckpt}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
    try:
        for opt, s in zip(optimizers, opt_states, strict=True):
            opt.load_state_dict(s)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt}: optimizer state does not fit this run ({e})") from e
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state


def _load_sharded(ckpt: Path, model, optimizers, rank: int, acc, state: dict[str, Any]) -> dict[str, Any]:
    try:
        fsdp.load(acc, model, optimizers, ckpt / "model")
        rng = torch.load(ckpt / f"rng-{rank}.pt", weights_only=True)
    except Exception as e:  # DCP raises many types (and wraps them per rank) on missing/broken shards
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{ckpt}: unusable sharded checkpoint ({type(e).__name__}: {first})") from e
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state


def latest(
    root: str | Path, model, optimizers: list[torch.optim.Optimizer], rank: int = 0, sharded=None
) -> dict[str, Any] | None:
    """Load the newest checkpoint that loads; None when there is none at all.

    Corrupt or partial checkpoints are skipped (logged); an architecture mismatch raises; if
    checkpoints exist but none loads, raises NoUsableCheckpoint rather than restarting silently.
    """
    found = candidates(root)
    errors = []
    for ckpt in found:
        try:
            state = load(ckpt, model, optimizers, rank, sharded)
        except CheckpointError as e:
            if "another architecture" in str(e):
                raise
            log.warning("skipping checkpoint: %s", e)
            errors.append(str(e))
            continue
        state["path"] = str(ckpt)
        return state
    if found:
        raise NoUsableCheckpoint(
            f"no checkpoint under {root} could be loaded ({len(found)} tried): re-run with --force to "
            f"start from step 0 (it removes them); {'; '.join(errors)}"
        )
    return None
