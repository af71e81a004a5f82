"""Training under `accelerate launch` on CPU with gloo: DDP and FSDP2, sharded checkpoints, exact
resume, and the launch configs a machine cannot run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmflow.config import ConfigError, FinetuneConfig, InputError, PretrainConfig, load_config
from model import launch
from tests.test_model import make_shards, tiny_cfg


def _run(cfg: PretrainConfig, shards: Path, out: Path, ckpts: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    job = {"config": cfg.model_dump(mode="json"), "shards": str(shards), "out": str(out),
           "checkpoints": str(ckpts), "tokenizer": None}  # fmt: skip
    (out / "job.json").write_text(json.dumps(job))
    lines: list[str] = []
    launch.run(launch.command("model.train", out / "job.json", cfg), cfg.num_processes, log=lines.append)
    return {"metrics": json.loads((out / "metrics.json").read_text()), "log": lines}


def _losses(out: Path) -> list[float]:
    return [float(r["loss"]) for r in csv.DictReader((out / "loss.csv").read_text().splitlines())]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two processes, 6 steps, checkpoints at 3 and 6: DDP, FSDP, and FSDP stopped after step 3
    (its step-3 checkpoint, nothing later) and resumed."""
    root = tmp_path_factory.mktemp("dist")
    shards = make_shards(root / "shards")
    base = dict(num_processes=2, max_steps=6, checkpoint_every=3, keep_checkpoints=5, eval_every=3)
    r = {}
    for strategy in ("ddp", "fsdp"):
        cfg = tiny_cfg(strategy=strategy, **base)
        r[strategy] = _run(cfg, shards, root / strategy, root / strategy / "ck")
    stopped = root / "resumed" / "ck"
    shutil.copytree(root / "fsdp" / "ck" / "step-00000003", stopped / "step-00000003")
    r["resumed"] = _run(tiny_cfg(strategy="fsdp", **base), shards, root / "resumed", stopped)
    r["root"] = root
    return r


@pytest.mark.slow
def test_fsdp_trains_the_same_model_as_ddp(runs):
    root = runs["root"]
    assert runs["fsdp"]["metrics"]["strategy"] == "fsdp" and runs["ddp"]["metrics"]["strategy"] == "ddp"
    assert any("(fsdp)" in m for m in runs["fsdp"]["log"])
    ddp, fsdp = _losses(root / "ddp"), _losses(root / "fsdp")
    assert len(fsdp) == 6 and fsdp[-1] < fsdp[0]
    assert max(abs(a - b) for a, b in zip(ddp, fsdp, strict=True)) < 1e-5
    a, b = (
        load_file(root / "ddp" / "model" / "model.safetensors"),
        load_file(root / "fsdp" / "model" / "model.safetensors"),
    )
    assert set(a) == set(b)  # the gathered FSDP weights save like the DDP ones (tied head left out)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
    r0, r1 = runs["fsdp"]["metrics"]["replicas"]
    assert r0["data_sha256"] != r1["data_sha256"]  # each process trained on its own batches
    assert r0["weights_sha256"] != r1["weights_sha256"]  # and holds its own shards


@pytest.mark.slow
def test_fsdp_checkpoints_are_sharded_per_process(runs):
    ck = runs["root"] / "fsdp" / "ck" / "step-00000003"
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (ck / "model" / part).glob("*.distcp")) == [
            "__0_0.distcp",
            "__1_0.distcp",
        ]
    assert not (ck / "model" / "model.safetensors").exists() and not (ck / "optimizer.pt").exists()
    assert (ck / "rng-0.pt").exists() and (ck / "rng-1.pt").exists() and (ck / "state.json").exists()


