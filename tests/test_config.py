"""Config validation: presets, overrides, and one-line errors that name the key."""

from __future__ import annotations

import pytest

from llmflow.config import CONFIG_DIR, ConfigError, PipelineConfig, load_config


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_preset_validates(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, PipelineConfig)


def test_overrides_are_typed():
    cfg = load_config(
        "smoke", ["pretrain.max_steps=7", "tokenizer.model_type=unigram", "prepare.quality.enabled=false"]
    )
    assert cfg.pretrain.max_steps == 7
    assert cfg.tokenizer.model_type == "unigram"
    assert cfg.prepare.quality.enabled is False


def test_override_list_and_list_index():
    cfg = load_config("smoke", ["finetune.target_modules=[q_proj,v_proj]", "ingest.sources.0.license=MIT"])
    assert cfg.finetune.target_modules == ["q_proj", "v_proj"]
    assert cfg.ingest.sources[0].license == "MIT"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("pretrain.max_stepz=3", "unknown config key 'pretrain.max_stepz'"),
        ("bogus.key=1", "unknown config key 'bogus'"),
        ("pretrain.max_steps=-1", "invalid value for 'pretrain.max_steps'"),
        ("pretrain.max_steps=many", "invalid value for 'pretrain.max_steps'"),
        ("tokenizer.model_type=wordpiece", "invalid value for 'tokenizer.model_type'"),
        ("noequals", "not of the form section.key=value"),
        ("pretrain.max_steps=100000000000000000000000", "less than or equal to 10000000"),
        ("finetune.max_seconds=.inf", "invalid value for 'finetune.max_seconds'"),
        ("evaluate.max_samples=1000000000000000", "invalid value for 'evaluate.max_samples'"),
        ("pretrain.seed=-1", "invalid value for 'pretrain.seed'"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_preset_and_missing_file():
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("does/not/exist.yaml")


def test_a_folder_or_a_binary_file_as_config_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="is a folder: name a YAML file or a preset"):
        load_config(str(tmp_path))
    binary = tmp_path / "model.safetensors"
    binary.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ConfigError, match="not a YAML file"):
        load_config(str(binary))


def test_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("pretrain:\n  max_steps: 5\n")
    assert load_config(str(p)).pretrain.max_steps == 5
    p.write_text("pretrain: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(p))


def test_duplicate_source_names_rejected():
    with pytest.raises(ConfigError, match="ingest.sources"):
        load_config(
            None,
            [
                "ingest.sources=[{name: a, kind: text, path: x}, {name: a, kind: text, path: y}]",
            ],
        )


def test_json_schema_for_ui_forms():
    """Deployments expose these models as typed parameter forms: the schema carries descriptions and bounds."""
    schema = PipelineConfig.model_json_schema()
    pre = schema["$defs"]["PretrainConfig"]["properties"]
    assert pre["max_steps"]["minimum"] == 1 and pre["max_steps"]["maximum"] == 10_000_000
    assert "description" in pre["num_processes"]
