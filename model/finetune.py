"""Supervised fine-tuning (LoRA, prompt tuning, full) and preference tuning (DPO) of a causal LM.

The contract, torchtune-recipe style: plain functions and one explicit loop.

- Data. A row is `{prompt, response}` (or chat `messages`). The model sees
  `bos + format_prompt(prompt)` and learns `format_response(response) + eos`; labels are -100 on
  the prompt, so the loss counts response tokens only. Prompt and response are tokenized
  separately, exactly as generation sees them (the prompt alone, then new tokens). A row longer
  than `max_len` loses prompt tokens from the left; a row whose response alone does not fit, or a
  malformed row, is rejected with a reason (`invalid:*`, `too_long:response`). Batches are
  length-bucketed so padding stays small, and batch `step` is a pure function of (seed, step).
- Methods (peft). `lora` wraps the attention and MLP projections; `prompt` learns
  `num_virtual_tokens` input embeddings initialised from `prompt_init_text`; `full` trains every
  weight (the baseline). One loop, built from model/train.py's pieces (accelerate and mixed
  precision, the AdamW builder, warmup + cosine schedule, step and wall-clock budgets) and
  model/checkpoint.py: every `checkpoint_every` steps it saves the trainable weights (the adapter,
  or all weights for full), optimizer, RNG states and step, and a rerun with the same checkpoint
  directory resumes exactly: the same per-step losses as a run that never stopped.
- Outputs. `save_finetuned` writes `adapter/` (peft format, plus `llmflow_base.json`, the base's
  fingerprint) and `model/`: the merged weights (`merge_and_unload`) for LoRA, all weights for
  full, and for prompt tuning (which cannot merge) a copy of the base. `load_finetuned(dir)` is
  the one way to get a model to generate with: it reads `model/llmflow_finetune.json` and returns
  the merged model, or the base with the prompt-tuning adapter attached.
- DPO. `dpo_loss` is the sigmoid loss of Rafailov et al. (2023); `dpo_train` trains a LoRA
  adapter on (prompt, chosen, rejected) triples. The reference is the same weights with the
  adapter disabled (`PeftModel.disable_adapter()`), so no second copy of the model is held.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llmflow.config import DPOConfig, FinetuneConfig
from model import checkpoint as ckpt
from model.chat import ASSISTANT, CHAT_TEMPLATE, ROLE_TOKENS, SYSTEM, USER, format_messages, format_response
from model.chat import format_prompt as _format_prompt
from model.train import build_optimizers, lr_factor, make_accelerator, run_fraction, set_lr, should_stop

log = logging.getLogger("llmflow.finetune")

IGNORE = -100
FINETUNE_META = "llmflow_finetune.json"  # in model/: how to load it (merged or base + adapter)
BASE_META = "llmflow_base.json"  # in adapter/: which base the adapter was trained on
ProgressFn = Callable[[float, float, str], None]
LogFn = Callable[[str], None]


# --------------------------------------------------------------------------- data


class RejectedRow(ValueError):
    """A row that cannot be used; `reason` is the counted category."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL or Parquet file (or a folder of them). Bad JSON lines become rejects later."""
    path = Path(path)
    files = (
        sorted(p for p in path.rglob("*") if p.suffix in {".jsonl", ".parquet"}) if path.is_dir() else [path]
    )
    if not files or not all(p.exists() for p in files):
        raise FileNotFoundError(f"no JSONL/Parquet data at {path}")
    rows: list[dict[str, Any]] = []
    for p in files:
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows.extend(pq.read_table(p).to_pylist())
            continue
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                row = {"id": f"{p.name}:{n}", "__invalid__": "invalid:json", "__detail__": e.msg}
            rows.append(
                row if isinstance(row, dict) else {"id": f"{p.name}:{n}", "__invalid__": "invalid:not_object"}
            )
    return rows


def render_prompt(prompt: str) -> str:
    """`format_prompt(prompt)`, unless the prompt is already rendered with role tokens."""
    if prompt.startswith((USER, SYSTEM)) and prompt.endswith(f"{ASSISTANT}\n"):
        return prompt
    return _format_prompt(prompt)


