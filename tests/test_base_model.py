"""Bringing your own base model: tiny random-weight GPT-2 and Llama checkpoints saved with
`save_pretrained`, each with its own tokenizer, named by `finetune.base` (fine-tune, evaluate,
gate and serve them) or `pretrain.init_from` (continue pretraining); a hub name found in the local
cache offline; and every unusable base model refused in one line before any work."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from llmflow.config import BaseModelConfig, FinetuneConfig, InputError, ServeConfig, load_config
from llmflow.registry import Registry
from llmflow.step import run_step
from llmflow.store import ArtifactStore
from model import hub
from model.adapters import UnwrappableModel, check_base, load_base, lora_targets
from model.chat import end_marker, format_prompt
from model.generate import stop_strings, stop_token_ids
from tests.basemodels import REVISION, gpt2_dir, hub_cache, llama_dir
from tests.helpers import corpus, task_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return {"gpt2": gpt2_dir(root / "gpt2"), "llama": llama_dir(root / "llama")}


# --------------------------------------------------------------------------- resolving and checking


def test_a_local_directory_and_a_cached_hub_name_resolve_offline(bases, tmp_path, monkeypatch):
    local = hub.resolve(str(bases["gpt2"]))
    assert local.path == bases["gpt2"].resolve() and local.revision is None and local.hub_name is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    snapshot = hub_cache(tmp_path / "cache", "tiny-org/tiny-gpt2", bases["gpt2"])
    cached = hub.resolve("tiny-org/tiny-gpt2")
    assert cached.path == snapshot and cached.hub_name == "tiny-org/tiny-gpt2"
    assert hub.fingerprint(cached) == REVISION and hub.licence(cached.path) == "mit"
    assert hub.licence(bases["llama"]) == "apache-2.0"


def test_lora_targets_are_the_architectures_own_linear_layers(bases):
    gpt2, _ = load_base(bases["gpt2"])
    llama, _ = load_base(bases["llama"])
    assert lora_targets(gpt2) == ["c_attn", "c_fc", "c_proj"]  # GPT-2's Conv1D layers
    assert lora_targets(llama) == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    assert lora_targets(gpt2, ["c_attn"]) == ["c_attn"]
    with pytest.raises(UnwrappableModel, match=r"\['q_proj'\] are not modules of this gpt2 model"):
        lora_targets(gpt2, ["q_proj"])


def test_prompts_use_the_tokenizers_own_template_or_llmflows(bases):
    _, gpt2 = load_base(bases["gpt2"])  # no template: llmflow's, role markers as plain text
    assert format_prompt("x", tokenizer=gpt2) == "<|user|>\nx<|end|>\n<|assistant|>\n"
    assert end_marker(gpt2) == "<|end|>" and stop_strings(gpt2) == ["<|end|>"]
    assert stop_token_ids(gpt2) == [gpt2.eos_token_id]
    _, llama = load_base(bases["llama"])  # its own ChatML template
    assert format_prompt("x", "be brief", llama) == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    )
    assert end_marker(llama) == "<|im_end|>" and stop_strings(llama) == []
    assert stop_token_ids(llama) == [llama.eos_token_id, llama.convert_tokens_to_ids("<|im_end|>")]
    from model.sft_data import build_sft

    data = build_sft([{"prompt": "return the sum", "response": "sum."}], llama, max_len=64)
    (ex,) = data.examples
    target = [t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != -100]
    assert llama.decode(target) == "sum.<|im_end|></s>"
    prompt = llama(format_prompt("return the sum", tokenizer=llama), add_special_tokens=False)["input_ids"]
    assert ex["input_ids"] == [llama.bos_token_id, *prompt, *target]  # bos once, then the template


# --------------------------------------------------------------------------- bad input


def _bad(bases, tmp_path, case: str) -> list[str]:
    if case == "missing directory":
        return [f"finetune.base={tmp_path / 'no-such-model'}"]
    if case == "hub name offline, not cached":
        return ["finetune.base=tiny-org/not-cached"]
    if case == "tokenizer larger than the embeddings":
        return [f"finetune.base={llama_dir(tmp_path / 'big-vocab', extra_tokens=5)}"]
    if case == "layers peft cannot wrap":
        return [f"pretrain.init_from={bases['gpt2']}", "finetune.target_modules=[ln_1, ln_2]"]
    raise AssertionError(case)


BAD = {
    "missing directory": "no such model directory",
    "hub name offline, not cached": "not in the local Hugging Face cache and the hub is offline",
    "tokenizer larger than the embeddings": "the tokenizer has 365 tokens but the model's embedding table has 360 rows",
    "layers peft cannot wrap": "peft cannot wrap ['ln_1', 'ln_2'] of this gpt2 model",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_an_unusable_base_model_fails_in_one_line_before_any_work(bases, tmp_path, monkeypatch, case):
    from flows.pipeline import compose

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    cfg = load_config("smoke", _bad(bases, tmp_path, case))
    home = tmp_path / "home"
    with pytest.raises(InputError) as e:
        compose(cfg, home=str(home))  # no Prefect needed: it fails before the first step
    assert BAD[case] in str(e.value) and "\n" not in str(e.value)
    assert not (home / "artifacts").exists()  # nothing ran


def test_llmflow_exits_2_with_one_line_for_a_hub_name_offline(tmp_path):
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT), "COLUMNS": "300",
    }  # fmt: skip
    r = subprocess.run(
        [sys.executable, "-m", "deployments.cli", "finetune", "--config", "smoke",
         "--set", "finetune.base=tiny-org/not-cached", "--home", str(tmp_path / "home")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not in the local Hugging Face cache" in lines[0], r.stderr
    assert not (tmp_path / "home" / "artifacts").exists()


def test_init_from_and_base_together_is_a_config_error(bases):
    from llmflow.config import ConfigError

    with pytest.raises(ConfigError, match="not both"):
        load_config("smoke", [f"pretrain.init_from={bases['gpt2']}", f"finetune.base={bases['gpt2']}"])


def test_check_base_refuses_what_is_not_a_causal_lm(tmp_path):
    from transformers import T5Config

    T5Config(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=32, vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(InputError, match="not a causal language model"):
        check_base(tmp_path, FinetuneConfig())


# --------------------------------------------------------------------------- end to end


def _artifact(store: ArtifactStore, step: str, key: str, fill, config=None):
    with store.write(step, key, {"stats": {}, "config": config or {}}) as out:
        fill(out)
    return store.ref(step, key)


def _data(store: ArtifactStore):
    """A prepare artifact (train/validation Parquet text) and a task_data artifact (jsonl rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def prepared(out):
        lines = corpus(240)
        for split, texts in (("train", lines[:200]), ("validation", lines[200:])):
            (out / split).mkdir()
            docs = ["\n".join(texts[i : i + 4]) for i in range(0, len(texts), 4)]
            pq.write_table(pa.table({"text": docs}), out / split / "part-00000.parquet")

    def task(out):
        write_jsonl(out / "train.jsonl", task_rows(24))
        write_jsonl(out / "validation.jsonl", task_rows(4, "v"))
        write_jsonl(out / "test.jsonl", task_rows(4, "t"))

    return _artifact(store, "prepare", "p" * 64, prepared), _artifact(
        store, "task_data", "t" * 64, task, {"source": "pydocs"}
    )


def _bring(store: ArtifactStore, base_dir: Path):
    from tasks.base_model import VERSION, base_model_step

    source = BaseModelConfig(source=str(base_dir))
    extra = hub.fingerprint(hub.resolve(source.source))
    return run_step("base_model", VERSION, base_model_step, source, store=store, extra=extra)


SMOKE = load_config(
    "smoke",
    [
        "finetune.max_steps=4", "finetune.batch_size=4", "evaluate.max_samples=4", "evaluate.max_new_tokens=6",
        "evaluate.bias=false", "evaluate.counterfactual_samples=0", "pretrain.max_steps=3", "pretrain.eval_every=3",
    ],
)  # fmt: skip


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_finetune_evaluate_gate_and_serve_a_base_model(bases, tmp_path, family, one_thread):
    from transformers import AutoTokenizer

    from deployments.champion import registry_source
    from deployments.feedback import FeedbackStore
    from deployments.service import create_app
    from tasks import evaluate, finetune, gate, pack

    store, base = ArtifactStore(tmp_path / "home"), bases[family]
    data, task = _data(store)
    hub_ref = _bring(store, base)
    brought = store.local_path(hub_ref)
    record = json.loads((brought / "base.json").read_text())
    assert record["model_type"] == family and record["license"] == (
        "mit" if family == "gpt2" else "apache-2.0"
    )
    assert record["chat_template"] == ("llmflow" if family == "gpt2" else "own")

    # pack encodes with the base's own tokenizer: its vocabulary, its eos after every document
    shards = run_step(
        "pack", 1, pack.pack_step, SMOKE.pack, {"data": data, "tokenizer": hub_ref}, store=store
    )
    tok = AutoTokenizer.from_pretrained(base)
    meta = json.loads((store.local_path(shards) / "meta.json").read_text())
    assert (
        meta["vocab_size"] == len(tok)
        and meta["eos_id"] == tok.eos_token_id
        and meta["train"]["tokens"] > 1000
    )

    tuned_ref = run_step(
        "finetune",
        finetune.VERSION,
        finetune.finetune_step,
        SMOKE.finetune,
        {"base": hub_ref, "task": task},
        store=store,
    )
    tuned = store.local_path(tuned_ref)
    adapter = json.loads((tuned / "adapter" / "adapter_config.json").read_text())
    want = {"gpt2": ["c_attn", "c_fc", "c_proj"], "llama": lora_targets(load_base(base)[0])}[family]
    assert sorted(adapter["target_modules"]) == want
    assert adapter["fan_in_fan_out"] is (family == "gpt2")  # GPT-2's Conv1D stores weights transposed
    assert (
        AutoTokenizer.from_pretrained(tuned / "model")("return the sum")["input_ids"]
        == tok("return the sum")["input_ids"]
    )
    lineage = json.loads((tuned / "lineage.json").read_text())
    assert lineage["base"] == {"step": "base_model", "key": hub_ref.key}
    assert (
        lineage["base_model"]["source"] == str(base) and lineage["base_model"]["license"] == record["license"]
    )

    inputs = {"model": tuned_ref, "base": hub_ref, "shards": shards, "task": task}
    report = run_step(
        "evaluate",
        evaluate.VERSION,
        evaluate.evaluate_step,
        SMOKE.evaluate,
        inputs,
        store=store,
        extra={"name": family},
    )
    metrics = report.stats["metrics"]
    assert metrics["val_bpb"] > 0 and 0 <= metrics["rougeL"] <= 1 and "base" in report.stats["baselines"]
    decision = run_step(
        "gate", gate.VERSION, gate.gate_step, SMOKE.gate, {"eval": report, "model": tuned_ref}, store=store,
        extra={"name": family, "champion": None},
    )  # fmt: skip
    assert decision.stats["passed"] is False  # four LoRA steps on a random model beat no baseline
    reg = Registry(store, family)
    entry = reg.get(decision.stats["version"])
    assert entry["lineage"]["base_model"]["license"] == record["license"]
    card = Path(reg.card_path(entry["version"])).read_text()
    assert f"license: {record['license']}" in card and f"Base model: `{base}`" in card

    reg.promote(entry["version"])  # as `llmflow models promote` would; then serve the champion
    app = create_app(
        ServeConfig(reload_interval_seconds=0), name=family, home=str(tmp_path / "home"),
        model_source=registry_source(family, store), feedback=FeedbackStore(str(tmp_path / "fb.db")),
        emit=lambda *a, **k: None, retrain_check=lambda: (False, "the test hands no retrain off"), device="cpu",
    )  # fmt: skip
    with TestClient(app) as client:
        r = client.post("/generate", json={"prompt": "def add(a, b): return a + b", "max_new_tokens": 6})
        assert r.status_code == 200 and r.json()["model_version"] == str(entry["version"]), r.text
        chat = client.post(
            "/v1/chat/completions",
            json={
                "model": family,
                "messages": [{"role": "user", "content": "return the sum"}],
                "max_tokens": 6,
            },
        )
        assert chat.status_code == 200, chat.text
        # rendered by the model's template (llmflow's for GPT-2): format_prompt's text, plus bos
        rendered = tok(format_prompt("return the sum", tokenizer=tok), add_special_tokens=False)["input_ids"]
        assert chat.json()["usage"]["prompt_tokens"] == 1 + len(rendered)


def test_continued_pretraining_starts_from_the_checkpoint(bases, tmp_path, one_thread):
    import torch
    from safetensors.torch import load_file

    from tasks import pack, pretrain

    store, base = ArtifactStore(tmp_path / "home"), bases["gpt2"]
    data, _ = _data(store)
    hub_ref = _bring(store, base)
    shards = run_step(
        "pack", 1, pack.pack_step, SMOKE.pack, {"data": data, "tokenizer": hub_ref}, store=store
    )
    cfg = SMOKE.pretrain.model_copy(update={"init_from": str(base)})
    inputs = {"shards": shards, "tokenizer": hub_ref, "init": hub_ref}
    ref = run_step("pretrain", pretrain.VERSION, pretrain.pretrain_step, cfg, inputs, store=store)
    out = store.local_path(ref)
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["vocab_size"] == 400 and ref.stats["steps"] == 3
    before, after = load_file(base / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert before.keys() == after.keys() and all(before[k].shape == after[k].shape for k in before)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the same model, trained on
    # step 1's loss is the checkpoint's own on that batch (a fresh model would start near ln 400)
    first = float(next(csv.DictReader((out / "loss.csv").read_text().splitlines()))["loss"])
    assert first == pytest.approx(_loss_of(base, store.local_path(shards), cfg), rel=1e-3)
    assert AutoTokenizer_ids(out / "model") == AutoTokenizer_ids(base)


def AutoTokenizer_ids(path: Path) -> list[int]:  # noqa: N802
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)("def f(x): return the sum")["input_ids"]


def _loss_of(model_dir: Path, shards: Path, cfg) -> float:
    """The checkpoint's loss on pretraining's first batch."""
    import torch
    from transformers import AutoModelForCausalLM

    from model.data import TrainBatches

    batches = TrainBatches(shards, cfg.seq_len, cfg.batch_size, seed=cfg.seed, rank=0, vocab_size=400)
    x, y = batches.batch(0, 0)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=x).logits
    return float(
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))
    )


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_the_pipeline_fine_tunes_a_base_model_without_tokenizer_or_pretraining(bases, tmp_path):
    from flows.pipeline import pipeline
    from tasks.gate import GateFailed

    cfg = load_config(
        "smoke",
        [
            f"finetune.base={bases['gpt2']}", "task_data.limit=120", "ingest.sources.0.limit=150",
            "prepare.langid.enabled=false", "finetune.max_steps=2", "finetune.batch_size=4",
            "evaluate.max_samples=4", "evaluate.max_new_tokens=4", "evaluate.bias=false",
            "evaluate.counterfactual_samples=0",
        ],
    )  # fmt: skip
    state = pipeline(config=cfg, home=str(tmp_path / "home"), return_state=True)
    with pytest.raises(GateFailed) as e:  # a random base beats no baseline: the run ends Failed
        state.result()
    summary = e.value.summary
    assert list(summary) == [
        "ingest",
        "task_data",
        "prepare",
        "base_model",
        "pack",
        "finetune",
        "evaluate",
        "gate",
    ]
    store = ArtifactStore(tmp_path / "home")
    assert store.manifest("pack", summary["pack"]["key"])["inputs"]["tokenizer"]["step"] == "base_model"
    assert store.manifest("finetune", summary["finetune"]["key"])["inputs"]["base"]["step"] == "base_model"
