"""Fine-tuning: loss masking, data rejects, LoRA / prompt tuning / full, adapters, DPO, the step."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from benchmarks.finetune import rouge_l_vs_base
from llmflow.config import DPOConfig, FinetuneConfig
from llmflow.step import run_step
from llmflow.store import ArtifactStore
from model import adapters, dpo, sft, sft_data
from model.chat import CHAT_TEMPLATE, fit_prompt, format_prompt
from tests.helpers import task_rows, tiny_model_dir, tiny_tokenizer_dir, write_jsonl


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    tok = tiny_tokenizer_dir(root / "tok")
    return {"root": root, "tok": tok, "base": tiny_model_dir(root / "base", tok)}


@pytest.fixture(scope="module")
def tokenizer(dirs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(dirs["base"])


def cfg(**kw) -> FinetuneConfig:
    base = dict(max_steps=30, batch_size=8, lr=1e-2, warmup_steps=2, max_len=64, lora_r=4, lora_alpha=8)
    return FinetuneConfig(**{**base, **kw})


def logits(model, tokenizer, text="def sum(x): return the sum"):
    ids = tokenizer(format_prompt(text), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits


# --------------------------------------------------------------------------- data


def test_loss_masking_on_hand_built_example(tokenizer):
    prompt = format_prompt("def sum(x): return the sum")
    ids, labels, cut = sft_data.encode_pair(tokenizer, prompt, "return sum.", max_len=64)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    n_prompt = 1 + len(p_ids)  # bos + prompt
    assert not cut
    assert ids[0] == tokenizer.bos_token_id and ids[1:n_prompt] == p_ids
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(labels[n_prompt:]) == tokenizer.decode(ids[n_prompt:])
    assert "<|end|>" in tokenizer.decode(labels[n_prompt:]) and "<|user|>" not in tokenizer.decode(
        labels[n_prompt:]
    )

    short = sft_data.encode_pair(tokenizer, format_prompt("x"), "sum.", max_len=64)
    batch = sft_data.collate(
        [{"input_ids": ids, "labels": labels}, {"input_ids": short[0], "labels": short[1]}],
        tokenizer.pad_token_id,
    )
    n = len(short[0])
    assert batch["input_ids"].shape == (2, len(ids))
    assert (batch["labels"][1, n:] == -100).all() and (batch["attention_mask"][1, n:] == 0).all()
    assert (batch["input_ids"][1, n:] == tokenizer.pad_token_id).all()
    # the model's loss is the mean over response tokens only: recompute it by hand
    logits_ = torch.randn(2, len(ids), len(tokenizer))
    mask = batch["labels"][:, 1:] != -100
    manual = torch.nn.functional.cross_entropy(logits_[:, :-1][mask], batch["labels"][:, 1:][mask])
    from transformers.loss.loss_utils import ForCausalLMLoss

    assert torch.allclose(ForCausalLMLoss(logits_, batch["labels"], len(tokenizer)), manual, atol=1e-5)


@pytest.mark.parametrize("method", ["full", "prompt"])
def test_prompt_loss_weight_weighs_the_prompt_tokens(dirs, tokenizer, method):
    """finetune.prompt_loss_weight: 0 is the model's own response-only loss; w > 0 is the weighted
    mean over every real token (prompt w, response 1), computed here from the logits by hand; 1 is
    the plain language-model loss; padding and bos are never targets, and prompt tuning's
    virtual tokens are not either."""
    model, _ = adapters.load_base(dirs["base"])
    model = adapters.wrap_model(model, cfg(method=method, num_virtual_tokens=4), tokenizer_dir=dirs["base"])
    pairs = [
        sft_data.encode_pair(tokenizer, format_prompt(p), r, max_len=64)
        for p, r in (("def sum(x): add the items of x", "Return the sum."), ("x", "No."))
    ]
    batch = sft_data.collate([{"input_ids": i, "labels": la} for i, la, _ in pairs], tokenizer.pad_token_id)
    ids, attn, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=attn).logits[:, -ids.shape[1] :]
        ce = torch.nn.functional.cross_entropy(out[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        response = labels[:, 1:] != -100
        real = attn[:, 1:].bool()
        assert real.sum() > response.sum() > 0

        def by_hand(w: float) -> torch.Tensor:
            weight = torch.where(response, 1.0, w) * real
            return (ce * weight).sum() / weight.sum()

        assert torch.allclose(sft.sft_loss(model, batch, 0.0), ce[response].mean(), atol=1e-5)
        assert torch.allclose(sft.sft_loss(model, batch, 0.0), model(**batch).loss, atol=1e-5)
        assert torch.allclose(sft.sft_loss(model, batch, 0.1), by_hand(0.1), atol=1e-5)
        assert torch.allclose(sft.sft_loss(model, batch, 1.0), ce[real].mean(), atol=1e-5)
        lm_labels = ids.masked_fill(attn == 0, -100)  # the language-model loss, as transformers computes it
        lm_labels[:, 0] = -100  # bos: a target only after prompt tuning's virtual tokens
        assert torch.allclose(
            sft.sft_loss(model, batch, 1.0),
            model(input_ids=ids, attention_mask=attn, labels=lm_labels).loss,
            atol=1e-5,
        )
    with pytest.raises(ValueError, match="prompt_loss_weight"):
        cfg(prompt_loss_weight=1.5)
    with pytest.raises(ValueError, match="prompt_loss_weight"):
        cfg(prompt_loss_weight=-0.1)


def test_truncation_and_rejected_rows_are_counted(tokenizer, tmp_path):
    long_prompt = "def f(x): " + "return the sum of x " * 40
    ids, labels, cut = sft_data.encode_pair(tokenizer, format_prompt(long_prompt), "return sum.", max_len=48)
    assert cut and len(ids) == 48 and ids[0] == tokenizer.bos_token_id
    resp = [t for t in labels if t != -100]
    assert tokenizer.decode(resp).startswith("return sum")  # the whole response is kept

    path = tmp_path / "rows.jsonl"
    path.write_text(
        json.dumps({"id": "ok", "prompt": "def f(x): sum", "response": "sum."})
        + "\n"
        + json.dumps({"id": "noresp", "prompt": "p"})
        + "\n"
        + json.dumps({"id": "empty", "prompt": "p", "response": "  "})
        + "\n"
        + json.dumps({"id": "huge", "prompt": "p", "response": "sum of x " * 100})
        + "\n"
        + json.dumps({"id": "num", "prompt": 3, "response": "x"})
        + "\n{not json\n"
        + json.dumps(
            {
                "id": "chat",
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "sum."}],
            }
        )
        + "\n"
    )
    rows = sft_data.read_rows(path)
    data = sft_data.build_sft(rows, tokenizer, max_len=48)
    assert len(data.examples) + len(data.rejects) == len(rows) == 7
    assert data.rejects_by_reason == {
        "invalid:missing_response": 1,
        "invalid:empty_response": 1,
        "too_long:response": 1,
        "invalid:prompt_not_text": 1,
        "invalid:json": 1,
    }
    assert {r["id"] for r in data.rejects} >= {"noresp", "empty", "huge", "num"}
    assert len(data.examples) == 2  # "ok" and the chat-messages row


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_long_prompt_loses_its_start_or_its_end_but_keeps_the_answer_cue(tokenizer, side):
    tokenizer.truncation_side = side
    try:
        long_prompt = "def opening_name(x): " + "return the sum of x " * 40 + "closing words"
        ids, labels, cut = sft_data.encode_pair(tokenizer, format_prompt(long_prompt), "sum.", max_len=48)
        assert cut and len(ids) == 48 and ids[0] == tokenizer.bos_token_id
        prompt_text = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab == -100][1:])
        assert prompt_text.rstrip().endswith("<|assistant|>")  # the model is still asked to answer
        if side == "right":
            assert "opening_name" in prompt_text and "closing" not in prompt_text
        else:
            assert "closing words" in prompt_text and "opening_name" not in prompt_text
        # generation cuts a prompt too long for the context the same way (model.chat.fit_prompt)
        fitted, was_cut = fit_prompt(tokenizer, format_prompt(long_prompt), 40)
        assert was_cut and len(fitted) == 40
        assert ("opening_name" in tokenizer.decode(fitted)) is (side == "right")
    finally:
        tokenizer.truncation_side = "left"


def test_length_bucketing_groups_similar_lengths():
    lengths = [i % 50 for i in range(400)]
    gen = sft_data.bucketed_batches(400, lengths, 8, seed=0)
    batches = [next(gen) for _ in range(50)]
    assert sorted(i for b in batches for i in b) == list(range(400))  # one epoch covers every item once
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 5  # random batches would spread ~40


# --------------------------------------------------------------------------- methods


def test_lora_trains_only_adapter_and_merges(dirs, tokenizer, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = task_rows(48)
    result, tok, _ = sft.finetune(dirs["base"], rows, task_rows(8, "v"), cfg())
    model, stats = result.model, result.stats
    assert stats["method"] == "lora" and stats["steps"] == 30
    assert 0 < stats["trainable_fraction"] < 0.5
    assert stats["train_loss"] < stats["first_loss"]
    assert stats["val_loss"] is not None

    fresh = AutoModelForCausalLM.from_pretrained(dirs["base"]).state_dict()
    changed_lora = 0
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad
            changed_lora += bool(name.endswith("lora_B.default.weight") and p.abs().sum() > 0)
        else:
            assert not p.requires_grad, name
    assert changed_lora > 0  # lora_B starts at zero; training moved it
    for name, p in model.get_base_model().state_dict().items():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(p, fresh[key]), f"base weight {key} changed"

    model.eval()
    before = logits(model, tok)
    adapters.save_finetuned(model, tok, tmp_path, "lora", dirs["base"], stats["base_fingerprint"])
    assert (tmp_path / "adapter" / "adapter_config.json").exists()

    base = AutoModelForCausalLM.from_pretrained(dirs["base"])
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    assert torch.allclose(logits(reloaded, tok), before, atol=1e-6)  # adapter save -> load

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    assert torch.allclose(logits(merged, tok), before, atol=1e-4)  # merged matches adapter model
    assert AutoTokenizer.from_pretrained(tmp_path / "model").chat_template == CHAT_TEMPLATE
    m2, _ = adapters.load_finetuned(tmp_path)
    assert torch.allclose(logits(m2, tok), before, atol=1e-4)


def test_prompt_tuning_trains_and_generates(dirs, tmp_path):
    from peft import PeftModel

    from model.generate import generate

    c = cfg(method="prompt", num_virtual_tokens=8, lr=3e-2, max_steps=20)
    result, tok, _ = sft.finetune(dirs["base"], task_rows(48), [], c)
    stats = result.stats
    assert stats["train_loss"] < stats["first_loss"] - 0.5
    assert stats["trainable_params"] == 8 * 32 and stats["val_loss"] is None
    result.model.eval()
    before = logits(result.model, tok)

    adapters.save_finetuned(result.model, tok, tmp_path, "prompt", dirs["base"], stats["base_fingerprint"])
    assert (tmp_path / "model" / "PROMPT_TUNING.md").exists()
    model, tokenizer = adapters.load_finetuned(tmp_path)
    assert isinstance(model, PeftModel)
    assert torch.allclose(logits(model, tokenizer), before, atol=1e-6)
    out = generate(model, tokenizer, [format_prompt("def sum(x): return the sum")], max_new_tokens=5)
    assert len(out) == 1 and isinstance(out[0], str)


def test_full_finetune_trains_every_weight(dirs, tmp_path):
    result, tok, _ = sft.finetune(
        dirs["base"], task_rows(32), task_rows(4, "v"), cfg(method="full", lr=3e-3, max_steps=15)
    )
    assert result.stats["trainable_fraction"] == 1.0
    assert result.stats["train_loss"] < result.stats["first_loss"]
    adapters.save_finetuned(
        result.model, tok, tmp_path, "full", dirs["base"], result.stats["base_fingerprint"]
    )
    assert not (tmp_path / "adapter").exists()
    model, loaded_tok = adapters.load_finetuned(tmp_path / "model")
    assert torch.allclose(logits(model, tok), logits(result.model.eval(), tok), atol=1e-5)
    assert loaded_tok.truncation_side == "left"  # the default, recorded with the model


def test_a_prompt_loss_weight_trains_the_prompt_tokens_too(dirs):
    """The same full fine-tune with and without prompt_loss_weight: with it, the model also learns
    to predict the prompts (their loss falls further), and the reported validation loss is still
    the response's alone (as mean_loss computes it)."""
    rows = task_rows(32)
    runs = {
        w: sft.finetune(
            dirs["base"],
            rows,
            task_rows(4, "v"),
            cfg(method="full", lr=3e-3, max_steps=15, prompt_loss_weight=w),
        )
        for w in (0.0, 0.5)
    }
    prompt_loss = {}
    for w, (result, tok, data) in runs.items():
        batch = sft_data.collate(data["train"].examples, tok.pad_token_id)
        result.model.eval()
        with torch.no_grad():
            everything = sft.sft_loss(result.model, batch, 1.0)
            response = sft.sft_loss(result.model, batch, 0.0)
        n_resp = int((batch["labels"][:, 1:] != -100).sum())
        n_all = int(batch["attention_mask"][:, 1:].sum())
        prompt_loss[w] = (everything * n_all - response * n_resp) / (n_all - n_resp)
        assert result.stats["val_loss"] == round(
            sft.mean_loss(result.model, data["validation"].examples, tok.pad_token_id, 8), 4
        )
    assert prompt_loss[0.5] < prompt_loss[0.0] - 0.3


