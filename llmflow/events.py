"""Event names (`llmflow.<area>.<what>`) and resource ids (`llmflow.<kind>.<name>`)."""

DATA_PREPARED = "llmflow.data.prepared"
MODEL_PRETRAINED = "llmflow.model.pretrained"
MODEL_FINETUNED = "llmflow.model.finetuned"
EVAL_COMPLETED = "llmflow.eval.completed"
GATE_PASSED = "llmflow.gate.passed"
GATE_FAILED = "llmflow.gate.failed"
MODEL_PROMOTED = "llmflow.model.promoted"
FEEDBACK_RECEIVED = "llmflow.feedback.received"
FEEDBACK_THRESHOLD_REACHED = "llmflow.feedback.threshold_reached"

ALL = [
    DATA_PREPARED,
    MODEL_PRETRAINED,
    MODEL_FINETUNED,
    EVAL_COMPLETED,
    GATE_PASSED,
    GATE_FAILED,
    MODEL_PROMOTED,
    FEEDBACK_RECEIVED,
    FEEDBACK_THRESHOLD_REACHED,
]


def resource_id(kind: str, name: str) -> str:
    return f"llmflow.{kind}.{name}"