@pytest.mark.slow
def test_stopped_and_resumed_fsdp_run_gives_the_same_losses_and_weights(runs):
    root = runs["root"]
    assert any("resumed from" in m and "step 3" in m for m in runs["resumed"]["log"])
    assert _losses(root / "resumed") == pytest.approx(_losses(root / "fsdp"), abs=1e-6)
    a = load_file(root / "fsdp" / "model" / "model.safetensors")
    b = load_file(root / "resumed" / "model" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- launch config


def test_launch_line_counts_processes_over_all_machines():
    cfg = PretrainConfig(num_processes=4, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1",
                         main_process_port=29500, strategy="fsdp")  # fmt: skip
    cmd = launch.command("model.train", "job.json", cfg)
    assert cmd[3] == "--multi_gpu"
    line = " ".join(cmd)
    assert "--num_processes 8 --num_machines 2 --machine_rank 1" in line
    assert "--main_process_ip 10.0.0.1 --main_process_port 29500" in line
    assert line.endswith("-m model.train --config job.json")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["pretrain.strategy=fsdp"], "strategy=fsdp .*needs at least 2"),
        (["pretrain.strategy=fsdp", "pretrain.num_processes=2", "pretrain.optimizer=muon"], "muon"),
        (["pretrain.num_machines=2", "pretrain.main_process_port=29500"], "main_process_ip"),
        (["pretrain.num_machines=2", "pretrain.main_process_ip=10.0.0.1"], "main_process_port"),
        (["pretrain.machine_rank=1"], "machine_rank=1 must be below num_machines=1"),
        (["finetune.strategy=fsdp", "finetune.num_processes=2"], "finetune.strategy=fsdp is not supported"),
    ],
)
def test_a_launch_the_machine_cannot_run_is_a_one_line_config_error(override, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config("smoke", override)
    assert "\n" not in str(e.value)


def test_more_processes_than_gpus_is_an_input_error():
    with pytest.raises(InputError, match="num_processes=4 but this machine has 2 GPU"):
        launch.check_machine(PretrainConfig(num_processes=4), cuda_devices=2)
    launch.check_machine(PretrainConfig(num_processes=4), cuda_devices=0)  # CPU: gloo runs any count
    launch.check_machine(FinetuneConfig(num_processes=2), cuda_devices=2)


# ----------------------------------------------------------------------------- fine-tuning under DDP


class _Killed(Exception):
    pass


def _finetune_inputs(store, root: Path):
    from tests.helpers import task_rows, tiny_model_dir, tiny_tokenizer_dir, write_jsonl

    base = tiny_model_dir(root / "base", tiny_tokenizer_dir(root / "tok"))
    with store.write("pretrain", "b" * 64, {"stats": {}}) as out:
        shutil.copytree(base, out / "model")
    with store.write("task_data", "t" * 64, {"stats": {}}) as out:
        write_jsonl(out / "train.jsonl", task_rows(40) + [{"id": "x", "prompt": "p", "response": ""}])
        write_jsonl(out / "validation.jsonl", task_rows(6, "v"))
    return {"base": store.ref("pretrain", "b" * 64), "task": store.ref("task_data", "t" * 64)}


@pytest.mark.slow
def test_lora_finetune_step_under_two_processes_stops_and_resumes_exactly(tmp_path):
    """The finetune step with num_processes=2 (DDP, LoRA): one run straight through; another killed
    after its step-3 checkpoint (the launched processes go with it) and retried: same losses."""
    from llmflow.step import run_step
    from llmflow.store import ArtifactStore
    from tasks.finetune import VERSION, finetune_step

    config = FinetuneConfig(num_processes=2, max_steps=6, checkpoint_every=3, batch_size=4, lr=1e-2,
                            warmup_steps=2, max_len=64, lora_r=4, lora_alpha=8, lora_dropout=0.1)  # fmt: skip
    straight_store = ArtifactStore(tmp_path / "a")
    ref = run_step("finetune", VERSION, finetune_step, config, _finetune_inputs(straight_store, tmp_path / "a"),
                   store=straight_store)  # fmt: skip
    assert ref.stats["num_processes"] == 2 and ref.stats["steps"] == 6 and ref.stats["rejected"] == 1
    out = straight_store.local_path(ref)
    assert (out / "adapter" / "adapter_model.safetensors").exists() and (
        out / "model" / "config.json"
    ).exists()
    straight = _losses(out)

    store = ArtifactStore(tmp_path / "b")
    inputs = _finetune_inputs(store, tmp_path / "b")

    def kill_at_step_4(done, total, msg):
        if msg.startswith("step 4 "):
            raise _Killed

    with pytest.raises(_Killed):
        run_step("finetune", VERSION, finetune_step, config, inputs, store=store, on_progress=kill_at_step_4)
    logs = []

    class Logger:
        def info(self, fmt, *args):
            logs.append(fmt % args)

        warning = error = debug = exception = info

    ref = run_step("finetune", VERSION, finetune_step, config, inputs, store=store, logger=Logger())
    assert any("resumed from" in m and "step 3" in m for m in logs)
    assert _losses(store.local_path(ref)) == pytest.approx(straight, abs=1e-6)


@pytest.mark.slow
def test_dpo_under_two_processes_raises_the_preference_margin(tmp_path):
    """model.dpo launched with 2 processes (DDP, LoRA): each trains on its share of the drawn
    triples; the main process saves the candidate."""
    from tests.helpers import tiny_model_dir, tiny_tokenizer_dir, write_jsonl

    base = tiny_model_dir(tmp_path / "base", tiny_tokenizer_dir(tmp_path / "tok"))
    words = ["sum", "list", "file", "string", "value", "line"]
    triples = [{"id": i, "prompt": f"def {w}(x): return the {w}", "chosen": f"return {w}.",
                "rejected": "raise error."} for i, w in enumerate(words)]  # fmt: skip
    write_jsonl(tmp_path / "prefs.jsonl", triples)
    cfg = FinetuneConfig(
        num_processes=2, max_len=64, lora_r=4, lora_alpha=8, dpo={"steps": 20, "lr": 1e-2, "batch_size": 2}
    )
    out = tmp_path / "out"
    out.mkdir()
    job = {"config": cfg.model_dump(mode="json"), "model": str(base), "triples": str(tmp_path / "prefs.jsonl"),
           "out": str(out), "base_name": "finetune/x/model"}  # fmt: skip
    (tmp_path / "job.json").write_text(json.dumps(job))
    launch.run(launch.command("model.dpo", tmp_path / "job.json", cfg), 2, log=lambda m: None)
    stats = json.loads((out / "launched.json").read_text())
    assert stats["num_processes"] == 2 and stats["pairs"] == 6
    assert stats["margin_after"] > stats["margin_before"] + 1.0
    assert (out / "adapter" / "adapter_model.safetensors").exists() and (
        out / "model" / "config.json"
    ).exists()


def test_every_machine_of_a_run_checkpoints_into_machine_0s_work_dir(tmp_path):
    from llmflow.code_hash import code_hash
    from llmflow.step import StepContext, compute_key
    from llmflow.store import ArtifactStore
    from tasks.pretrain import VERSION, _run_dir, pretrain_step

    store = ArtifactStore(tmp_path)
    two = dict(num_machines=2, main_process_ip="10.0.0.1", main_process_port=29500)
    cfg0, cfg1 = PretrainConfig(machine_rank=0, **two), PretrainConfig(machine_rank=1, **two)

    def ctx(cfg):
        key = compute_key("pretrain", VERSION, pretrain_step, cfg, {})
        return StepContext(
            "pretrain", key, cfg, {}, store, tmp_path / "out", code=code_hash(pretrain_step).sha256
        )

    assert ctx(cfg0).key != ctx(cfg1).key  # each machine's step is its own artifact
    assert _run_dir(ctx(cfg1), cfg1) == _run_dir(ctx(cfg0), cfg0) == ctx(cfg0).work_dir
