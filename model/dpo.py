"""The preference-tuning recipe: DPO (Rafailov et al., 2023) with a LoRA adapter.

`dpo_loss` is the sigmoid loss on sequence log-probs; `dpo_train` trains a LoRA adapter on
(prompt, chosen, rejected) triples, encoded like SFT rows (model/sft_data.py). The reference is
the same weights with the adapter disabled (`PeftModel.disable_adapter()`), so no second copy of
the model is held, and its log-probs are scored once before training.

Under `accelerate launch` (DDP) each step draws `batch_size * W` triples and process `rank` trains
on every W-th of them; the logged loss is their mean. `python -m model.dpo --config job.json` is
the launched entry (see `main`).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llmflow.config import DPOConfig, FinetuneConfig
from model.adapters import base_fingerprint, load_adapter, load_base, wrap_model
from model.sft_data import IGNORE, RejectedRow, collate, encode_pair, row_text
from model.train import ProgressFn, build_optimizers, lr_factor, make_accelerator, set_lr


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
            prompt, chosen = row_text(t, "chosen", tokenizer)
            _, rejected = row_text(t, "rejected", tokenizer)
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
    world, rank = acc.num_processes, acc.process_index
    model.train()
    rng = random.Random(cfg.seed)
    t0, history = time.time(), []
    for step in range(1, cfg.steps + 1):
        set_lr([opt], cfg.lr * lr_factor(cfg, step - 1, (step - 1) / cfg.steps))
        drawn = rng.sample(range(len(pairs)), min(cfg.batch_size * world, len(pairs)))
        idx = drawn[rank::world] or drawn[:1]
        pc, pr = _pair_logps(model, [pairs[i] for i in idx], pad_id, acc.device)
        loss, cr, rr = dpo_loss(pc, pr, ref[0][idx], ref[1][idx], cfg.beta)
        acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        mean = acc.reduce(loss.detach(), reduction="mean").item() if world > 1 else loss.item()
        history.append({"step": step, "loss": mean, "accuracy": float((cr > rr).float().mean())})
        if progress is not None and step % 10 == 0 and acc.is_main_process:
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
        "num_processes": world,
    }
    model.eval()
    return model, tokenizer, stats


def main(argv: list[str] | None = None) -> None:
    """The launched entry: job JSON {"config" (FinetuneConfig), "model", "triples", "out",
    "base_name"}. The main process saves the candidate (adapters.save_finetuned, LoRA) to `out`
    and its stats to `out/launched.json`."""
    from model.adapters import save_finetuned
    from model.sft_data import read_rows

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="job JSON (see main's docstring)")
    job = json.loads(Path(parser.parse_args(argv).config).read_text())
    cfg = FinetuneConfig.model_validate(job["config"])

    def progress(done: float, total: float, message: str) -> None:
        print("@@progress " + json.dumps({"done": done, "total": total, "message": message}), flush=True)

    try:
        model, tokenizer, stats = dpo_train(
            job["model"], read_rows(job["triples"]), cfg.dpo, lora=cfg, progress=progress
        )
        from accelerate.state import PartialState

        if PartialState().is_main_process:
            out = Path(job["out"])
            save_finetuned(
                model, tokenizer, out, "lora", job["model"], stats["base_fingerprint"], job["base_name"]
            )
            (out / "launched.json").write_text(json.dumps(stats))
        PartialState().wait_for_everyone()
    except ValueError as e:
        print(f"@@error {type(e).__name__}: {e}", flush=True)
        raise SystemExit(2) from None
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
