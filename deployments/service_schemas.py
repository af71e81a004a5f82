"""The JSON bodies of the service's endpoints (deployments/service.py): what /generate and
/feedback accept, validated before a request reaches the model or the feedback store."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmflow.config import MAX_SEED


class GenerateRequest(BaseModel):
    # NaN and infinity are refused like any other out-of-range number
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = Field(min_length=1, description="The user's message (the chat format is applied).")
    system: str | None = Field(default=None, description="Optional system message.")
    max_new_tokens: int | None = Field(default=None, ge=1, description="Up to the service's limit.")
    temperature: float = Field(default=0.0, ge=0.0, le=5.0, description="0 = greedy.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1, le=10_000)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    mbr_samples: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="With temperature 0: minimum Bayes risk decoding over the greedy answer and N "
        "samples; default: the service's `serve.mbr_samples`.",
    )
    copy_bias: float | None = Field(
        default=None,
        ge=0.0,
        le=20.0,
        description="Added to the logits of the prompt's own tokens; default: the service's `serve.copy_bias`.",
    )


class GenerateResponse(BaseModel):
    id: str
    text: str
    model_version: str


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    generation_id: str | None = Field(default=None, description="The `id` /generate returned.")
    prompt: str | None = Field(default=None, min_length=1, description="Without generation_id.")
    response: str | None = Field(default=None, description="The answer rated (without generation_id).")
    model_version: str | None = Field(default=None, min_length=1, max_length=200)
    rating: int | None = Field(default=None, description="thumbs: -1, 0, 1; stars: 1..5.")
    scale: Literal["thumbs", "stars"] = "thumbs"
    correction: str | None = Field(default=None, min_length=1, description="A better answer.")
    preferred: str | None = Field(default=None, min_length=1, description="The answer preferred.")

    @model_validator(mode="after")
    def _complete(self) -> FeedbackRequest:
        if self.rating is None and self.correction is None and self.preferred is None:
            raise ValueError("give a rating, a correction or a preferred response")
        if self.rating is not None:
            lo, hi = (-1, 1) if self.scale == "thumbs" else (1, 5)
            if not lo <= self.rating <= hi:
                raise ValueError(f"a {self.scale} rating is between {lo} and {hi}, got {self.rating}")
        if self.generation_id is None and (
            self.prompt is None or self.response is None or self.model_version is None
        ):
            raise ValueError("give generation_id, or prompt, response and model_version")
        return self
