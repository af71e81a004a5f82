"""The serving endpoint and the feedback loop's section."""

from __future__ import annotations

from pydantic import Field

from llmflow.config.base import (
    MbrEvidenceSettings,
)


class ServeConfig(MbrEvidenceSettings):
    """The serving endpoint and the feedback loop (deployments/service.py, deployments/feedback.py).

    Secrets and addresses can come from the environment instead (LLMFLOW_SERVE_TOKEN,
    LLMFLOW_FEEDBACK_URL, LLMFLOW_GATE_FAILED_NOTIFY), which keeps them out of presets and Prefect
    parameter forms.
    """

    host: str = Field(
        default="127.0.0.1",
        description="Address to bind; anything but loopback (0.0.0.0 in a container) needs a token.",
    )
    port: int = Field(default=8000, ge=1, le=65_535)
    token: str | None = Field(
        default=None,
        description="Bearer token required by /generate, /feedback and /model (None = open, allowed on "
        "loopback only). LLMFLOW_SERVE_TOKEN overrides it.",
    )
    max_prompt_chars: int = Field(default=4000, ge=1, le=1_000_000, description="Longer prompts get 413.")
    max_feedback_chars: int = Field(
        default=8000, ge=1, le=1_000_000, description="Limit for a correction or preferred answer (413)."
    )
    max_body_bytes: int = Field(default=262_144, ge=1024, description="Larger request bodies get 413.")
    feedback_per_minute: float | None = Field(
        default=60.0,
        gt=0,
        description="Feedback requests one client may send per minute, after its burst (None = no "
        "limit); more get 429 with Retry-After. A client is its remote address and bearer token.",
    )
    feedback_burst: int = Field(
        default=20, ge=1, description="Feedback requests one client may send at once before the rate applies."
    )
    max_new_tokens: int = Field(default=256, ge=1, le=8192, description="Largest max_new_tokens accepted.")
    default_new_tokens: int = Field(default=64, ge=1, le=8192, description="When a request names none.")
    mbr_samples: int = Field(
        default=0,
        ge=0,
        le=64,
        description="POST /generate with temperature 0: minimum Bayes risk decoding over the greedy answer "
        "and N samples (model/mbr.py), the decoding `evaluate.mbr_samples` measures; 0 = greedy. "
        "A request's `mbr_samples` overrides it. The /v1 API decodes as OpenAI's parameters say.",
    )
    copy_bias: float = Field(
        default=0.0,
        ge=0.0,
        le=20.0,
        description="POST /generate: added to the logits of the prompt's own tokens (model.generate."
        "CopyBias), the decoding `evaluate.copy_bias` measures; 0 = off. A request's `copy_bias` "
        "overrides it. The /v1 API decodes as OpenAI's parameters say.",
    )
    max_batch_size: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Concurrent /v1 requests generated together in one batch (1 = one at a time).",
    )
    batch_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="How long a /v1 request waits for others to share its batch when the model is idle.",
    )
    feedback_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the feedback store (postgresql://... or sqlite:///...); None = "
        "SQLite in WAL mode at $LLMFLOW_HOME/feedback/feedback.db. LLMFLOW_FEEDBACK_URL overrides it.",
    )
    threshold_count: int | None = Field(
        default=100, ge=1, description="Retrain after this many feedback items since the last retrain."
    )
    threshold_negative_rate: float | None = Field(
        default=0.3, gt=0, le=1, description="Retrain when this share of new ratings is negative."
    )
    min_ratings_for_rate: int = Field(
        default=20, ge=1, description="The negative rate counts only over at least this many ratings."
    )
    cooldown_seconds: float = Field(default=3600.0, ge=0, description="Least time between two retrains.")
    retrain_timeout_seconds: float = Field(
        default=6 * 3600.0, gt=0, description="A retrain pending longer than this is considered abandoned."
    )
    reload_interval_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How often to ask the registry for a new champion (0 = every request).",
    )
    retrain_check_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How often to re-check that the Prefect server at PREFECT_API_URL has the automation "
        "that runs `finetune` on this model's feedback event; without it no retrain is claimed.",
    )
    gate_failed_notify: str | None = Field(
        default=None,
        description="Where the automation on llmflow.gate.failed notifies: an http(s) webhook URL "
        "(JSON POST) or a Prefect notification block as '<block-type>/<block-name>', e.g. "
        "'slack-webhook/ops'; None = it only records the event. LLMFLOW_GATE_FAILED_NOTIFY overrides it.",
    )
