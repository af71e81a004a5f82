"""The feedback loop: fine-tune on served feedback, evaluate, gate, promote, close the retrain.

    base model (cached pipeline up to pretrain) ─┐
    feedback export (sft.jsonl, preferences.jsonl) ─▶ feedback_data ─▶ finetune ─▶ [feedback_dpo]
                                                         ─▶ evaluate ─▶ gate ─▶ champion?

The `finetune` deployment runs this flow. Its trigger (deployments/serve.py) fills `sft_path`,
`preferences_path` and `retrain_id` from the `llmflow.feedback.threshold_reached` event the
service emits; started by hand without them, it fine-tunes on the task data alone. The held-out
splits stay the task's own, so the gate compares the candidate with the champion on the same
items. The retrain the service claimed ends here: `done` when the gate passed, `failed` when it
failed or the flow raised. Its feedback stays taken either way, so a failed gate does not
start the same retrain again; only new feedback, after the cooldown, does.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.pipeline import compose
from flows.runner import StepRunner
from llmflow.config import PipelineConfig
from llmflow.feedback import FeedbackStore
from llmflow.registry import Registry
from llmflow.store import ArtifactStore, StepRef
from tasks.evaluate import evaluate
from tasks.feedback import FeedbackTuning, feedback_data, feedback_dpo
from tasks.feedback import fingerprint as feedback_fingerprint
from tasks.finetune import finetune
from tasks.gate import gate


def finetune_on_feedback(
    config: PipelineConfig,
    sft_path: str | None = None,
    preferences_path: str | None = None,
    tuning: FeedbackTuning | None = None,
    force: bool = False,
    home: str | None = None,
) -> dict[str, Any]:
    """Compose the steps (inside a flow). `force` recomputes from the feedback data on; the data
    and the base model upstream are the pipeline's cached artifacts."""
    tuning = tuning or FeedbackTuning()
    upstream = {k: StepRef(**v) for k, v in compose(config, "pretrain", False, home).items()}
    run = StepRunner(home=home, force=force)
    base, shards, task = upstream["pretrain"], upstream["pack"], upstream["task_data"]
    if sft_path or preferences_path:
        task = run(
            feedback_data,
            {"sft_path": sft_path, "preferences_path": preferences_path, "repeat": tuning.repeat},
            extra=feedback_fingerprint(sft_path, preferences_path),
            task=upstream["task_data"],
        )
    tuned = run(finetune, config.finetune, base=base, task=task)
    pairs = task.stats.get("preference_pairs", 0) if task.step == "feedback_data" else 0
    if tuning.dpo and pairs >= tuning.min_pairs:
        if config.finetune.method == "prompt":
            get_run_logger().warning("DPO needs a LoRA or full fine-tune, not prompt tuning: skipped")
        else:
            tuned = run(feedback_dpo, config.finetune, model=tuned, task=task)
    report = run(evaluate, config.evaluate, model=tuned, base=base, shards=shards, task=task)
    champion = Registry(ArtifactStore(home), config.name).champion()
    run(
        gate,
        config.gate,
        eval=report,
        model=tuned,
        extra={"name": config.name, "champion": champion["version"] if champion else None},
    )
    return {**{k: v.model_dump(mode="json") for k, v in upstream.items()}, **run.summary()}


@flow(
    name="feedback-finetune",
    description="Fine-tune on served feedback (corrections, preference pairs), evaluate, gate, promote.",
)
def feedback_finetune(
    config: PipelineConfig = PipelineConfig(),
    sft_path: str | None = None,
    preferences_path: str | None = None,
    retrain_id: int | None = None,
    tuning: FeedbackTuning = FeedbackTuning(),
    force: bool = False,
    home: str | None = None,
) -> dict[str, Any]:
    logger = get_run_logger()
    store = FeedbackStore(config.serve.feedback_url, home=home) if retrain_id is not None else None
    try:
        summary = finetune_on_feedback(config, sft_path, preferences_path, tuning, force, home)
    except BaseException as e:
        if store is not None:
            store.finish_retrain(retrain_id, "failed", note=f"the flow failed: {type(e).__name__}: {e}")
            store.close()
        raise
    decision = summary["gate"]["stats"]
    if store is not None:
        if decision["passed"]:
            note = f"gate passed: version {decision['version']}" + (
                " promoted" if decision["promoted"] else ""
            )
            store.finish_retrain(retrain_id, "done", note=note)
        else:
            store.finish_retrain(retrain_id, "failed", note="gate failed: " + "; ".join(decision["reasons"]))
        store.close()
    logger.info(
        "retrain %s: gate %s, version %s%s",
        retrain_id,
        "passed" if decision["passed"] else "failed",
        decision["version"],
        " promoted to champion" if decision["promoted"] else "",
    )
    return summary
