"""model/: presets, shards loader, bits per byte, optimizers and schedules, checkpoints, resume."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from llmflow.config import InputError, PretrainConfig
from model import checkpoint as ckpt
from model.data import ShardError, TrainBatches, eval_windows, open_split
from model.eval import bits_per_byte, evaluate_bpb
from model.presets import PRESETS, build_config, build_model, count_params
from model.train import build_optimizers, lr_factor, train

VOCAB = 256


def make_shards(path: Path, train_tokens: int = 12_000, val_tokens: int = 3_000, vocab: int = VOCAB) -> Path:
    """Pack-format shards of a learnable sequence (a repeating ramp with 20% noise)."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    meta = {"dtype": "uint16", "vocab_size": vocab, "bos_id": 1, "eos_id": 2, "pad_id": 0}
    for split, n in (("train", train_tokens), ("validation", val_tokens)):
        ramp = np.tile(np.arange(3, 53), n // 50 + 1)[:n]
        tokens = np.where(rng.random(n) < 0.2, rng.integers(3, vocab, n), ramp).astype(np.uint16)
        tokens.tofile(path / f"{split}.bin")
        np.save(path / f"{split}.idx.npy", np.array([0], dtype=np.int64))
        meta[split] = {"tokens": n, "bytes": 3 * n, "documents": 1}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def tiny_cfg(**kw) -> PretrainConfig:
    base = dict(
        preset="tiny", seq_len=16, batch_size=4, max_steps=8, warmup_steps=2, eval_every=4,
        eval_batches=2, checkpoint_every=4, log_every=100, lr=3e-3,
    )  # fmt: skip
    return PretrainConfig(**{**base, **kw})


@pytest.fixture
def shards(tmp_path):
    return make_shards(tmp_path / "shards")


# ----------------------------------------------------------------------------- presets


def test_tiny_preset_is_about_100k_params_and_presets_grow():
    sizes = [count_params(build_model(build_config(p, 8000))) for p in ("tiny", "small", "demo", "base")]
    tiny = count_params(build_model(build_config("tiny", VOCAB)))
    assert 50_000 < tiny < 150_000
    assert sizes == sorted(sizes)
    assert set(PRESETS) >= {"tiny", "small", "demo", "gpt125m"}


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_checkpoint_loads_with_automodel_tied_and_untied(tmp_path, arch):
    from transformers import AutoModelForCausalLM

    for tie in (True, False):
        torch.manual_seed(0)
        model = build_model(build_config("tiny", VOCAB, arch=arch, tie_embeddings=tie))
        model.save_pretrained(tmp_path / f"{tie}")
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / f"{tie}")
        assert loaded.config.model_type == arch
        assert loaded.config.tie_word_embeddings is tie
        assert (loaded.lm_head.weight is loaded.get_input_embeddings().weight) is tie
        x = torch.randint(0, VOCAB, (1, 12))
        model.eval()
        torch.testing.assert_close(loaded(x).logits, model(x).logits)
        assert loaded.config._attn_implementation == "sdpa"


def test_sliding_window_limits_the_receptive_field():
    """With window w and L layers, position t sees back to t - L*(w-1): earlier tokens cannot matter."""
    torch.manual_seed(0)
    model = build_model(build_config("tiny", VOCAB, sliding_window=8)).eval()
    assert model.config.layer_types == ["sliding_attention"] * 2
    x = torch.randint(3, VOCAB, (1, 40))
    y = x.clone()
    y[0, 0] = (x[0, 0] + 1) % VOCAB
    a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[0, -1], b[0, -1])  # 39 - 2*7 = 25 > 0: out of reach
    assert not torch.allclose(a[0, 1], b[0, 1])  # within reach
    full = build_model(build_config("tiny", VOCAB)).eval()
    assert not torch.allclose(full(x).logits[0, -1], full(y).logits[0, -1])


def test_bad_preset_and_llama_sliding_window_are_errors():
    with pytest.raises(ValueError, match="unknown model preset"):
        build_config("huge", VOCAB)
    with pytest.raises(ValueError, match="sliding_window needs arch 'qwen3'"):
        build_config("tiny", VOCAB, arch="llama", sliding_window=16)


