"""Evaluation flow: evaluate the fine-tuned model, then the promotion gate."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.pipeline import compose
from llmflow.config import PipelineConfig


@flow(name="evaluate", description="Evaluate the fine-tuned model on held-out sets.")
def evaluate_flow(
    config: PipelineConfig = PipelineConfig(), force: bool = False, home: str | None = None
) -> dict[str, Any]:
    return compose(config, "evaluate", force, home)


@flow(name="gate", description="Evaluate, then promote the model only if it beats the champion.")
def gate_flow(
    config: PipelineConfig = PipelineConfig(), force: bool = False, home: str | None = None
) -> dict[str, Any]:
    return compose(config, "gate", force, home)
