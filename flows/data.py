"""Data flow: ingest -> prepare (and the supervised task data)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.pipeline import compose
from llmflow.config import PipelineConfig


@flow(name="data", description="Ingest every source and prepare the training data.")
def data_flow(
    config: PipelineConfig = PipelineConfig(), force: bool = False, home: str | None = None
) -> dict[str, Any]:
    return compose(config, "prepare", force, home)
