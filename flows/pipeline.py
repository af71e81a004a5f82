"""The end-to-end pipeline, composed exactly as DESIGN.md draws it.

sources -> ingest -> prepare -> tokenizer -> pack -> pretrain -> finetune -> evaluate -> gate

A base model brought from elsewhere (`finetune.base`, `pretrain.init_from`) is checked before any
step runs (tasks/base_model.py `preflight`) and becomes the `base_model` step, whose tokenizer
replaces the trained one: with `finetune.base` it is the model fine-tuned (no tokenizer, no
pretrain step), with `pretrain.init_from` the model pretraining continues from.

Each step is a cached Prefect task (tasks/); this module only wires their inputs. A failed gate
raises `GateFailed` after every artifact is written, so the flow run ends Failed. `compose`
stops after the step named by `until`, which is how the per-step flows (data, pretrain, ...)
reuse the same wiring: the steps upstream of the target are cache hits when unchanged. With
MLflow tracking configured, the run is an MLflow run with a nested run per step that ran.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.fanout import check_runner
from flows.prepare import prepare_sharded
from flows.runner import StepRunner
from llmflow.config import PipelineConfig
from llmflow.mlflow_tracking import track
from llmflow.registry import Registry
from llmflow.store import ArtifactStore, StepRef
from tasks.base_model import base_model, preflight
from tasks.evaluate import evaluate
from tasks.finetune import finetune
from tasks.gate import gate, raise_if_failed
from tasks.ingest import ingest, ingest_extra
from tasks.pack import pack
from tasks.pretrain import pretrain
from tasks.task_data import build_task_data, task_extra
from tasks.tokenizer import train_tokenizer

STEPS = ["ingest", "task_data", "prepare", "tokenizer", "pack", "pretrain", "finetune", "evaluate", "gate"]


def _stop_after(until: str, config: PipelineConfig) -> str:
    """The step a flow meant to stop at `until` stops after: with a base model brought in no
    tokenizer is trained (base_model stands in), and with finetune.base nothing is pretrained."""
    if until == "tokenizer" and config.base_model() is not None:
        return "base_model"
    if until == "pretrain" and config.finetune.base:
        return "pack"
    return until


def compose(
    config: PipelineConfig, until: str = "gate", force: bool = False, home: str | None = None
) -> dict[str, Any]:
    if until not in STEPS and until != "base_model":
        raise ValueError(f"unknown step {until!r}; steps are {', '.join(STEPS)}")
    brought = preflight(config)  # a base model that cannot be used fails here, before any work
    if until not in STEPS or STEPS.index(until) >= STEPS.index("prepare"):
        check_runner(config.runner)  # an unreachable Dask scheduler: one line, before any work
    skip_pretrain = config.finetune.base is not None
    with track(config, home, until, **tracking_context()) as tracker:  # MLflow, when configured
        run = StepRunner(
            home=home,
            force=force,
            until=_stop_after(until, config),
            tracker=tracker,
            dashboard=config.dashboard,
            runner=config.runner,
        )
        # Source files and erasure requests change under an unchanged config: both join the key.
        docs = run(ingest, config.ingest, extra=ingest_extra(config.ingest, home))
        task = run(build_task_data, config.task_data, extra=task_extra(config.task_data, home))
        data = prepare_sharded(run, config.prepare, docs, task, config.name)  # shards mapped in parallel
        hub = run(base_model, brought[0], extra=brought[1]) if brought else None
        tok = hub or run(train_tokenizer, config.tokenizer, data=data)
        shards = run(pack, config.pack, data=data, tokenizer=tok)
        base = (
            hub
            if skip_pretrain
            else run(pretrain, config.pretrain, shards=shards, tokenizer=tok, **_init(hub))
        )
        tuned = run(finetune, config.finetune, base=base, task=task)
        report = run(
            evaluate,
            config.evaluate,
            model=tuned,
            base=base,
            shards=shards,
            task=task,
            extra={"name": config.name},
        )
        decision = run(
            gate,
            config.gate,
            eval=report,
            model=tuned,
            extra={"name": config.name, "champion": _challenged_champion(config.name, tuned, home)},
        )
        raise_if_failed(decision, run.summary())  # a failed gate fails the run, artifacts kept
        return run.summary()


def tracking_context() -> dict[str, Any]:
    """The run's logger and Prefect flow run, for MLflow (a warning lands in the run's logs)."""
    from prefect.context import FlowRunContext
    from prefect.logging import get_run_logger

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return {}
    return {"logger": get_run_logger(), "tags": {"prefect.flow_run_id": str(ctx.flow_run.id)}}


def _init(hub: StepRef | None) -> dict[str, StepRef]:
    """pretrain's extra input: the checkpoint it continues (pretrain.init_from)."""
    return {} if hub is None else {"init": hub}


def _challenged_champion(name: str, tuned: StepRef | None, home: str | None) -> str | None:
    """The champion version the gate compares against; part of the gate's key, so a new champion
    re-runs the gate. A model gated against itself is judged on values alone, hence None, and so
    is one gated against an erased champion (trained on data that must go: no standard to keep)."""
    if tuned is None:
        return None
    champion = Registry(ArtifactStore(home), name).champion()
    if champion is None or champion.get("finetune_key") == tuned.key or champion.get("erased"):
        return None
    return champion["version"]


@flow(name="pipeline", description="Raw text to an evaluated, gated model: every step, cached.")
def pipeline(
    config: PipelineConfig = PipelineConfig(), force: bool = False, home: str | None = None
) -> dict[str, Any]:
    return compose(config, "gate", force, home)