def row_text(row: dict[str, Any], response_key: str = "response") -> tuple[str, str]:
    """(rendered prompt, response) of a row, or RejectedRow for a malformed one."""
    if "__invalid__" in row:
        raise RejectedRow(row["__invalid__"], row.get("__detail__", ""))
    if "messages" in row and "prompt" not in row:
        try:
            prompt, response = format_messages(row["messages"])
        except (ValueError, TypeError, AttributeError) as e:
            raise RejectedRow("invalid:messages", str(e)) from None
    else:
        for key in ("prompt", response_key):
            if key not in row or row[key] is None:
                raise RejectedRow(f"invalid:missing_{key}")
            if not isinstance(row[key], str):
                raise RejectedRow(f"invalid:{key}_not_text", type(row[key]).__name__)
        prompt, response = render_prompt(row["prompt"]), row[response_key]
    if not response.strip():
        raise RejectedRow("invalid:empty_response")
    return prompt, response


def encode_pair(tokenizer, prompt: str, response: str, max_len: int) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated) for a rendered prompt and a raw response.

    input = [bos] + prompt + response + `<|end|>` + eos; labels copy the response part and are
    -100 elsewhere. Too long: drop prompt tokens from the left (bos stays); if the response alone
    leaves fewer than 4 prompt tokens, RejectedRow('too_long:response').
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(format_response(response), add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    budget = max_len - len(bos) - len(r_ids)
    if budget < min(4, len(p_ids)):
        raise RejectedRow("too_long:response", f"{len(r_ids)} response tokens, max_len {max_len}")
    truncated = len(p_ids) > budget
    if truncated:
        p_ids = p_ids[len(p_ids) - budget :]
    ids = bos + p_ids + r_ids
    return ids, [IGNORE] * (len(ids) - len(r_ids)) + r_ids, truncated


@dataclass
class SFTData:
    """Encoded examples plus the bookkeeping that makes `input = kept + rejected` checkable."""

    examples: list[dict[str, list[int]]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    truncated: int = 0

    @property
    def rejects_by_reason(self) -> dict[str, int]:
        return dict(Counter(r["reason"] for r in self.rejects))


def build_sft(rows: Iterable[dict[str, Any]], tokenizer, max_len: int) -> SFTData:
    """Encode rows for supervised training; malformed or oversize rows go to `rejects`."""
    data = SFTData()
    for i, row in enumerate(rows):
        rid = row.get("id", i) if isinstance(row, dict) else i
        try:
            prompt, response = row_text(row)
            ids, labels, cut = encode_pair(tokenizer, prompt, response, max_len)
        except RejectedRow as e:
            data.rejects.append({"id": rid, "reason": e.reason, "detail": str(e)})
            continue
        data.truncated += cut
        data.examples.append({"input_ids": ids, "labels": labels})
    return data


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: pad tokens get attention 0 and label -100."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        attn[i, :n] = 1
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch of index batches: shuffle, sort by length within windows of 32 batches, shuffle.

    Examples of similar length share a batch (little padding) while the order stays random. The
    order depends on (seed, epoch) only, and every epoch has the same number of batches.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 32
    batches = []
    for s in range(0, len(order), window):
        chunk = sorted(order[s : s + window], key=lambda i: lengths[i])
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


class BucketedBatches:
    """`batches(step)` -> the example indices of training step `step`, a pure function of
    (seed, step): a resumed run needs only its step to continue the same data order."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self._epoch, self._batches = 0, epoch_batches(lengths, batch_size, seed, 0)
        self.per_epoch = len(self._batches)

    def __call__(self, step: int) -> list[int]:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, epoch_batches(self.lengths, self.batch_size, self.seed, epoch)
        return self._batches[i]


def bucketed_batches(n_items: int, lengths: list[int], batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless index batches in training order (see `BucketedBatches`)."""
    if len(lengths) != n_items:
        raise ValueError(f"{len(lengths)} lengths for {n_items} items")
    batches = BucketedBatches(lengths, batch_size, seed)
    step = 0
    while True:
        yield batches(step)
        step += 1


# --------------------------------------------------------------------------- models


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
    split = [t for t in ROLE_TOKENS if len(tokenizer(t, add_special_tokens=False)["input_ids"]) != 1]
    if split:
        log.warning("%s: role tokens %s are not single tokens of this tokenizer", where, split)


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
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = [t for t in cfg.target_modules if t not in names]
        if missing:
            raise ValueError(f"LoRA target_modules {missing} are not modules of this model")
        pc = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules),
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


# --------------------------------------------------------------------------- SFT loop


@torch.no_grad()
def mean_loss(model, examples: list[dict[str, list[int]]], pad_id: int, batch_size: int = 16) -> float:
    """Token-weighted mean cross-entropy over the response tokens of `examples`."""
    if not examples:
        return float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for s in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[s : s + batch_size], pad_id).items()}
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        total += float(model(**batch).loss) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


@dataclass
class TrainResult:
    model: Any
    stats: dict[str, Any]
    history: list[dict[str, float]]