def test_neftune_noise_is_on_while_training_and_gone_after(dirs):
    """neftune_alpha > 0: the same seed's run trains on other losses (the embeddings are noisy),
    and the hook is removed, so the returned model's outputs are deterministic."""
    runs = {
        a: sft.finetune(dirs["base"], task_rows(16), [], cfg(method="full", max_steps=3, neftune_alpha=a))
        for a in (0.0, 5.0)
    }
    assert runs[5.0][0].stats["first_loss"] != runs[0.0][0].stats["first_loss"]
    model, tok = runs[5.0][0].model, runs[5.0][1]
    assert not model.get_input_embeddings()._forward_hooks
    model.train()  # the hook would act in training mode only
    assert torch.equal(logits(model, tok), logits(model, tok))


def test_the_truncation_side_is_trained_and_loaded_with_the_model(dirs, tmp_path):
    result, tok, _ = sft.finetune(
        dirs["base"], task_rows(8), [], cfg(method="full", max_steps=1, truncation_side="right")
    )
    adapters.save_finetuned(
        result.model, tok, tmp_path, "full", dirs["base"], result.stats["base_fingerprint"]
    )
    _, loaded = adapters.load_finetuned(tmp_path)
    assert loaded.truncation_side == "right"


def test_max_seconds_stops_training_early(dirs):
    result, _, _ = sft.finetune(dirs["base"], task_rows(16), [], cfg(max_steps=10_000, max_seconds=1.0))
    assert 1 <= result.stats["steps"] < 10_000 and result.stats["seconds"] >= 1.0


