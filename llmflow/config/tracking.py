"""Where runs are tracked besides the artifact store: an MLflow server (llmflow/mlflow_tracking.py).

No step's key hashes this section: pointing a run at MLflow, or at another MLflow, recomputes
nothing.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from llmflow.config.base import Section

MLFLOW_SCHEMES = ("http://", "https://", "file:", "databricks")


class TrackingConfig(Section):
    """MLflow tracking: one MLflow run per pipeline run, one nested run per step that ran, and the
    registry mirrored as MLflow model versions. Needs `pip install llmflow[mlflow]`."""

    mlflow_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI (http://127.0.0.1:5000); None = MLFLOW_TRACKING_URI, and "
        "without either nothing is tracked and MLflow is not imported.",
    )
    mlflow_experiment: str = Field(
        default="llmflow",
        min_length=1,
        max_length=200,
        description="MLflow experiment the pipeline runs go to (created when missing).",
    )

    @field_validator("mlflow_uri")
    @classmethod
    def _a_uri(cls, v: str | None) -> str | None:
        if v and not v.startswith(MLFLOW_SCHEMES):
            raise ValueError(f"{v!r} is not an MLflow tracking URI: start it with http://, https:// or file:")
        return v or None
