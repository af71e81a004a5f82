"""The `pretrain` step end to end through the artifact store: one process, two under accelerate, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from llmflow.config import PretrainConfig
from llmflow.step import run_step
from llmflow.store import StepRef
from tasks.pretrain import VERSION, pretrain_step
from tests.helpers import corpus, tiny_tokenizer_dir


def _artifact(store, step: str, key: str, build) -> StepRef:
    with store.write(step, key, {"stats": {}}) as out:
        build(out)
    return store.ref(step, key, status="ran")


def pack_like(out: Path, tokenizer_dir: Path, lines: list[str]) -> None:
    """What the pack step writes: token ids with eos between documents, offsets, meta.json."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    docs = ["\n".join(lines[i : i + 5]) for i in range(0, len(lines), 5)]
    meta = {
        "dtype": "uint16", "vocab_size": len(tok), "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id,
    }  # fmt: skip
    for split, part in (
        ("train", docs[: int(len(docs) * 0.8)]),
        ("validation", docs[int(len(docs) * 0.8) :]),
    ):
        ids, starts = [], []
        for d in part:
            starts.append(len(ids))
            ids += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        np.asarray(ids, dtype=np.uint16).tofile(out / f"{split}.bin")
        np.save(out / f"{split}.idx.npy", np.asarray(starts, dtype=np.int64))
        meta[split] = {
            "tokens": len(ids),
            "bytes": sum(len(d.encode()) for d in part),
            "documents": len(part),
        }
    (out / "meta.json").write_text(json.dumps(meta))


@pytest.fixture
def inputs(store, tmp_path):
    tok_dir = tiny_tokenizer_dir(tmp_path / "tok")
    tokenizer = _artifact(store, "tokenizer", "t" * 64, lambda out: [
        (out / f.name).write_bytes(f.read_bytes()) for f in tok_dir.iterdir()
    ])  # fmt: skip
    shards = _artifact(store, "pack", "p" * 64, lambda out: pack_like(out, tok_dir, corpus(600)))
    return {"shards": shards, "tokenizer": tokenizer}


def cfg(**kw) -> PretrainConfig:
    base = dict(
        preset="tiny", seq_len=32, batch_size=4, max_steps=12, warmup_steps=2, eval_every=6,
        eval_batches=2, checkpoint_every=6, log_every=4, lr=5e-3,
    )  # fmt: skip
    return PretrainConfig(**{**base, **kw})


class Recorder:
    def __init__(self):
        self.progress, self.published = [], []

    def on_progress(self, done, total, msg):
        self.progress.append((done, total, msg))

    def on_publish(self, kind, name, payload):
        self.published.append((kind, name))