# --------------------------------------------------------------------------- checkpoints, resume


class Killed(Exception):
    pass


def kill_at(step: int):
    def bomb(done, total, msg):
        if msg.startswith(f"step {step} "):
            raise Killed

    return bomb


def test_batch_order_is_a_function_of_seed_and_step():
    lengths = [i % 7 for i in range(20)]
    gen = sft_data.bucketed_batches(20, lengths, 4, seed=3)
    first = [next(gen) for _ in range(12)]  # 5 batches per epoch: crosses two epoch boundaries
    fresh = sft_data.BucketedBatches(lengths, 4, seed=3)
    assert [fresh(s) for s in (11, 3, 7)] == [first[11], first[3], first[7]]  # any order, same answer
    assert first[:5] != first[5:10]  # each epoch is reshuffled
    assert sorted(i for b in first[5:10] for i in b) == list(range(20))


@pytest.mark.parametrize("method", ["lora", "prompt", "full"])
def test_stopped_and_resumed_run_gives_the_same_losses(dirs, tmp_path, method):
    # lora_dropout > 0: the resumed run must also restore the dropout RNG
    c = cfg(method=method, max_steps=8, checkpoint_every=3, lora_dropout=0.1, warmup_steps=2)
    c = c.model_copy(update={"lr": 3e-3}) if method == "full" else c
    c = c.model_copy(update={"num_virtual_tokens": 4}) if method == "prompt" else c
    rows = task_rows(40)
    straight, _, _ = sft.finetune(dirs["base"], rows, [], c, checkpoint_dir=tmp_path / "a")
    losses = [h["loss"] for h in straight.history]
    assert len(losses) == 8

    with pytest.raises(Killed):
        sft.finetune(dirs["base"], rows, [], c, progress=kill_at(5), checkpoint_dir=tmp_path / "b")
    from model import checkpoint as ckpt

    [saved] = ckpt.candidates(tmp_path / "b")
    assert saved.name == "step-00000003"
    weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    assert (saved / "model" / weights).exists() and (saved / "optimizer.pt").exists()
    if method != "full":  # only the trainable weights: the adapter, not the base
        from safetensors.torch import load_file

        keys = list(load_file(saved / "model" / weights))
        assert keys and all("lora_" in k or k == "prompt_embeddings" for k in keys), keys

    logs: list[str] = []
    resumed, _, _ = sft.finetune(dirs["base"], rows, [], c, checkpoint_dir=tmp_path / "b", log=logs.append)
    assert any("resumed from" in m and "step 3" in m for m in logs)
    assert [h["step"] for h in resumed.history] == list(range(1, 9))
    assert max(abs(a - b["loss"]) for a, b in zip(losses, resumed.history, strict=True)) < 1e-5
    a = dict(straight.model.named_parameters())
    for name, p in resumed.model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p, a[name], atol=1e-5), name


