"""Sections of evaluate and of the promotion gate (its thresholds and reference points)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmflow.config.base import (
    MAX_BATCH,
    MAX_ITEMS,
    MAX_SEED,
    MbrEvidenceSettings,
    Section,
)


class EvaluateConfig(MbrEvidenceSettings):
    """Held-out evaluation of the fine-tuned model (see tasks/evaluate.py)."""

    max_samples: int = Field(
        default=200, ge=1, le=MAX_ITEMS, description="Test examples to generate for (the first N)."
    )
    max_new_tokens: int = Field(default=32, ge=1, le=1024)
    mbr_samples: int = Field(
        default=0,
        ge=0,
        le=256,
        description="0 = greedy answers; N > 0 = minimum Bayes risk decoding (model/mbr.py): each answer "
        "is the one among the greedy answer and N samples that agrees most with the others (ROUGE-L). "
        "The model before fine-tuning is decoded the same way.",
    )
    mbr_temperature: float = Field(default=0.8, gt=0.0, le=5.0, description="Sampling temperature for MBR.")
    copy_bias: float = Field(
        default=0.0,
        ge=0.0,
        le=20.0,
        description="Added to the logits of the prompt's own tokens in every decoding (model.generate."
        "CopyBias): the answer leans toward the prompt's words. 0 = off. The model before "
        "fine-tuning is decoded the same way.",
    )
    batch_size: int = Field(default=16, ge=1, le=MAX_BATCH, description="Generation and scoring batch size.")
    bpb_batches: int = Field(
        default=16, ge=1, le=MAX_ITEMS, description="Validation batches for bits per byte."
    )
    bpb_seq_len: int = Field(
        default=256, ge=8, le=32_768, description="Window for bits per byte (capped by the model)."
    )
    bootstrap: int = Field(
        default=1000, ge=0, le=100_000, description="Bootstrap resamples for 95% CIs (0 = none)."
    )
    baselines: bool = Field(
        default=True,
        description="Also score the model before fine-tuning and the task's trivial baselines on the "
        "same items, and the unigram language model's bits per byte (the gate's reference points).",
    )
    retrieval_baseline: bool = Field(
        default=False,
        description="Also score `nearest_train`: the response of the train item whose prompt is most "
        "similar (TF-IDF), an answer that needs no model. A reference point like the others: the "
        "gate compares against it unless gate.beat_baselines leaves it out.",
    )
    bias: bool = Field(default=True, description="Run the bias and fairness suite.")
    counterfactual_samples: int = Field(
        default=32,
        ge=0,
        le=MAX_ITEMS,
        description="Test prompts re-asked with swapped names/pronouns/groups (0 = off).",
    )
    toxicity_threshold: float = Field(
        default=0.0, ge=0, le=1, description="A generation whose toxicity score exceeds this is toxic."
    )
    seed: int = Field(default=1234, ge=0, le=MAX_SEED)


class Threshold(Section):
    metric: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError(f"threshold for {self.metric!r} needs min or max")
        return self


class ChangeThreshold(Section):
    """A bound on the change from the champion, with TFX model-validation semantics on the measured
    values: diff = challenger - champion; relative = diff / champion.

    higher_is_better passes when diff >= absolute and relative >= relative; lower_is_better when
    diff <= absolute and relative <= relative. So a negative `absolute` on a higher-is-better
    metric is the drop allowed (-0.01: at most 0.01 worse), a positive one a required gain.
    """

    metric: str
    direction: Literal["higher_is_better", "lower_is_better"] = "higher_is_better"
    absolute: float | None = Field(
        default=None, description="Bound on diff (TFX GenericChangeThreshold.absolute)."
    )
    relative: float | None = Field(default=None, description="Bound on diff / champion (TFX .relative).")

    @model_validator(mode="after")
    def _one_bound(self) -> ChangeThreshold:
        if self.absolute is None and self.relative is None:
            raise ValueError(f"change threshold for {self.metric!r} needs absolute or relative")
        return self


class NonInferiority(Section):
    """Non-inferiority to the champion by a one-sided paired bootstrap on per-sample scores (paired
    by item id): passes when, at `confidence`, the challenger is at most `margin` worse."""

    metric: str = Field(default="rougeL", description="A per-sample metric (ROUGE, exact_match, f1).")
    margin: float = Field(ge=0, description="The largest drop tolerated (0 = must be at least as good).")
    confidence: float = Field(default=0.95, gt=0.5, lt=1)


class GateConfig(Section):
    """The promotion gate (see tasks/gate.py and the README's gate section).

    A candidate must beat the reference points that need no tuning on the same held-out items
    (the model before fine-tuning, the task's trivial baselines, the unigram language model),
    pass the value thresholds, and, when there is a champion, the change thresholds and
    non-inferiority tests against it.
    """

    value_thresholds: list[Threshold] = Field(
        default_factory=list, description="Bounds on the candidate's own metrics (min and/or max)."
    )
    change_thresholds: list[ChangeThreshold] = Field(
        default_factory=lambda: [ChangeThreshold(metric="rougeL", absolute=-0.01)],
        description="Bounds on diff = challenger - champion (TFX semantics, measured values).",
    )
    noninferiority: list[NonInferiority] = Field(
        default_factory=list, description="Paired-bootstrap non-inferiority tests against the champion."
    )
    task_metric: str = Field(
        default="rougeL", description="The per-sample metric on which the reference points must be beaten."
    )
    beat_base: bool = Field(
        default=True, description="Fine-tuning must help: beat the model before fine-tuning."
    )
    beat_baselines: list[str] | None = Field(
        default=None,
        description="Trivial baselines to beat (constant, first_sentence, name_words, and "
        "nearest_train with evaluate.retrieval_baseline); None = every baseline evaluated, [] = none.",
    )
    beat_unigram_bpb: bool = Field(
        default=True, description="val_bpb must be below the unigram model's (context was learned)."
    )
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1, description="One-sided confidence of the paired bootstrap tests."
    )
    min_gain: float = Field(
        default=0.0,
        ge=0,
        description="The lower confidence bound of the gain over each reference point must exceed this.",
    )
    bootstrap: int = Field(default=1000, ge=100, le=100_000, description="Paired bootstrap resamples.")
    promote: bool = Field(default=True, description="Promote to champion when the gate passes.")
    seed: int = Field(default=1234, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _something_to_check(self) -> GateConfig:
        first_model_checks = (
            self.value_thresholds or self.beat_base or self.beat_baselines != [] or self.beat_unigram_bpb
        )
        if not first_model_checks:
            raise ValueError(
                "the gate has nothing to check for a first model: set value_thresholds or a reference "
                "point (beat_base, beat_baselines, beat_unigram_bpb)"
            )
        return self
