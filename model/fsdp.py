"""FSDP2 through accelerate: the plugin, sharded checkpoints, and the gathered weights.

`strategy: fsdp` shards each decoder layer's weights, gradients and optimizer state across the
processes (`torch.distributed.fsdp.fully_shard`, accelerate's `fsdp_version=2`). Checkpoints are
SHARDED_STATE_DICT: each process writes its own shards with torch.distributed.checkpoint (DCP),
through accelerate's `save_fsdp_model` / `save_fsdp_optimizer`, the calls `Accelerator.save_state`
makes for FSDP; the RNG states and the step stay in model/checkpoint.py's own files (JSON and
`torch.load(weights_only=True)`), not accelerate's pickled `random_states_*.pkl`. (DCP can
reshard on load into another process count; only a resume with the same count is tested.)

CPU: accelerate 1.15 turns FSDP on only for accelerator devices (`AcceleratorState` keeps
`MULTI_CPU` and ignores the plugin), while torch's FSDP2 itself runs on CPU with gloo. So on CPU
`enable_on_cpu` sets the distributed type to FSDP after the Accelerator is built; the model is
then prepared, clipped, saved and loaded by the same accelerate code as on GPUs. This is what
lets the FSDP path be tested on CPU.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

MODEL_DIR = "pytorch_model_fsdp_0"  # accelerate's names for model 0 / optimizer i
OPTIMIZER_DIR = "optimizer_{i}"


def plugin():
    """FSDP2, layers wrapped by the model's `_no_split_modules`, sharded state dicts."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        state_dict_type="SHARDED_STATE_DICT",
        auto_wrap_policy="transformer_based_wrap",
        reshard_after_forward=True,
        cpu_ram_efficient_loading=False,
    )


def enable_on_cpu(acc, fsdp_plugin) -> None:
    """Make an Accelerator built with `cpu=True` under several processes use `fsdp_plugin`."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if acc.distributed_type != DistributedType.MULTI_CPU:
        return
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    acc.state.distributed_type = DistributedType.FSDP
    acc.state.fsdp_plugin = fsdp_plugin


def is_sharded(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc is not None and acc.distributed_type == DistributedType.FSDP


def save(acc, model, optimizers: list[torch.optim.Optimizer], directory: str | Path) -> None:
    """Every process writes its shards of the model and optimizer states under `directory`."""
    from accelerate.utils import save_fsdp_model, save_fsdp_optimizer

    plug = acc.state.fsdp_plugin
    save_fsdp_model(plug, acc, model, str(directory))
    for i, opt in enumerate(optimizers):
        save_fsdp_optimizer(plug, acc, opt, model, str(directory), optimizer_index=i)


def load(acc, model, optimizers: list[torch.optim.Optimizer], directory: str | Path) -> None:
    """Every process reads its shards back (DCP reshards when the process count changed)."""
    from accelerate.utils import load_fsdp_model, load_fsdp_optimizer

    directory = Path(directory)
    missing = [
        d for d in [MODEL_DIR, *(OPTIMIZER_DIR.format(i=i) for i in range(len(optimizers)))]
        if not (directory / d / ".metadata").exists()
    ]  # fmt: skip
    if missing:
        raise FileNotFoundError(f"no sharded state in {directory / missing[0]}")
    plug = acc.state.fsdp_plugin
    load_fsdp_model(plug, acc, model, str(directory))
    for i, opt in enumerate(optimizers):
        load_fsdp_optimizer(plug, acc, opt, model, str(directory), optimizer_index=i)


def full_state_dict(acc, model) -> dict[str, torch.Tensor]:
    """The whole model's weights on the main process (CPU), {} on the others. Collective.

    Tied copies (lm_head.weight under tied embeddings) are left out, as save_pretrained does.
    """
    weights = acc.get_state_dict(model)
    if getattr(model.config, "tie_word_embeddings", False):
        for key in getattr(model, "_tied_weights_keys", None) or {}:
            weights.pop(key, None)
    return weights


def shard_digest(model) -> str:
    """sha256 of this process's own shards (DTensor local parts, or whole tensors)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        local = t.to_local() if hasattr(t, "to_local") else t
        h.update(name.encode())
        h.update(local.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()