def test_corrupt_or_foreign_checkpoints_fall_back_or_fail_clearly(dirs, tmp_path):
    from model import checkpoint as ckpt

    c = cfg(max_steps=6, checkpoint_every=2, keep_checkpoints=3)
    rows = task_rows(24)
    root = tmp_path / "ck"
    with pytest.raises(Killed):
        sft.finetune(dirs["base"], rows, [], c, progress=kill_at(5), checkpoint_dir=root)
    assert [p.name for p in ckpt.candidates(root)] == ["step-00000004", "step-00000002"]
    spare = tmp_path / "spare"
    shutil.copytree(root, spare)

    # an adapter of another shape (rank 8 vs 4) is refused, never silently trained over
    with pytest.raises(ckpt.CheckpointError, match="another architecture.*r: checkpoint 4 vs run 8"):
        sft.finetune(dirs["base"], rows, [], cfg(max_steps=6, lora_r=8), checkpoint_dir=root)
    with pytest.raises(ckpt.CheckpointError, match="another architecture"):
        sft.finetune(dirs["base"], rows, [], cfg(method="full", max_steps=6), checkpoint_dir=root)

    # a truncated newest adapter: resume falls back to step 2 and still finishes the run
    weights = root / "step-00000004" / "model" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    logs: list[str] = []
    result, _, _ = sft.finetune(dirs["base"], rows, [], c, checkpoint_dir=root, log=logs.append)
    assert any("resumed from" in m and "step-00000002" in m for m in logs)
    assert result.stats["steps"] == 6 and [h["step"] for h in result.history] == list(range(1, 7))

    # every checkpoint unusable (corrupt weights, a partial one without state.json): a clear error
    (spare / "step-00000004" / "optimizer.pt").write_bytes(b"not a pickle")
    (spare / "step-00000002" / "state.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match="could be loaded.*corrupt checkpoint files.*partial"):
        sft.finetune(dirs["base"], rows, [], c, checkpoint_dir=spare)
    # resume=False ignores them and starts afresh
    fresh, _, _ = sft.finetune(
        dirs["base"], rows, [], c.model_copy(update={"resume": False}), checkpoint_dir=spare
    )
    assert fresh.history[0]["step"] == 1


# --------------------------------------------------------------------------- bad input


def test_mismatched_tokenizer_and_foreign_adapter_are_clear_errors(dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    small = tiny_model_dir(tmp_path / "small", dirs["tok"], vocab_size=100)  # tokenizer has 324 tokens
    with pytest.raises(ValueError, match="does not belong"):
        adapters.load_base(small)

    result, tok, _ = sft.finetune(dirs["base"], task_rows(16), [], cfg(max_steps=2))
    adapters.save_finetuned(
        result.model, tok, tmp_path / "ft", "lora", dirs["base"], result.stats["base_fingerprint"]
    )
    other = AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp_path / "other", dirs["tok"], seed=7))
    with pytest.raises(ValueError, match="another base"):
        adapters.load_adapter(other, tmp_path / "ft" / "adapter")
    # without our fingerprint file, a shape mismatch is still a clear error
    (tmp_path / "ft" / "adapter" / adapters.BASE_META).unlink()
    wide = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir(tmp_path / "wide", dirs["tok"], hidden_size=48, intermediate_size=96)
    )
    with pytest.raises(ValueError, match="does not fit this base"):
        adapters.load_adapter(wide, tmp_path / "ft" / "adapter")
    with pytest.raises(ValueError, match="are not modules of this llama model"):
        sft.finetune(dirs["base"], task_rows(4), [], cfg(target_modules=["query_key_value"]))
    with pytest.raises(ValueError, match="no usable training examples"):
        sft.finetune(dirs["base"], [{"id": 1, "prompt": "p", "response": ""}], [], cfg())


