"""Bringing your own base model: tiny random-weight GPT-2 and Llama checkpoints saved with
`save_pretrained`, each with its own tokenizer, named by `finetune.base` (fine-tune, evaluate,
gate and serve them) or `pretrain.init_from` (continue pretraining); a hub name found in the local
cache offline; and every unusable base model refused in one line before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from llmflow.config import FinetuneConfig, InputError, ServeConfig, load_config
from llmflow.registry import Registry
from llmflow.store import ArtifactStore
from model import hub
from model.adapters import UnwrappableModel, check_base, load_base, lora_targets
from model.chat import end_marker, format_prompt
from model.generate import stop_strings, stop_token_ids
from tests.basemodels import REVISION, gpt2_dir, hub_cache, llama_dir

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


def _pipeline_cfg(overrides: list[str]):
    return load_config(
        "smoke",
        [
            "task_data.limit=120", "ingest.sources.0.limit=150", "prepare.langid.enabled=false",
            "finetune.max_steps=4", "finetune.batch_size=4", "evaluate.max_samples=4",
            "evaluate.max_new_tokens=6", "evaluate.bias=false", "evaluate.counterfactual_samples=0",
            "gate.bootstrap=50", *overrides,
        ],
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_finetune_evaluate_gate_and_serve_a_base_model(bases, tmp_path_factory, family):
    from deployments.champion import registry_source
    from deployments.feedback import FeedbackStore
    from deployments.service import create_app
    from flows.pipeline import pipeline
    from tasks.gate import GateFailed

    home = str(tmp_path_factory.getbasetemp() / "base-model-home")  # the data steps are shared
    base = bases[family]
    cfg = _pipeline_cfg([f"finetune.base={base}", f"name={family}"])
    state = pipeline(config=cfg, home=home, return_state=True)
    try:
        summary = state.result()
    except GateFailed as e:  # six steps of LoRA on a random model beat no baseline: honest
        summary = e.summary
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
    store = ArtifactStore(home)
    brought = store.local_path(("base_model", summary["base_model"]["key"]))
    record = json.loads((brought / "base.json").read_text())
    assert record["model_type"] == family and record["license"] == (
        "mit" if family == "gpt2" else "apache-2.0"
    )
    assert str(base) not in (brought / "base.json").read_text()  # no local path in the artifact

    # pack used the base's own tokenizer: its vocabulary, its eos after every document
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    meta = json.loads((store.local_path(("pack", summary["pack"]["key"])) / "meta.json").read_text())
    assert meta["vocab_size"] == len(tok) and meta["eos_id"] == tok.eos_token_id
    tuned = store.local_path(("finetune", summary["finetune"]["key"]))
    adapter = json.loads((tuned / "adapter" / "adapter_config.json").read_text())
    want = ["c_attn", "c_fc", "c_proj"] if family == "gpt2" else ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]  # fmt: skip
    assert sorted(adapter["target_modules"]) == want
    assert (
        AutoTokenizer.from_pretrained(tuned / "model")(["return the sum"])["input_ids"]
        == tok(["return the sum"])["input_ids"]
    )
    lineage = json.loads((tuned / "lineage.json").read_text())
    assert lineage["base"]["step"] == "base_model" and lineage["base_model"]["source"] == str(base)
    metrics = summary["evaluate"]["stats"]["metrics"]
    assert metrics["val_bpb"] > 0 and 0 <= metrics["rougeL"] <= 1
    assert "base" in summary["evaluate"]["stats"]["baselines"]  # the model before fine-tuning

    reg = Registry(store, family)
    entry = reg.get(summary["gate"]["stats"]["version"])
    assert entry["lineage"]["base_model"]["license"] == record["license"]
    card_text = Path(reg.card_path(entry["version"])).read_text()
    assert f"license: {record['license']}" in card_text and f"Base model: `{base}`" in card_text

    reg.promote(entry["version"])  # as `llmflow models promote` would; then serve the champion
    app = create_app(
        ServeConfig(reload_interval_seconds=0), name=family, home=home,
        model_source=registry_source(family, store), feedback=FeedbackStore(str(tmp_path_factory.mktemp("fb") / "fb.db")),
        emit=lambda *a, **k: None, retrain_check=lambda: (False, "test"), device="cpu",
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
        # the chat was rendered by the model's template: its prompt is what format_prompt gives, plus bos
        rendered = format_prompt("return the sum", tokenizer=tok)
        assert chat.json()["usage"]["prompt_tokens"] == 1 + len(
            tok(rendered, add_special_tokens=False)["input_ids"]
        )


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_continued_pretraining_starts_from_the_checkpoint(bases, tmp_path_factory):
    import torch
    from safetensors.torch import load_file

    from flows.pretrain import pretrain_flow

    home = str(tmp_path_factory.getbasetemp() / "base-model-home")
    base = bases["gpt2"]
    cfg = _pipeline_cfg([f"pretrain.init_from={base}", "pretrain.max_steps=3", "pretrain.eval_every=3"])
    summary = pretrain_flow(config=cfg, home=home)
    assert list(summary) == ["ingest", "task_data", "prepare", "base_model", "pack", "pretrain"]
    store = ArtifactStore(home)
    assert store.manifest("pretrain", summary["pretrain"]["key"])["inputs"]["init"]["step"] == "base_model"
    out = store.local_path(("pretrain", summary["pretrain"]["key"]))
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["vocab_size"] == 400
    before, after = load_file(base / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all(before[k].shape == after[k].shape for k in before)  # the same model, trained on
    # a fresh model would start near ln(400) = 6.0 nats; the checkpoint's own first loss is recorded
    first = float((out / "loss.csv").read_text().splitlines()[1].split(",")[3])
    assert first == pytest.approx(_loss_of(base, store, summary["pack"]["key"]), rel=0.05)


def _loss_of(model_dir: Path, store: ArtifactStore, pack_key: str) -> float:
    """The checkpoint's loss on the first training batch, as pretraining's step 1 sees it."""
    import torch
    from transformers import AutoModelForCausalLM

    from model.data import TrainBatches

    cfg = load_config("smoke").pretrain
    data = TrainBatches(
        store.local_path(("pack", pack_key)),
        cfg.seq_len,
        cfg.batch_size,
        seed=cfg.seed,
        rank=0,
        vocab_size=400,
    )
    x, y = data.batch(0, 0)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=x).logits
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)))
