"""The deployments people run from the Prefect UI, with their schedules and triggers.

    pipeline       the whole pipeline, manual
    data-refresh   the data flow, on a cron schedule (daily by default)
    retrain        the whole pipeline on a cron schedule (weekly by default); cached steps are
                   reused, so only what changed (new data, new config) is recomputed
    finetune       the feedback-finetune flow (flows/feedback.py): manual (fine-tune, evaluate,
                   gate), and triggered by `llmflow.feedback.threshold_reached` for this model,
                   the event's export paths and retrain id becoming its parameters
    evaluate       manual

The scheduled deployments (data-refresh, retrain) dedup incrementally unless the config says
otherwise (`prepare.dedup.incremental`, None by default): a refresh dedups new documents against
the index of the earlier runs, so it cannot re-admit yesterday's duplicates. A one-off run leaves
it off, so its result depends on its inputs alone, not on what ran before in the same home.

Parameters are the pydantic config models, so the UI shows typed forms and the server rejects an
invalid parameter before a run starts (`enforce_parameter_schema`). `build_deployments` makes the
objects; `serve_deployments` runs them in this process (`llmflow server`), `deploy_to_pool`
registers them for a process worker (`llmflow deploy`, the compose stack). Entrypoints are module
paths, so a worker with llmflow installed runs them without pulling code.
"""

from __future__ import annotations

import contextlib
from typing import Any

from llmflow import events
from llmflow.config import PipelineConfig

DEFAULT_RETRAIN_CRON = "0 3 * * 1"  # Mondays 03:00
DEFAULT_DATA_CRON = "0 2 * * *"  # daily 02:00


def _flows() -> dict[str, Any]:
    from flows.data import data_flow
    from flows.evaluate import evaluate_flow
    from flows.feedback import feedback_finetune
    from flows.pipeline import pipeline

    return {"pipeline": pipeline, "data": data_flow, "finetune": feedback_finetune, "evaluate": evaluate_flow}


# The event payload the service emits (deployments/service.py) -> the flow's parameters. A
# single `{{ ... }}` expression keeps its JSON type (Prefect renders it through `tojson`); the
# server merges these over the deployment's defaults (config, home).
TRIGGER_PARAMETERS = {
    "sft_path": "{{ event.payload.sft_path }}",
    "preferences_path": "{{ event.payload.preferences_path }}",
    "retrain_id": "{{ event.payload.retrain_id }}",
}


def feedback_trigger(config: PipelineConfig):
    """Run `finetune` on the feedback export when the service reports enough new feedback."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name=f"retrain {config.name} on feedback",
        expect={events.FEEDBACK_THRESHOLD_REACHED},
        match={"prefect.resource.id": events.resource_id("model", config.name)},
        threshold=1,
        parameters=dict(TRIGGER_PARAMETERS),
    )


def build_deployments(
    config: PipelineConfig | None = None,
    *,
    retrain_cron: str = DEFAULT_RETRAIN_CRON,
    data_cron: str = DEFAULT_DATA_CRON,
    timezone: str = "UTC",
    home: str | None = None,
    flows: dict[str, Any] | None = None,
) -> list[Any]:
    """The five deployments, each with `config` (as JSON) and `home` as default parameters.

    `flows` maps pipeline, data, finetune, evaluate to flow objects (default: the real ones).
    """
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import EntrypointType

    config = config or PipelineConfig()
    f = flows or _flows()
    params = {"config": config.model_dump(mode="json"), "home": home}
    common = {"parameters": params, "entrypoint_type": EntrypointType.MODULE_PATH, "tags": ["llmflow"]}
    scheduled = {**common, "parameters": {**params, "config": incremental(config).model_dump(mode="json")}}

    def cron(expr: str) -> list[Any]:
        return [CronSchedule(cron=expr, timezone=timezone)]

    return [
        f["pipeline"].to_deployment("pipeline", description="The whole pipeline, run by hand.", **common),
        f["data"].to_deployment(
            "data-refresh",
            schedules=cron(data_cron),
            description="Re-ingest and prepare the data, deduplicated against the earlier runs.",
            **scheduled,
        ),
        f["pipeline"].to_deployment(
            "retrain",
            schedules=cron(retrain_cron),
            description="Scheduled retraining: the pipeline, recomputing only what changed.",
            **scheduled,
        ),
        f["finetune"].to_deployment(
            "finetune",
            triggers=[feedback_trigger(config)],
            description="Fine-tune; also started when served feedback passes its threshold.",
            **common,
        ),
        f["evaluate"].to_deployment("evaluate", description="Evaluate the fine-tuned model.", **common),
    ]


def incremental(config: PipelineConfig) -> PipelineConfig:
    """`config` with `prepare.dedup.incremental` on where it was left unset (None)."""
    dedup = config.prepare.dedup
    if dedup.incremental is not None:
        return config
    prepare = config.prepare.model_copy(update={"dedup": dedup.model_copy(update={"incremental": True})})
    return config.model_copy(update={"prepare": prepare})


def serve_deployments(deployments: list[Any], limit: int | None = None) -> None:
    """Run the deployments from this process until SIGINT or SIGTERM (`llmflow server`).

    Both signals stop the runner the way Prefect's SIGTERM does: the flow runs in progress are
    cancelled (their processes stopped, their state Cancelled), the schedules paused, and this
    returns. Prefect's `serve` would take Ctrl-C as a crash instead, leaving the runs `Running`.
    A signal before the runner has started, or a second one, raises SystemExit.
    """
    import asyncio
    import signal

    from prefect.runner import Runner

    runner = Runner(limit=limit, pause_on_shutdown=True)
    for deployment in deployments:
        runner.add_deployment(deployment)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, lambda *_: runner.handle_sigterm())  # `start` sets SIGTERM's
    try:
        asyncio.run(runner.start())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def deploy_to_pool(deployments: list[Any], pool: str = "llmflow") -> list[Any]:
    """Register the deployments on a process work pool (created when missing) for a worker."""
    from prefect import deploy
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    return deploy(*deployments, work_pool_name=pool, build=False, push=False, print_next_steps_message=False)
