"""The feedback loop: fine-tune on served feedback, evaluate, gate, promote, close the retrain.

    base model (cached pipeline up to pretrain) ─┐
    feedback export (sft.jsonl, preferences.jsonl) ─▶ feedback_data ─▶ finetune ─▶ [feedback_dpo]
                                                         ─▶ evaluate ─▶ gate ─▶ champion?

The `finetune` deployment runs this flow. Its trigger (deployments/serve.py) fills `sft_path`,
`preferences_path` and `retrain_id` from the `llmflow.feedback.threshold_reached` event the
service emits; started by hand without them, it fine-tunes on the task data alone. The held-out
splits stay the task's own, so the gate compares the candidate with the champion on the same
items, and feedback that overlaps them is rejected with the check `prepare` uses
(`prepare.decontaminate`; tasks/feedback.py). The retrain the service claimed ends here: `done`
when the gate passed; `failed`, with the champion left serving, when the gate failed or anything
raised, and then the flow run ends Failed. Its feedback stays taken either way, so a failed
gate does not start the same retrain again; only new feedback, after the cooldown, does.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow, get_run_logger

from flows.pipeline import compose, tracking_context
from flows.runner import StepRunner
from llmflow.config import PipelineConfig
from llmflow.feedback import FeedbackStore
from llmflow.mlflow_tracking import track
from llmflow.registry import Registry
from llmflow.store import ArtifactStore, StepRef
from tasks.evaluate import evaluate
from tasks.feedback import FeedbackTuning, feedback_data, feedback_dpo
from tasks.feedback import fingerprint as feedback_fingerprint
from tasks.finetune import finetune
from tasks.gate import GateFailed, gate, raise_if_failed


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
    with track(config, home, "feedback", **tracking_context()) as tracker:  # one MLflow run, when configured
        upstream = {k: StepRef(**v) for k, v in compose(config, "pretrain", False, home).items()}
        run = StepRunner(home=home, force=force, tracker=tracker, dashboard=config.dashboard)
        base = upstream.get("pretrain") or upstream["base_model"]  # finetune.base: no pretrain step
        shards, task = upstream["pack"], upstream["task_data"]
        if sft_path or preferences_path:
            task = run(
                feedback_data,
                {
                    "sft_path": sft_path,
                    "preferences_path": preferences_path,
                    "repeat": tuning.repeat,
                    "decontaminate": config.prepare.decontaminate.model_dump(mode="json"),
                },
                extra=feedback_fingerprint(sft_path, preferences_path),
                task=upstream["task_data"],
            )
            if task.stats.get("rejected"):
                get_run_logger().warning(
                    "feedback: %s items rejected %s (see rejects.jsonl of feedback_data %s)",
                    task.stats["rejected"],
                    task.stats["rejects_by_reason"],
                    task.key[:12],
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
        try:
            summary = finetune_on_feedback(config, sft_path, preferences_path, tuning, force, home)
            decision = summary["gate"]["stats"]
            raise_if_failed(StepRef(**summary["gate"]), summary)
        except BaseException as e:  # the gate task raising lands here too: the champion stays
            note = str(e) if isinstance(e, GateFailed) else f"the flow failed: {type(e).__name__}: {e}"
            _finish(store, retrain_id, "failed", note, logger)
            raise
        note = f"gate passed: version {decision['version']}" + (" promoted" if decision["promoted"] else "")
        _finish(store, retrain_id, "done", note, logger)
    finally:
        if store is not None:
            store.close()
    logger.info(
        "retrain %s: gate passed, version %s%s",
        retrain_id,
        decision["version"],
        " promoted to champion" if decision["promoted"] else "",
    )
    return summary


def _finish(
    store: FeedbackStore | None, retrain_id: int | None, status: str, note: str, logger: logging.LoggerAdapter
) -> None:
    """Close the claimed retrain; a store that cannot be written must not hide the run's outcome."""
    if store is None:
        return
    try:
        store.finish_retrain(retrain_id, status, note=note)
    except Exception as e:  # the retrain then ends by its timeout; the run's own state still tells
        logger.error("could not mark retrain %s %s: %s", retrain_id, status, e)