def train_sft(
    model,
    train: list[dict[str, list[int]]],
    validation: list[dict[str, list[int]]],
    cfg: FinetuneConfig,
    pad_id: int,
    progress: ProgressFn | None = None,
    checkpoint_dir: str | Path | None = None,
    log: LogFn = log.info,
) -> TrainResult:
    """The fine-tuning loop. `model` is already wrapped (see `wrap_model`); returns it unwrapped.

    With `checkpoint_dir`, saves a checkpoint every `cfg.checkpoint_every` steps (and at the end)
    and, when `cfg.resume`, first continues from the newest one that loads (CheckpointError when
    none does, or when they belong to another model or adapter). `progress(fraction, 1.0, msg)`
    is called after every step with msg `step N loss L`.
    """
    if not train:
        raise ValueError("no usable training examples (all rows were rejected?)")
    acc = make_accelerator(cfg.mixed_precision)
    optimizers = build_optimizers(model, cfg, fused=torch.cuda.is_available())
    model, *optimizers = acc.prepare(model, *optimizers)
    raw, raw_opts = acc.unwrap_model(model), [o.optimizer for o in optimizers]
    params = [p for p in model.parameters() if p.requires_grad]
    batches = BucketedBatches([len(e["input_ids"]) for e in train], cfg.batch_size, cfg.seed)

    torch.manual_seed(cfg.seed)  # dropout; a resume restores the generator from the checkpoint
    step, elapsed, history = 0, 0.0, []
    if checkpoint_dir is not None and cfg.resume:
        state = ckpt.latest(checkpoint_dir, raw, raw_opts)
        if state is not None:
            step, elapsed, history = state["step"], state["elapsed"], state["history"]
            log(f"resumed from {state['path']} at step {step}")

    def save_checkpoint() -> None:
        state = {"elapsed": elapsed, "history": history, "config": cfg.model_dump(mode="json")}
        ckpt.save(checkpoint_dir, step, raw, raw_opts, state, keep=cfg.keep_checkpoints)

    model.train()
    t_start = time.time() - elapsed
    while True:
        elapsed = time.time() - t_start
        done = run_fraction(step, cfg.max_steps, elapsed, cfg.max_seconds)
        if should_stop(acc, done):
            break
        lr = cfg.lr * lr_factor(cfg, step, done)
        set_lr(raw_opts, lr)
        batch = {k: v.to(acc.device) for k, v in collate([train[i] for i in batches(step)], pad_id).items()}
        loss = model(**batch).loss
        acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.time() - t_start
        history.append({"step": step, "loss": loss.item(), "lr": lr, "seconds": round(elapsed, 3)})
        if progress is not None:
            fraction = min(run_fraction(step, cfg.max_steps, elapsed, cfg.max_seconds), 1.0)
            progress(fraction, 1.0, f"step {step} loss {history[-1]['loss']:.3f}")
        if checkpoint_dir is not None and step % cfg.checkpoint_every == 0:
            save_checkpoint()
    if checkpoint_dir is not None and history and step % cfg.checkpoint_every:
        save_checkpoint()
    seconds = time.time() - t_start
    model = acc.unwrap_model(model)
    tail = [h["loss"] for h in history[-10:]]
    stats = {
        "method": cfg.method,
        "steps": step,
        "train_loss": round(sum(tail) / len(tail), 4) if tail else float("nan"),
        "first_loss": round(history[0]["loss"], 4) if history else float("nan"),
        "val_loss": round(mean_loss(model, validation, pad_id, cfg.batch_size), 4) if validation else None,
        "seconds": round(seconds, 2),
        "mixed_precision": acc.mixed_precision,
    }
    return TrainResult(model=model, stats=stats, history=history)


