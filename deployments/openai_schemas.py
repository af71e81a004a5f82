"""The request bodies of the OpenAI-compatible endpoints (deployments/openai_api.py).

The fields OpenAI's API defines and this service honours, with OpenAI's defaults and bounds
(temperature 1, in [0, 2]). Fields it does not honour are refused, not ignored: an unknown one
as OpenAI refuses it, and the common ones clients send at their neutral value (`n`, the
penalties, `logprobs`, `echo`) only when they ask for something else.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmflow.config import MAX_SEED


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = Field(default=False, description="A last chunk with `usage` and no choices.")


class Sampling(BaseModel):
    """What both endpoints share."""

    # NaN and infinity are refused like any other out-of-range number
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(min_length=1, description="The served model: its name, or name:version.")
    max_tokens: int | None = Field(default=None, ge=1, description="Up to the service's limit.")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="0 = greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(
        default=None,
        validate_default=True,
        description="Up to 4 strings; the text ends before the first (a list once validated).",
    )
    n: int = Field(default=1, description="Only 1.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    user: str | None = Field(default=None, max_length=256, description="Accepted, not used.")
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, description="Only 0.")
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, description="Only 0.")
    logprobs: bool | int | None = Field(default=None, description="Not supported: null or false.")

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"must be 1, as this service returns one choice per request (got {n})")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4 or not all(stops):
            raise ValueError("up to 4 non-empty strings")
        return stops

    @field_validator("presence_penalty", "frequency_penalty", "logprobs")
    @classmethod
    def _unsupported(cls, value, info):
        if value:
            raise ValueError("not supported; leave it unset")
        return value

    @model_validator(mode="after")
    def _streamed(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self


class CompletionRequest(Sampling):
    prompt: str | list[str] = Field(description="The text to continue, as given (no chat format).")
    echo: bool = Field(default=False, description="Not supported: false.")
    suffix: str | None = Field(default=None, description="Not supported: null.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str:
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ValueError(f"one prompt per request, got {len(prompt)}")
            prompt = prompt[0]
        if not prompt:
            raise ValueError("empty")
        return prompt

    @field_validator("echo", "suffix")
    @classmethod
    def _unsupported_here(cls, value, info):
        if value:
            raise ValueError("not supported; leave it unset")
        return value


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(default=None, description="Accepted, not used.")

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, description="max_tokens' newer name.")

    @model_validator(mode="after")
    def _one_limit(self):
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        self.max_tokens = self.max_tokens or self.max_completion_tokens
        return self

    def as_chat(self) -> list[dict[str, str]]:
        """The messages for the chat template (OpenAI's `developer` is the template's `system`)."""
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in self.messages
        ]
