"""Sections of the training steps: pretrain, finetune (with DPO for feedback), and the dashboard
they feed while they train."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmflow.config.base import (
    MAX_BATCH,
    MAX_ITEMS,
    MAX_PROCESSES,
    MAX_SECONDS,
    MAX_SEED,
    MAX_STEPS,
    MAX_TOKENS,
    Section,
)

BASE_MODEL_HELP = (
    "A local model directory or a Hugging Face hub name (offline: from the local cache); its own "
    "tokenizer and chat template are used throughout."
)


class BaseModelConfig(Section):
    """The `base_model` step: a checkpoint brought from elsewhere (see model/hub.py)."""

    source: str = Field(min_length=1, max_length=1000, description=BASE_MODEL_HELP)


class LaunchConfig(Section):
    """How a training step runs: in the task's process, or under `accelerate launch` on one or
    more machines (docs/multi-node in README.md). Per machine `num_processes` processes; the world
    is `num_processes * num_machines`."""

    num_processes: int = Field(
        default=1,
        ge=1,
        le=MAX_PROCESSES,
        description="Processes per machine; >1 (or several machines) runs `accelerate launch` as a subprocess.",
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="ddp: every process holds the whole model; fsdp: FSDP2 shards weights, gradients "
        "and optimizer state across processes (sharded checkpoints). fsdp needs 2+ processes.",
    )
    num_machines: int = Field(default=1, ge=1, le=MAX_PROCESSES)
    machine_rank: int = Field(
        default=0, ge=0, lt=MAX_PROCESSES, description="This machine's index; 0 holds the outputs."
    )
    main_process_ip: str = Field(
        default="127.0.0.1", description="Address of machine 0, reachable from every machine."
    )
    main_process_port: int | None = Field(
        default=None, ge=1, le=65_535, description="Rendezvous port on machine 0 (one machine: a free port)."
    )

    @model_validator(mode="after")
    def _launchable(self):
        world = self.num_processes * self.num_machines
        if self.strategy == "fsdp" and world < 2:
            raise ValueError(
                "strategy=fsdp shards the model across processes and needs at least 2 "
                f"(num_processes={self.num_processes}, num_machines={self.num_machines}): use ddp or more processes"
            )
        if self.machine_rank >= self.num_machines:
            raise ValueError(
                f"machine_rank={self.machine_rank} must be below num_machines={self.num_machines}"
            )
        if self.num_machines > 1 and self.main_process_ip in ("127.0.0.1", "localhost"):
            raise ValueError(
                "num_machines > 1 needs main_process_ip: the address of machine 0 that the others can reach"
            )
        if self.num_machines > 1 and self.main_process_port is None:
            raise ValueError("num_machines > 1 needs main_process_port, the same on every machine")
        return self


class PretrainConfig(LaunchConfig):
    init_from: str | None = Field(
        default=None,
        max_length=1000,
        description="Continue pretraining this checkpoint instead of a fresh `preset` model. "
        + BASE_MODEL_HELP,
    )
    preset: str = Field(default="tiny", description="Architecture preset from model/presets.py.")
    arch: Literal["qwen3", "llama"] = Field(
        default="qwen3", description="transformers family (see benchmarks/RESULTS.md for the choice)."
    )
    seq_len: int = Field(default=256, ge=8, le=32_768)
    batch_size: int = Field(
        default=16, ge=1, le=MAX_BATCH, description="Sequences per micro-batch per process."
    )
    grad_accum: int = Field(default=1, ge=1, le=MAX_BATCH)
    lr: float = Field(default=3e-3, gt=0, le=1)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=20, ge=0, le=MAX_STEPS)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = Field(
        default=0.2, gt=0, le=1, description="wsd: share of the run spent decaying."
    )
    optimizer: Literal["adamw", "muon"] = "adamw"
    weight_decay: float = Field(default=0.1, ge=0)
    grad_clip: float = Field(default=1.0, ge=0)
    max_steps: int = Field(default=200, ge=1, le=MAX_STEPS)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "auto"
    gradient_checkpointing: bool = False
    compile: bool = False
    sliding_window: int | None = Field(
        default=None, ge=8, description="Sparse (sliding-window) attention span."
    )
    tie_embeddings: bool = True
    eval_every: int = Field(default=50, ge=1, le=MAX_STEPS)
    eval_batches: int = Field(default=8, ge=1, le=MAX_ITEMS)
    checkpoint_every: int = Field(default=100, ge=1, le=MAX_STEPS)
    keep_checkpoints: int = Field(default=2, ge=1, le=1000, description="Most recent checkpoints kept.")
    resume: bool = Field(default=True, description="Resume from the step's last good checkpoint.")
    log_every: int = Field(default=10, ge=1, le=MAX_STEPS)
    seed: int = Field(default=1234, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _shardable(self):
        if self.strategy == "fsdp" and self.optimizer == "muon":
            raise ValueError(
                "optimizer=muon orthogonalises whole matrices and strategy=fsdp shards them: use adamw with fsdp"
            )
        return self


class DPOConfig(Section):
    """Preference tuning (DPO, sigmoid loss) on (prompt, chosen, rejected) triples."""

    beta: float = Field(default=0.1, gt=0, le=10, description="Strength of the KL anchor to the reference.")
    steps: int = Field(default=50, ge=1, le=MAX_STEPS)
    lr: float = Field(default=5e-4, gt=0, le=1)
    batch_size: int = Field(default=8, ge=1, le=MAX_BATCH, description="Triples per step.")
    warmup_steps: int = Field(default=5, ge=0, le=MAX_STEPS)
    seed: int = Field(default=1234, ge=0, le=MAX_SEED)


class FinetuneConfig(LaunchConfig):
    """Supervised fine-tuning of the pretrained base on the task (see model/sft.py)."""

    base: str | None = Field(
        default=None,
        max_length=1000,
        description="Fine-tune this checkpoint and skip the tokenizer and pretraining. " + BASE_MODEL_HELP,
    )
    method: Literal["lora", "prompt", "full"] = Field(
        default="lora", description="lora: low-rank adapters; prompt: prompt tuning; full: all weights."
    )
    lora_r: int = Field(default=16, ge=1, le=512)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        default=None,
        description="LoRA's layers by name; unset: every linear layer of the architecture "
        "(nn.Linear or Conv1D, all but the output head).",
    )
    num_virtual_tokens: int = Field(default=16, ge=1, le=512)
    prompt_init_text: str = "Summarize the documented Python function in one line."
    lr: float = Field(default=1e-3, gt=0, le=1)
    batch_size: int = Field(default=16, ge=1, le=MAX_BATCH)
    max_steps: int = Field(default=100, ge=1, le=MAX_STEPS)
    max_seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    max_len: int = Field(default=256, ge=16, le=32_768)
    truncation_side: Literal["left", "right"] = Field(
        default="left",
        description="A prompt too long for max_len (or, when generating, for the context) loses its "
        "start (left, as for a chat) or the end of its text (right: keeps a task prompt's opening, "
        "such as a signature). Recorded with the model, so generation cuts the same way.",
    )
    warmup_steps: int = Field(default=10, ge=0, le=MAX_STEPS)
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW decay of trainable matrices.")
    prompt_loss_weight: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Weight of the prompt tokens' next-token loss beside the response's (weight 1): "
        "0 trains on the response alone; a small weight keeps the model predicting the prompts' "
        "text too, which helps tasks with long prompts and short answers (Huerta-Enochian & Ko "
        "2024; the demo uses 0.3). The logged training loss is then the weighted mean; the "
        "validation loss stays the response's.",
    )
    neftune_alpha: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="NEFTune (Jain et al. 2023): uniform noise of scale alpha / sqrt(length x hidden) "
        "added to the input embeddings while training (transformers' own hook); 0 = off. The "
        "paper uses 5-15.",
    )
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "auto"
    checkpoint_every: int = Field(
        default=50, ge=1, le=MAX_STEPS, description="Steps between resumable checkpoints."
    )
    keep_checkpoints: int = Field(default=2, ge=1, le=1000, description="Most recent checkpoints kept.")
    resume: bool = Field(default=True, description="Resume from the step's last good checkpoint.")
    seed: int = Field(default=1234, ge=0, le=MAX_SEED)
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="Used by preference tuning (feedback).")

    @model_validator(mode="after")
    def _replicated(self):
        if self.strategy == "fsdp":
            raise ValueError(
                "finetune.strategy=fsdp is not supported: fine-tuning runs under ddp (set finetune.strategy=ddp)"
            )
        if self.num_machines > 1:
            raise ValueError(
                "fine-tuning runs on one machine: set finetune.num_machines=1 (num_processes may be >1)"
            )
        return self


class DashboardConfig(Section):
    """What the training steps show while they run (tasks/live_curves.py). A view only: no step's
    key includes it, so changing it recomputes nothing."""

    refresh_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds between updates of the live loss curve, tokens/s and time left in the "
        "Prefect UI (TensorBoard event files are written every step).",
    )