# ----------------------------------------------------------------------------- data and eval


def test_train_batches_are_deterministic_per_step_and_rank(shards):
    a = TrainBatches(shards, 16, 4, seed=1)
    b = TrainBatches(shards, 16, 4, seed=1)
    x, y = a.batch(5)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    torch.testing.assert_close(x, b.batch(5)[0])
    torch.testing.assert_close(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one
    assert not torch.equal(x, a.batch(6)[0])
    assert not torch.equal(x, TrainBatches(shards, 16, 4, seed=1, rank=1).batch(5)[0])


def test_corpus_too_small_and_vocab_mismatch_are_clear_errors(tmp_path):
    small = make_shards(tmp_path / "small", train_tokens=10, val_tokens=100)
    with pytest.raises(ShardError, match="fewer than seq_len"):
        TrainBatches(small, 16, 2)
    with pytest.raises(ShardError, match="vocabulary has 100 ids"):
        TrainBatches(make_shards(tmp_path / "v"), 16, 2, vocab_size=100)
    (tmp_path / "v" / "train.bin").write_bytes(b"\x01\x02\x03")  # odd size for uint16
    with pytest.raises(ShardError, match="truncated"):
        open_split(tmp_path / "v", "train")
    with pytest.raises(ShardError, match="no meta.json"):
        TrainBatches(tmp_path, 16, 2)


def test_eval_windows_split_across_ranks_cover_each_window_once(shards):
    tokens = open_split(shards, "validation")
    whole = torch.cat([x for x, _ in eval_windows(tokens, 16, 4, 3)])
    parts = [torch.cat([x for x, _ in eval_windows(tokens, 16, 4, 3, r, 2)]) for r in (0, 1)]
    assert whole.shape[0] == 12 and parts[0].shape[0] + parts[1].shape[0] == 12
    assert sorted(map(tuple, whole.tolist())) == sorted(map(tuple, torch.cat(parts).tolist()))


def test_bits_per_byte_formula_and_evaluate(shards):
    assert bits_per_byte(math.log(2), 100, 100) == pytest.approx(1.0)
    assert bits_per_byte(2.0, 300, 1200) == pytest.approx(2.0 * 300 / (1200 * math.log(2)))
    torch.manual_seed(0)
    model = build_model(build_config("tiny", VOCAB))
    out = evaluate_bpb(model, shards, "validation", seq_len=16, batch_size=4, max_batches=2)
    assert out["tokens"] == 2 * 4 * 16
    assert out["loss"] == pytest.approx(math.log(VOCAB), rel=0.05)  # untrained: near uniform
    assert out["bpb"] == pytest.approx(out["loss"] / (3 * math.log(2)))  # bytes = 3 x tokens
    assert out["ppl"] == pytest.approx(math.exp(out["loss"]))


# ----------------------------------------------------------------------------- optimizers, schedules


def test_schedules_warmup_then_decay_to_floor():
    cos = tiny_cfg(schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(cos, 0, 0.0) == pytest.approx(0.1)
    assert lr_factor(cos, 9, 0.1) == pytest.approx(1.0)
    assert lr_factor(cos, 50, 0.5) == pytest.approx(0.55)
    assert lr_factor(cos, 100, 1.0) == pytest.approx(0.1)
    wsd = tiny_cfg(schedule="wsd", warmup_steps=0, decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_factor(wsd, 10, 0.5) == 1.0 and lr_factor(wsd, 79, 0.79) == 1.0
    assert lr_factor(wsd, 90, 0.9) == pytest.approx(0.5)
    assert lr_factor(wsd, 100, 1.0) == pytest.approx(0.0)


def test_muon_takes_hidden_matrices_adamw_the_rest():
    model = build_model(build_config("tiny", VOCAB, tie_embeddings=False))
    muon, adam = build_optimizers(model, tiny_cfg(optimizer="muon"), fused=False)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adam, torch.optim.AdamW)
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    in_adam = {id(p) for g in adam.param_groups for p in g["params"]}
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    assert id(model.get_input_embeddings().weight) in in_adam and id(model.lm_head.weight) in in_adam
    assert in_muon.isdisjoint(in_adam)
    assert in_muon | in_adam == {id(p) for p in model.parameters()}


def test_muon_orthogonalises_in_float32_on_cpu_and_matches_the_library():
    """model/muon.py: torch.optim.Muon's Newton-Schulz iteration, in float32 for CPU tensors (the
    library's bfloat16 one is ~90x slower there); the two agree to bfloat16 precision."""
    from torch.optim import _muon

    from model import muon

    use = muon.use_float32_on_cpu
    assert use() and use()  # idempotent
    library = muon.LIBRARY_ITERATION
    assert library is not None and _muon._zeropower_via_newtonschulz is not library
    g = torch.Generator().manual_seed(0)
    coeffs = (_muon.DEFAULT_A, _muon.DEFAULT_B, _muon.DEFAULT_C)
    for shape in ((64, 160), (160, 64)):  # wide and tall
        grad = torch.randn(*shape, generator=g)
        ours = _muon._zeropower_via_newtonschulz(grad, coeffs, 5, 1e-7)  # what Muon.step now calls
        theirs = library(grad, coeffs, 5, 1e-7)
        assert ours.dtype == torch.float32 and theirs.dtype == torch.bfloat16 and ours.shape == grad.shape
        assert (ours - theirs.float()).norm() / theirs.float().norm() < 0.03
        sv = torch.linalg.svdvals(ours)
        assert sv.shape == (min(shape),) and sv.min() > 0.5 and sv.max() < 1.5  # US'V^T, S' in ~(0.7, 1.2)


# ----------------------------------------------------------------------------- training, resume


def _losses(out: Path) -> list[float]:
    import csv

    return [float(r["loss"]) for r in csv.DictReader((out / "loss.csv").read_text().splitlines())]


class _Killed(Exception):
    pass


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_exact_resume_gives_the_same_losses(tmp_path, shards, optimizer):
    cfg = tiny_cfg(optimizer=optimizer, checkpoint_every=3, max_steps=8, grad_accum=2)
    train(cfg, shards, tmp_path / "a", log=lambda m: None)
    straight = _losses(tmp_path / "a")
    assert len(straight) == 8 and straight[-1] < straight[0]

    def kill_at_step_5(done, total, msg):
        if msg.startswith("step 5 "):
            raise _Killed

    with pytest.raises(_Killed):
        train(cfg, shards, tmp_path / "b", on_progress=kill_at_step_5, log=lambda m: None)
    assert [p.name for p in ckpt.candidates(tmp_path / "b" / "checkpoints")] == ["step-00000003"]
    logs = []
    train(cfg, shards, tmp_path / "b", log=logs.append)
    assert any("resumed from" in m and "step 3" in m for m in logs)
    np.testing.assert_allclose(_losses(tmp_path / "b"), straight, rtol=0, atol=1e-5)


def test_corrupt_checkpoint_falls_back_and_other_arch_is_an_error(tmp_path, shards):
    cfg = tiny_cfg(checkpoint_every=2, max_steps=4, keep_checkpoints=3)
    train(cfg, shards, tmp_path / "run", log=lambda m: None)
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in ckpt.candidates(root)] == ["step-00000004", "step-00000002"]
    model = build_model(build_config("tiny", VOCAB))
    opts = build_optimizers(model, cfg, fused=False)
    # truncate the newest weights: the loader must skip to step 2
    weights = root / "step-00000004" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    state = ckpt.latest(root, model, opts)
    assert state["step"] == 2 and state["path"].endswith("step-00000002")
    # a partial checkpoint (no state.json) is skipped too
    (root / "step-00000002" / "state.json").unlink()
    with pytest.raises(ckpt.NoUsableCheckpoint, match="could be loaded .*re-run with --force") as e:
        ckpt.latest(root, model, opts)
    assert isinstance(e.value, InputError) and "\n" not in str(e.value)  # `llmflow` prints one line, exit 2
    # a checkpoint of another architecture is refused with the differing fields named
    train(cfg, shards, tmp_path / "ok", log=lambda m: None)
    other = build_model(build_config("small", VOCAB))
    with pytest.raises(ckpt.CheckpointError, match="another architecture.*hidden_size"):
        ckpt.latest(tmp_path / "ok" / "checkpoints", other, build_optimizers(other, cfg, fused=False))
    # ... and the training loop refuses to resume it
    shutil.copytree(tmp_path / "ok" / "checkpoints", tmp_path / "mixed" / "checkpoints")
    with pytest.raises(ckpt.CheckpointError, match="another architecture"):
        train(tiny_cfg(preset="small", max_steps=2), shards, tmp_path / "mixed", log=lambda m: None)


def test_training_writes_model_metrics_and_learns(tmp_path, shards):
    from transformers import AutoModelForCausalLM

    cfg = tiny_cfg(max_steps=30, eval_every=10, schedule="wsd", sliding_window=8, checkpoint_every=100)
    m = train(cfg, shards, tmp_path / "out", log=lambda m: None)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["steps"] == 30 and metrics["tokens"] == 30 * 4 * 16
    assert metrics["val_bpb"] == pytest.approx(m["val_bpb"])
    assert metrics["val_loss"] < math.log(VOCAB) - 1.0  # learnt the ramp
    assert 0 < metrics["mfu"] < 1 and metrics["flops"] > 0 and metrics["energy_wh"] > 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
    assert model.config.sliding_window == 8 and model.config.eos_token_id == 2
    assert [p.name for p in ckpt.candidates(tmp_path / "out" / "checkpoints")] == ["step-00000030"]


def test_max_seconds_stops_on_the_wall_clock(tmp_path, shards, monkeypatch):
    from model import hardware

    monkeypatch.setattr(hardware, "cpu_native_bf16", lambda: True)  # bf16 autocast on any CPU
    cfg = tiny_cfg(max_steps=100_000, max_seconds=2.0, gradient_checkpointing=True, mixed_precision="bf16")
    m = train(cfg, shards, tmp_path / "t", log=lambda m: None)
    assert m["mixed_precision"] == "bf16"  # CPU autocast in bf16; gradient checkpointing on
    # it stopped on the budget (not on max_steps), having used it
    assert 0 < m["steps"] < 100_000 and m["seconds"] >= 2.0


def test_torch_compile_option_trains_and_saves_a_loadable_model(tmp_path, shards):
    """`compile: true` wraps the model in torch.compile; the saved checkpoint is the plain model."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_cfg(max_steps=6, eval_every=6, checkpoint_every=100, compile=True)
    m = train(cfg, shards, tmp_path / "out", log=lambda m: None)
    assert m["steps"] == 6 and math.isfinite(m["val_loss"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
    assert not any(k.startswith("_orig_mod") for k in model.state_dict())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_precision_choice_on_cpu(monkeypatch):
    """fp16 autocast is GPU-only: on CPU it falls back to fp32; bf16 autocast runs on a CPU with
    bf16 instructions."""
    from model import hardware
    from model.train import resolve_precision

    monkeypatch.setattr(hardware, "cpu_native_bf16", lambda: True)

    assert resolve_precision("fp16") == "no"
    assert resolve_precision("bf16") == "bf16"
    assert resolve_precision("auto") == "no"
    assert resolve_precision("no") == "no"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_bf16_on_a_cpu_without_bf16_instructions_warns(monkeypatch):
    """bf16 is emulated (slower than fp32) without AVX512-BF16/AMX/Arm BF16: say so, train in fp32."""
    import warnings

    from model import hardware as T

    monkeypatch.setattr(T, "cpu_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="without bf16 instructions"):
        assert T.resolve_precision("bf16") == "no"
    monkeypatch.setattr(T, "cpu_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert T.resolve_precision("bf16") == "bf16"
