"""The pipeline configuration: one pydantic model per step, composed into `PipelineConfig`.

Configs are data, validated once at the edge (YAML preset + `--set a.b=c` overrides, or the
typed parameter form of a Prefect deployment). Every model forbids unknown keys so a typo is an
error that names the key, never a silently ignored setting. A step's store key hashes its own
section only, so changing one step's settings recomputes that step and what depends on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from llmflow.config.base import (
    MAX_BATCH,
    MAX_ITEMS,
    MAX_PROCESSES,
    MAX_SECONDS,
    MAX_SEED,
    MAX_STEPS,
    MAX_TOKENS,
    Section,
)
from llmflow.config.data import (
    DecontaminateConfig,
    DedupConfig,
    IngestConfig,
    LangIdConfig,
    MinHashConfig,
    NormalizeConfig,
    PackConfig,
    PiiConfig,
    PrepareConfig,
    QualityConfig,
    SourceConfig,
    TaskDataConfig,
    TokenizerConfig,
    ToxicityConfig,
)
from llmflow.config.evaluation import ChangeThreshold, EvaluateConfig, GateConfig, NonInferiority, Threshold
from llmflow.config.runner import DaskConfig, RunnerConfig
from llmflow.config.serving import ServeConfig
from llmflow.config.tracking import TrackingConfig
from llmflow.config.training import (
    BaseModelConfig,
    DashboardConfig,
    DPOConfig,
    FinetuneConfig,
    PretrainConfig,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

__all__ = [
    "MAX_BATCH", "MAX_ITEMS", "MAX_PROCESSES", "MAX_SECONDS", "MAX_SEED", "MAX_STEPS", "MAX_TOKENS",
    "BaseModelConfig", "ChangeThreshold", "ConfigError", "DPOConfig", "DashboardConfig", "DaskConfig", "DecontaminateConfig", "DedupConfig", "EvaluateConfig",
    "FinetuneConfig", "GateConfig", "IngestConfig", "InputError", "LangIdConfig", "MinHashConfig",
    "NonInferiority", "NormalizeConfig", "PackConfig", "PiiConfig", "PipelineConfig", "PrepareConfig",
    "PretrainConfig", "QualityConfig", "RunnerConfig", "Section", "ServeConfig", "SourceConfig", "TaskDataConfig",
    "Threshold", "TokenizerConfig", "ToxicityConfig", "TrackingConfig", "apply_overrides", "canonical_json",
    "load_config", "parse_override", "resolve_preset",
]  # fmt: skip


class PipelineConfig(Section):
    """The whole pipeline. Each section configures one step."""

    name: str = Field(default="llmflow", description="Run name, used for the registry's model name.")
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    task_data: TaskDataConfig = Field(default_factory=TaskDataConfig)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    pack: PackConfig = Field(default_factory=PackConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    runner: RunnerConfig = Field(
        default_factory=RunnerConfig, description="Where the data flow's per-shard tasks run."
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)

    @model_validator(mode="after")
    def _one_base(self) -> PipelineConfig:
        if self.pretrain.init_from and self.finetune.base:
            raise ValueError(
                "set pretrain.init_from (continue pretraining a checkpoint) or finetune.base "
                "(fine-tune it without pretraining), not both"
            )
        return self

    def base_model(self) -> BaseModelConfig | None:
        """The `base_model` step's section: the checkpoint named by finetune.base or pretrain.init_from."""
        source = self.finetune.base or self.pretrain.init_from
        return BaseModelConfig(source=source) if source else None


# --------------------------------------------------------------------------- loading


class ConfigError(ValueError):
    """A bad config: the message is one line that names the key."""


class InputError(ValueError):
    """The config is valid but what it points at cannot be used: a source path that does not
    exist, a source whose every record is rejected, checkpoints of which none loads. The message
    is one line naming the input and what to change. Trying again fails the same way, so a step
    that raises it is not retried, and `llmflow` exits with code 2 as for a bad config."""


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{loc}'"
    if not first["loc"] and first["type"] == "value_error":  # a rule across sections says it all
        return str(first["msg"]).removeprefix("Value error, ")
    return f"invalid value for '{loc}': {first['msg']}"


def resolve_preset(name_or_path: str | os.PathLike[str]) -> Path:
    """A preset name (`demo`) or a YAML path."""
    p = Path(name_or_path)
    if p.suffix in {".yaml", ".yml"} or p.exists():
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        if p.is_dir():
            raise ConfigError(f"config {p} is a folder: name a YAML file or a preset ({_known_presets()})")
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        raise ConfigError(f"unknown preset '{name_or_path}' ({_known_presets()})")
    return candidate


def _known_presets() -> str:
    return "known: " + ", ".join(sorted(q.stem for q in CONFIG_DIR.glob("*.yaml")))


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (['a','b'], parsed c). Values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                try:
                    node = node[int(part)]
                    continue
                except (ValueError, IndexError):
                    raise ConfigError(f"bad list index '{part}' in override '{item}'") from None
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict | list):
                raise ConfigError(
                    f"'{'.'.join(path[: i + 1])}' is a value, not a section (override '{item}')"
                )
            node = nxt
        if isinstance(node, list):
            try:
                node[int(path[-1])] = value
            except (ValueError, IndexError):
                raise ConfigError(f"bad list index '{path[-1]}' in override '{item}'") from None
        else:
            node[path[-1]] = value
    return data


def load_config(
    preset: str | os.PathLike[str] | None = None, overrides: list[str] | None = None
) -> PipelineConfig:
    """Load a preset (name or YAML path), apply `a.b=c` overrides, validate. Raises ConfigError."""
    data: dict[str, Any] = {}
    if preset is not None:
        path = resolve_preset(preset)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a YAML file (not UTF-8 text)") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded
    data = apply_overrides(data, overrides or [])
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e)) from None


def canonical_json(obj: Any) -> str:
    """Stable JSON for hashing: sorted keys, no whitespace, pydantic models dumped first."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