def test_pretrain_step_outputs_a_loadable_model_and_report(store, inputs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rec = Recorder()
    ref = run_step("pretrain", VERSION, pretrain_step, cfg(), inputs, store=store,
                   on_progress=rec.on_progress, on_publish=rec.on_publish)  # fmt: skip
    out = store.local_path(ref)
    for f in (
        "metrics.json",
        "loss.csv",
        "loss.png",
        "report.md",
        "samples.jsonl",
        "model/model.safetensors",
    ):
        assert (out / f).exists(), f
    assert {"val_bpb", "val_loss", "val_ppl", "steps", "tokens", "params"} <= set(ref.stats)
    assert {"seconds", "tokens_per_s", "mfu"} <= set(store.manifest("pretrain", ref.key)["timings"])
    assert ref.stats["steps"] == 12 and ref.stats["tokens"] == 12 * 4 * 32
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_bpb"] == pytest.approx(ref.stats["val_bpb"], abs=1e-4)
    rows = list(csv.DictReader((out / "loss.csv").read_text().splitlines()))
    assert len(rows) == 12 and float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000012"]
    # the model directory is self-contained
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.vocab_size == len(tok) and model.config.eos_token_id == tok.eos_token_id
    # Prefect-facing reports: progress, the loss picture, the markdown report with samples
    assert rec.progress and rec.progress[-1][0] == pytest.approx(1.0)
    assert ("image", "loss-curve") in rec.published and ("markdown", "report") in rec.published
    report = (out / "report.md").read_text()
    assert "bits per byte" in report and "greedy" in report
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(isinstance(s["greedy"], str) for s in samples)
    # the final checkpoint samples too (`llmflow generate` on a checkpoint): tokenizer found above it
    from model.generate import generate, load

    lm, tk = load(out / "checkpoints" / "step-00000012")
    assert len(generate(lm, tk, ["def "], max_new_tokens=5, temperature=0.8, top_k=5, top_p=0.9, seed=0)) == 1
    # the work directory with intermediate checkpoints is released after success
    assert not Path(store.path("work", "pretrain", ref.key)).exists()


class Killed(Exception):
    pass


def killed_after_step_7(store, inputs) -> None:
    """A run of the step killed after its step-6 checkpoint: the checkpoint stays in the work dir."""
    from model import train as train_mod

    real = train_mod.train

    def train(*args, **kw):
        def bomb(done, total, msg):
            if msg.startswith("step 7 "):
                raise Killed

        return real(*args, **{**kw, "on_progress": bomb})

    train_mod.train = train
    try:
        with pytest.raises(Killed):
            run_step("pretrain", VERSION, pretrain_step, cfg(), inputs, store=store)
    finally:
        train_mod.train = real


class Logs:
    """A logger that keeps the formatted messages."""

    def __init__(self):
        self.messages: list[str] = []

    def info(self, fmt, *a):
        self.messages.append(fmt % a)

    warning = debug = info


def test_retried_step_resumes_from_its_checkpoints(store, inputs):
    """A task killed after a checkpoint and run again with the same key continues from it."""
    killed_after_step_7(store, inputs)
    logs = Logs()
    ref = run_step("pretrain", VERSION, pretrain_step, cfg(), inputs, store=store, logger=logs)
    assert any("resumed from" in m and "step-00000006" in m for m in logs.messages)
    assert ref.stats["steps"] == 12


def test_forced_step_starts_from_step_0_despite_leftover_checkpoints(store, inputs):
    killed_after_step_7(store, inputs)
    logs, rec = Logs(), Recorder()
    ref = run_step(
        "pretrain", VERSION, pretrain_step, cfg(), inputs, store=store, force=True,
        logger=logs, on_progress=rec.on_progress,
    )  # fmt: skip
    assert not any("resumed from" in m for m in logs.messages)
    steps = [int(msg.split()[1]) for _, _, msg in rec.progress if msg.startswith("step ")]
    assert steps == list(range(1, 13))  # every step trained in this run, from the first
    assert ref.stats["steps"] == 12
    assert not Path(store.path("work", "pretrain", ref.key)).exists()


def test_vocab_mismatch_between_tokenizer_and_shards_is_an_error(store, inputs, tmp_path):
    big = tiny_tokenizer_dir(tmp_path / "big", vocab_size=400)
    other = _artifact(store, "tokenizer", "b" * 64, lambda out: [
        (out / f.name).write_bytes(f.read_bytes()) for f in big.iterdir()
    ])  # fmt: skip
    with pytest.raises(ValueError, match="different tokenizers"):
        run_step("pretrain", VERSION, pretrain_step, cfg(), {**inputs, "tokenizer": other}, store=store)


def test_two_processes_under_accelerate_launch(store, inputs):
    rec = Recorder()
    ref = run_step("pretrain", VERSION, pretrain_step, cfg(num_processes=2, max_steps=6, eval_every=3),
                   inputs, store=store, on_progress=rec.on_progress, on_publish=rec.on_publish)  # fmt: skip
    out = store.local_path(ref)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    assert metrics["tokens"] == 6 * 4 * 32 * 2  # both ranks' batches count
    r0, r1 = metrics["replicas"]
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["data_sha256"] != r1["data_sha256"]  # each process trained on its own batches
    assert r0["weights_sha256"] == r1["weights_sha256"]  # and ended with the same weights
    assert rec.progress and rec.progress[-1][0] == pytest.approx(1.0)  # streamed from the subprocess
    assert (out / "model" / "model.safetensors").exists()
    # the live curves too: each step's row came through `@@step` lines into the event files
    from tests.test_live_curves import scalars

    [logdir] = Path(store.path("tensorboard", "pretrain")).iterdir()
    assert [s for s, _ in scalars(logdir)["loss/train"]] == [1, 2, 3, 4, 5, 6]
    assert ("markdown", "live-curve") in rec.published


def test_subprocess_failure_fails_the_step_with_its_error(store, inputs):
    with pytest.raises(RuntimeError, match="accelerate launch.*fewer than seq_len"):
        run_step("pretrain", VERSION, pretrain_step, cfg(num_processes=2, seq_len=4096), inputs, store=store)
