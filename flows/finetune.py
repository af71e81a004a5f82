"""Fine-tuning flow: the base model -> finetune (LoRA / prompt tuning / full)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.pipeline import compose
from llmflow.config import PipelineConfig


@flow(name="finetune", description="Fine-tune the base model on the supervised task.")
def finetune_flow(
    config: PipelineConfig = PipelineConfig(), force: bool = False, home: str | None = None
) -> dict[str, Any]:
    return compose(config, "finetune", force, home)