# --------------------------------------------------------------------------- DPO


def test_dpo_loss_matches_formula():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-2.5, -1.5])
    loss, cr, rj = dpo.dpo_loss(pc, pr, rc, rr, beta=0.5)
    logits_ = 0.5 * ((pc - rc) - (pr - rr))
    assert torch.allclose(loss, torch.log1p(torch.exp(-logits_)).mean())
    assert torch.allclose(cr, 0.5 * (pc - rc)) and torch.allclose(rj, 0.5 * (pr - rr))
    zero, _, _ = dpo.dpo_loss(pc, pr, pc, pr, beta=0.1)  # policy == reference: log 2
    assert abs(float(zero) - 0.693147) < 1e-5


def test_dpo_raises_chosen_over_rejected_margin(dirs, tmp_path):
    words = ["sum", "list", "file", "string", "value", "line"]
    triples = [
        {
            "id": i,
            "prompt": f"def {w}(x): return the {w}",
            "chosen": f"return {w}.",
            "rejected": "raise error.",
        }
        for i, w in enumerate(words)
    ] + [{"id": "bad", "prompt": "p", "chosen": "x"}]
    model, tok, stats = dpo.dpo_train(
        dirs["base"], triples, DPOConfig(steps=20, lr=1e-2, batch_size=4), lora=cfg()
    )
    assert stats["pairs"] == 6 and stats["rejected"] == 1
    assert stats["margin_after"] > stats["margin_before"] + 1.0
    # the reference is the same weights with the adapter disabled, unchanged by training
    pairs, _ = dpo.build_preferences(triples[:6], tok, 64)
    assert (
        abs(dpo.preference_margin(model, pairs, tok.pad_token_id, reference=True) - stats["reference_margin"])
        < 1e-4
    )