def finetune(
    model_dir: str | Path,
    train_rows: list[dict[str, Any]],
    validation_rows: list[dict[str, Any]],
    cfg: FinetuneConfig,
    progress: ProgressFn | None = None,
    checkpoint_dir: str | Path | None = None,
    log: LogFn = log.info,
) -> tuple[TrainResult, Any, dict[str, SFTData]]:
    """Load the base at `model_dir`, fine-tune it with `cfg.method`: (result, tokenizer, data).

    `checkpoint_dir`: where `train_sft` saves and resumes checkpoints (None: no checkpoints).
    """
    model, tokenizer = load_base(model_dir)
    fingerprint = base_fingerprint(model)
    data = {
        "train": build_sft(train_rows, tokenizer, cfg.max_len),
        "validation": build_sft(validation_rows, tokenizer, cfg.max_len),
    }
    torch.manual_seed(cfg.seed)  # the adapter's initialisation
    model = wrap_model(model, cfg, tokenizer_dir=model_dir)
    trainable, total = param_counts(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    result = train_sft(
        model, data["train"].examples, data["validation"].examples, cfg, pad_id, progress, checkpoint_dir, log
    )
    result.stats.update(
        trainable_params=trainable,
        total_params=total,
        trainable_fraction=round(trainable / total, 6),
        base_fingerprint=fingerprint,
        train_examples=len(data["train"].examples),
        validation_examples=len(data["validation"].examples),
        truncated=data["train"].truncated + data["validation"].truncated,
        rejected=len(data["train"].rejects) + len(data["validation"].rejects),
        rejects_by_reason=dict(
            Counter(data["train"].rejects_by_reason) + Counter(data["validation"].rejects_by_reason)
        ),
    )
    return result, tokenizer, data


# --------------------------------------------------------------------------- saving and loading


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
    meta: dict[str, Any] = {"method": method, "merged": method != "prompt", "base_fingerprint": fingerprint}
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
            "Generate with `model.finetune.load_finetuned(<artifact dir>)`, which attaches ../adapter.\n"
        )
    else:
        merged = model.merge_and_unload() if method == "lora" else model
        merged.save_pretrained(model_out)
    tokenizer.chat_template = CHAT_TEMPLATE
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
    """
    path = Path(path)
    model_dir = path / "model" if (path / "model" / "config.json").exists() else path
    meta_path = model_dir / FINETUNE_META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"merged": True}
    model, tokenizer = load_base(model_dir)
    if not meta.get("merged", True):
        model = load_adapter(model, (model_dir / meta["adapter"]).resolve())
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------- DPO


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO loss on sequence log-probs: (mean loss, chosen rewards, rejected rewards).

    loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))); rewards are beta * (pi - ref).
    """
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of log-probs of the label tokens of each sequence (prompt tokens excluded)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"]
    logits = logits[:, -labels.shape[1] :]  # prompt tuning prepends virtual tokens
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != IGNORE
    logp = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def build_preferences(triples: Iterable[dict[str, Any]], tokenizer, max_len: int):
    """Encode {prompt, chosen, rejected} triples into (chosen, rejected) example pairs + rejects."""
    pairs, rejects = [], []
    for i, t in enumerate(triples):
        try:
            prompt, chosen = row_text(t, "chosen")
            _, rejected = row_text(t, "rejected")
            c, cl, _ = encode_pair(tokenizer, prompt, chosen, max_len)
            r, rl, _ = encode_pair(tokenizer, prompt, rejected, max_len)
        except RejectedRow as e:
            rejects.append({"id": t.get("id", i) if isinstance(t, dict) else i, "reason": e.reason})
            continue
        pairs.append(({"input_ids": c, "labels": cl}, {"input_ids": r, "labels": rl}))
    return pairs, rejects


def _pair_logps(model, pairs, pad_id, device) -> tuple[torch.Tensor, torch.Tensor]:
    batch = {
        k: v.to(device) for k, v in collate([p[0] for p in pairs] + [p[1] for p in pairs], pad_id).items()
    }
    logps = sequence_logps(model, batch)
    return logps[: len(pairs)], logps[len(pairs) :]


