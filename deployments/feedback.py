"""Moved to `llmflow/feedback.py` (flows read the store too, and flows may not import deployments/)."""

from llmflow.feedback import (  # noqa: F401
    EXPORT_STEP,
    EXPORT_VERSION,
    SCALES,
    FeedbackStore,
    ThresholdPolicy,
    normalize_rating,
    resolve_url,
)