# --------------------------------------------------------------------------- the step


def _fake_artifact(store: ArtifactStore, step: str, key: str, fill) -> None:
    with store.write(step, key, {"stats": {}}) as out:
        fill(out)


def test_finetune_step_through_run_step(dirs, tmp_path):
    import shutil

    from tasks.finetune import VERSION, finetune_step

    store = ArtifactStore(tmp_path / "home")
    _fake_artifact(store, "pretrain", "b" * 64, lambda out: shutil.copytree(dirs["base"], out / "model"))

    def task(out):
        write_jsonl(out / "train.jsonl", task_rows(40) + [{"id": "x", "prompt": "p", "response": ""}])
        write_jsonl(out / "validation.jsonl", task_rows(6, "v"))
        write_jsonl(out / "test.jsonl", task_rows(6, "t"))

    _fake_artifact(store, "task_data", "t" * 64, task)
    inputs = {"base": store.ref("pretrain", "b" * 64), "task": store.ref("task_data", "t" * 64)}
    config = cfg(max_steps=20)
    ref = run_step("finetune", VERSION, finetune_step, config, inputs, store=store)
    assert ref.status == "ran"
    s = ref.stats
    assert s["method"] == "lora" and s["steps"] == 20 and s["rejected"] == 1
    assert s["rejects_by_reason"] == {"invalid:empty_response": 1}
    for key in (
        "train_loss",
        "val_loss",
        "trainable_params",
        "total_params",
        "trainable_fraction",
    ):
        assert key in s
    assert "seconds" in store.manifest("finetune", ref.key)["timings"]  # wall clock: not in the files
    out = store.local_path(ref)
    for f in (
        "adapter/adapter_config.json",
        "model/config.json",
        "metrics.json",
        "lineage.json",
        "loss.csv",
        "report.md",
    ):
        assert (out / f).exists(), f
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["base"]["key"] == "b" * 64 and lineage["data"]["key"] == "t" * 64
    assert lineage["config"]["method"] == "lora" and lineage["code"]["llmflow"]
    assert json.loads((out / "rejects.jsonl").read_text().splitlines()[0])["id"] == "x"
    assert run_step("finetune", VERSION, finetune_step, config, inputs, store=store).status == "cached"

    rows = [json.loads(x) for x in (store.local_path(inputs["task"]) / "test.jsonl").read_text().splitlines()]
    scores = rouge_l_vs_base(dirs["base"], out, rows, max_new_tokens=6)
    assert scores["n"] == 6 and 0 <= scores["base"] <= 1 and 0 <= scores["finetuned"] <= 1
    assert scores["gain"] == pytest.approx(scores["finetuned"] - scores["base"], abs=1e-3)
    assert not (tmp_path / "home" / "work" / "finetune" / ref.key).exists()  # checkpoints released