@torch.no_grad()
def preference_margin(model, pairs, pad_id: int, reference: bool = False) -> float:
    """Mean (log p(chosen) - log p(rejected)) of `model`; `reference=True` disables the adapter."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    if reference:
        with model.disable_adapter():
            c, r = _pair_logps(model, pairs, pad_id, device)
    else:
        c, r = _pair_logps(model, pairs, pad_id, device)
    model.train(was)
    return float((c - r).mean())


def dpo_train(
    model_dir: str | Path,
    triples: list[dict[str, Any]],
    cfg: DPOConfig | None = None,
    *,
    adapter_dir: str | Path | None = None,
    lora: FinetuneConfig | None = None,
    progress: ProgressFn | None = None,
):
    """DPO on `triples` ({prompt, chosen, rejected}): returns (peft model, tokenizer, stats).

    `model_dir` is the reference policy: usually a fine-tuned merged `model/`, then a fresh LoRA
    adapter (settings from `lora`) is trained on top. With `adapter_dir` (a LoRA adapter of the
    base at `model_dir`) that adapter is trained further and the reference is the bare base. The
    reference log-probs come from the same weights under `disable_adapter()`.
    """
    cfg = cfg or DPOConfig()
    lora = (lora or FinetuneConfig()).model_copy(update={"method": "lora"})
    torch.manual_seed(cfg.seed)
    base, tokenizer = load_base(model_dir)
    fingerprint = base_fingerprint(base)
    model = load_adapter(base, adapter_dir, is_trainable=True) if adapter_dir else wrap_model(base, lora)
    pairs, rejects = build_preferences(triples, tokenizer, lora.max_len)
    if not pairs:
        raise ValueError(f"no usable preference triples ({len(rejects)} rejected)")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    acc = make_accelerator(lora.mixed_precision)
    model.to(acc.device)
    ref_c, ref_r = [], []  # the reference never changes: score it once
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        for s in range(0, len(pairs), cfg.batch_size):
            c, r = _pair_logps(model, pairs[s : s + cfg.batch_size], pad_id, acc.device)
            ref_c.append(c)
            ref_r.append(r)
    ref = torch.cat(ref_c), torch.cat(ref_r)
    start_margin = preference_margin(model, pairs, pad_id)
    params = [p for p in model.parameters() if p.requires_grad]
    (opt,) = build_optimizers(model, cfg, fused=torch.cuda.is_available())
    model, opt = acc.prepare(model, opt)
    model.train()
    rng = random.Random(cfg.seed)
    t0, history = time.time(), []
    for step in range(1, cfg.steps + 1):
        set_lr([opt], cfg.lr * lr_factor(cfg, step - 1, (step - 1) / cfg.steps))
        idx = rng.sample(range(len(pairs)), min(cfg.batch_size, len(pairs)))
        pc, pr = _pair_logps(model, [pairs[i] for i in idx], pad_id, acc.device)
        loss, cr, rr = dpo_loss(pc, pr, ref[0][idx], ref[1][idx], cfg.beta)
        acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.append({"step": step, "loss": loss.item(), "accuracy": float((cr > rr).float().mean())})
        if progress is not None and step % 10 == 0:
            progress(step, cfg.steps, f"dpo step {step} loss {history[-1]['loss']:.3f}")
    model = acc.unwrap_model(model)
    stats = {
        "method": "dpo",
        "pairs": len(pairs),
        "rejected": len(rejects),
        "steps": cfg.steps,
        "beta": cfg.beta,
        "loss": round(history[-1]["loss"], 4),
        "margin_before": round(start_margin, 4),
        "margin_after": round(preference_margin(model, pairs, pad_id), 4),
        "reference_margin": round(float((ref[0] - ref[1]).mean()), 4),
        "seconds": round(time.time() - t0, 2),
        "base_fingerprint": fingerprint,
    }
    model.eval()
    return model, tokenizer, stats


# --------------------------------------------------------------------------- benchmark helper


def rouge_l_vs_base(
    base_dir: str | Path,
    finetuned: str | Path,
    rows: list[dict[str, Any]],
    *,
    limit: int = 200,
    max_new_tokens: int = 32,
    batch_size: int = 16,
) -> dict[str, Any]:
    """ROUGE-L F1 of the base model and of the fine-tuned one on the same task rows (greedy).

    Both see the same rendered prompt; the fine-tuned model is loaded with `load_finetuned`.
    """
    from rouge_score import rouge_scorer

    from model.generate import generate

    usable = []
    for r in rows:
        try:
            usable.append(row_text(r))
        except RejectedRow:
            continue
    usable = usable[:limit]
    if not usable:
        raise ValueError("no usable rows to score")
    prompts, refs = [p for p, _ in usable], [r for _, r in usable]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    out: dict[str, Any] = {"n": len(usable)}
    for name, loader in (
        ("base", lambda: load_base(base_dir)),
        ("finetuned", lambda: load_finetuned(finetuned)),
    ):
        model, tokenizer = loader()
        model.eval()
        t0 = time.time()
        preds = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        scores = [scorer.score(ref, pred)["rougeL"].fmeasure for ref, pred in zip(refs, preds, strict=True)]
        out[name] = round(sum(scores) / len(scores), 4)
        out[f"{name}_seconds"] = round(time.time() - t0, 2)
        out[f"{name}_samples"] = [
            {"reference": r, "prediction": p} for r, p in list(zip(refs, preds, strict=True))[:5]
        ]
        del model
    out["gain"] = round(out["finetuned"] - out["base"], 4)
    return out


__all__ = [
    "build_sft",
    "collate",
    "dpo_loss",
    "dpo_train",
    "encode_pair",
    "finetune",
    "load_adapter",
    "load_finetuned",
    "rouge_l_vs_base",
    "save_finetuned",
]
