"""`llmflow models export VERSION DIR`: a folder the Hub takes as it is, loaded back with transformers."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from typer.testing import CliRunner

from deployments.cli import app
from llmflow.config import FinetuneConfig, InputError
from llmflow.export import export_version, upload_args
from llmflow.registry import Registry
from llmflow.store import ArtifactStore
from model import adapters, sft
from model.chat import CHAT_TEMPLATE, format_prompt
from tasks.model_card import render_card
from tests.helpers import task_rows, tiny_model_dir

EVALUATION = {  # the shape of evaluate's metrics.json, as the card reads it
    "metrics": {"rougeL": 0.25, "bleu": 3.5, "val_bpb": 4.4},
    "ci": {"rougeL": [0.2, 0.3], "bleu": [2.0, 5.0]},
    "n": 8,
}


def _version(home, base_dir, method: str) -> tuple[Registry, int, object]:
    """A registered version fine-tuned (two steps) with `method`, as the gate leaves one."""
    cfg = FinetuneConfig(
        method=method, max_steps=2, batch_size=4, lr=1e-2, warmup_steps=1, max_len=64, lora_r=4
    )
    result, tok, _ = sft.finetune(base_dir, task_rows(8), [], cfg)
    art = home / f"finetune-{method}"
    adapters.save_finetuned(result.model.eval(), tok, art, method, base_dir, result.stats["base_fingerprint"])
    reg = Registry(ArtifactStore(home), "tiny")
    version = reg.register(f"key-{method}", str(art / "model"), metrics=EVALUATION["metrics"])
    reg.write_card(version, render_card(reg.get(version), EVALUATION))
    return reg, version, result.model


@pytest.fixture(scope="module")
def lora(tmp_path_factory, tok_dir):
    home = tmp_path_factory.mktemp("export")
    return _version(home, tiny_model_dir(home / "base", tok_dir), "lora")


def _logits(model, tokenizer):
    ids = tokenizer(
        format_prompt("def sum(x): return the sum"), return_tensors="pt", add_special_tokens=False
    )
    with torch.no_grad():
        return model(**ids).logits


@pytest.mark.usefixtures("one_thread")
def test_an_exported_lora_version_loads_with_transformers_and_generates(lora, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reg, version, tuned = lora
    out = export_version(reg, "challenger", tmp_path / "hub")
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    } <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth"))]
    assert (out / "adapter" / "adapter_config.json").exists() and (
        out / "adapter" / "adapter_model.safetensors"
    ).exists()

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert torch.allclose(
        _logits(model, tokenizer), _logits(tuned, tokenizer), atol=1e-4
    )  # the fine-tuned weights
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "sort the items"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    generated = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] > ids["input_ids"].shape[1]

    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(out)  # the adapter attaches by its relative path
    assert isinstance(PeftModel.from_pretrained(base, out / "adapter"), PeftModel)
    assert adapters.load_finetuned(out)[0] is not None  # and llmflow's own loader reads it too


def test_the_card_metadata_parses_as_hub_model_index(lora, tmp_path):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard import metadata_load

    reg, version, _ = lora
    out = export_version(reg, version, tmp_path / "hub")
    card = ModelCard.load(out / "README.md")
    results = {(r.metric_type, r.metric_value) for r in card.data.eval_results}
    assert results == {("rougeL", 0.25), ("bleu", 3.5), ("val_bpb", 4.4)}
    assert {r.task_type for r in card.data.eval_results} == {"text-generation"}
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert metadata_load(out / "README.md")["model-index"][0]["name"] == f"tiny-v{version}"
    assert str(reg.get(version)["model_path"]) not in card.text  # points at the folder, not the store
    assert "## Files" in card.text


def test_a_prompt_tuned_version_exports_the_base_and_its_adapter(tmp_path, tok_dir):
    from peft import PeftModel

    reg, version, tuned = _version(tmp_path, tiny_model_dir(tmp_path / "base", tok_dir), "prompt")
    out = export_version(reg, version, tmp_path / "hub")
    assert json.loads((out / adapters.FINETUNE_META).read_text())["adapter"] == "adapter"
    assert not (out / "PROMPT_TUNING.md").exists()
    model, tokenizer = adapters.load_finetuned(out)
    assert isinstance(model, PeftModel)
    assert torch.allclose(_logits(model, tokenizer), _logits(tuned.eval(), tokenizer), atol=1e-6)
    assert "prompt-tuning adapter" in (out / "README.md").read_text()


def test_the_kernel_names_the_finetune_meta_file_as_model_does():
    from llmflow import export

    assert export.FINETUNE_META == adapters.FINETUNE_META


def test_export_refuses_a_folder_that_is_not_empty(lora, tmp_path):
    reg, version, _ = lora
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="is not empty"):
        export_version(reg, version, tmp_path / "hub")
    assert (tmp_path / "hub" / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["hub"]  # nothing staged left behind


def test_the_upload_arguments_fit_huggingface_hubs_upload_folder(tmp_path):
    from huggingface_hub import HfApi

    args = upload_args(tmp_path, "me/tiny", "hf_token", 3)
    bound = inspect.signature(HfApi.upload_folder).bind(None, **args)  # raises on a wrong or missing name
    assert bound.arguments["repo_id"] == "me/tiny" and bound.arguments["folder_path"] == str(tmp_path)
    assert args["repo_type"] == "model" and args["commit_message"] == "llmflow export of v3"


def _cli(*args, env=None):
    return CliRunner().invoke(app, list(args), env=env)


def test_push_without_a_token_is_one_line_before_any_work(lora, tmp_path, monkeypatch):
    reg, version, _ = lora
    home = str(reg.store.root)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored login either
    r = _cli(
        "models",
        "export",
        str(version),
        str(tmp_path / "hub"),
        "--push",
        "me/tiny",
        "--home",
        home,
        "--name",
        "tiny",
    )
    assert r.exit_code == 2, r.output
    assert "needs a Hugging Face token: set HF_TOKEN" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "hub").exists()
    r = _cli(
        "models",
        "export",
        str(version),
        str(tmp_path / "hub"),
        "--push",
        "not a repo",
        "--home",
        home,
        "--name",
        "tiny",
    )
    assert r.exit_code == 2 and "bad Hub repository 'not a repo'" in r.output


def test_push_calls_the_hub_through_huggingface_hub(lora, tmp_path, monkeypatch):
    """Offline (HF_HUB_OFFLINE=1, as the tests run) the real client refuses at its first request:
    the export is on disk and the failure is one line naming the push."""
    reg, version, _ = lora
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "hub"
    r = _cli(
        "models",
        "export",
        str(version),
        str(out),
        "--push",
        "me/tiny",
        "--home",
        str(reg.store.root),
        "--name",
        "tiny",
    )
    assert r.exit_code == 1, r.output
    assert f"Exported tiny v{version} to {out}" in r.output
    assert "push to me/tiny failed: " in r.output and "offline mode is enabled" in r.output
    assert (out / "model.safetensors").exists()


def test_export_of_an_unknown_version_is_one_line(lora, tmp_path):
    reg, _, _ = lora
    r = _cli(
        "models", "export", "v99", str(tmp_path / "hub"), "--home", str(reg.store.root), "--name", "tiny"
    )
    assert r.exit_code == 1 and "has no version 'v99'" in r.output