class _Logs:
    """A logger that keeps its lines."""

    def __init__(self):
        self.lines: list[str] = []

    def info(self, fmt, *a):
        self.lines.append(fmt % a)

    warning = debug = info


def _killed_at_step_7(dirs, tmp_path):
    """A finetune step killed after its step-6 checkpoint: (store, inputs, config)."""
    from tasks.finetune import VERSION, finetune_step

    store = ArtifactStore(tmp_path / "home")
    _fake_artifact(store, "pretrain", "b" * 64, lambda out: shutil.copytree(dirs["base"], out / "model"))
    _fake_artifact(store, "task_data", "t" * 64, lambda out: write_jsonl(out / "train.jsonl", task_rows(24)))
    inputs = {"base": store.ref("pretrain", "b" * 64), "task": store.ref("task_data", "t" * 64)}
    config = cfg(max_steps=10, checkpoint_every=3)
    with pytest.raises(Killed):
        run_step("finetune", VERSION, finetune_step, config, inputs, store=store, on_progress=kill_at(7))
    return store, inputs, config


def test_retried_finetune_step_resumes_from_its_checkpoints(dirs, tmp_path):
    """A task killed after a checkpoint and run again with the same key continues from it."""
    from tasks.finetune import VERSION, finetune_step

    store, inputs, config = _killed_at_step_7(dirs, tmp_path)
    logs = _Logs()
    ref = run_step("finetune", VERSION, finetune_step, config, inputs, store=store, logger=logs)
    assert ref.status == "ran" and ref.stats["steps"] == 10
    assert any("resumed from" in m and "step-00000006" in m for m in logs.lines)
    out = store.local_path(ref)
    steps = [int(r["step"]) for r in csv.DictReader((out / "loss.csv").read_text().splitlines())]
    assert steps == list(range(1, 11))  # the loss curve spans both tries
    assert not Path(store.path("work", "finetune", ref.key)).exists()


def test_forced_finetune_step_starts_from_step_0_despite_leftover_checkpoints(dirs, tmp_path):
    from tasks.finetune import VERSION, finetune_step

    store, inputs, config = _killed_at_step_7(dirs, tmp_path)
    logs, progress = _Logs(), []
    ref = run_step(
        "finetune", VERSION, finetune_step, config, inputs, store=store, force=True, logger=logs,
        on_progress=lambda done, total, msg: progress.append(msg),
    )  # fmt: skip
    assert ref.status == "ran" and ref.stats["steps"] == 10
    assert not any("resumed from" in m for m in logs.lines)
    assert [int(m.split()[1]) for m in progress if m.startswith("step ")] == list(range(1, 11))
    assert not Path(store.path("work", "finetune", ref.key)).exists()
