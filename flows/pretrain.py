"""Pretraining flow: data -> tokenizer -> pack -> pretrain (the base model)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.pipeline import compose
from llmflow.config import PipelineConfig


@flow(name="tokenizer", description="Train the tokenizer on the prepared data.")
def tokenizer_flow(
    config: PipelineConfig = PipelineConfig(), force: bool = False, home: str | None = None
) -> dict[str, Any]:
    return compose(config, "tokenizer", force, home)


@flow(name="pretrain", description="Pretrain the base model on packed token shards.")
def pretrain_flow(
    config: PipelineConfig = PipelineConfig(), force: bool = False, home: str | None = None
) -> dict[str, Any]:
    return compose(config, "pretrain", force, home)
