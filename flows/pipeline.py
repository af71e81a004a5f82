"""The end-to-end pipeline, composed exactly as DESIGN.md draws it.

sources -> ingest -> prepare -> tokenizer -> pack -> pretrain -> finetune -> evaluate -> gate

Each step is a cached Prefect task (tasks/); this module only wires their inputs. A failed gate
raises `GateFailed` after every artifact is written, so the flow run ends Failed. `compose`
stops after the step named by `until`, which is how the per-step flows (data, pretrain, ...)
reuse the same wiring: the steps upstream of the target are cache hits when unchanged.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.fanout import check_runner
from flows.prepare import prepare_sharded
from flows.runner import StepRunner
from llmflow.config import PipelineConfig
from llmflow.registry import Registry
from llmflow.store import ArtifactStore, StepRef
from tasks.evaluate import evaluate
from tasks.finetune import finetune
from tasks.gate import gate, raise_if_failed
from tasks.ingest import fingerprint as sources_fingerprint
from tasks.ingest import ingest
from tasks.pack import pack
from tasks.pretrain import pretrain
from tasks.task_data import build_task_data
from tasks.task_data import fingerprint as task_fingerprint
from tasks.tokenizer import train_tokenizer

STEPS = ["ingest", "task_data", "prepare", "tokenizer", "pack", "pretrain", "finetune", "evaluate", "gate"]


def compose(
    config: PipelineConfig, until: str = "gate", force: bool = False, home: str | None = None
) -> dict[str, Any]:
    if until not in STEPS:
        raise ValueError(f"unknown step {until!r}; steps are {', '.join(STEPS)}")
    if STEPS.index(until) >= STEPS.index("prepare"):
        check_runner(config.runner)  # an unreachable Dask scheduler: one line, before any work
    run = StepRunner(home=home, force=force, until=until, runner=config.runner)
    # Source files can change under an unchanged config: their fingerprint joins the key.
    docs = run(ingest, config.ingest, extra=sources_fingerprint(config.ingest))
    task = run(build_task_data, config.task_data, extra=task_fingerprint(config.task_data))
    data = prepare_sharded(run, config.prepare, docs, task)  # shards mapped in parallel
    tok = run(train_tokenizer, config.tokenizer, data=data)
    shards = run(pack, config.pack, data=data, tokenizer=tok)
    base = run(pretrain, config.pretrain, shards=shards, tokenizer=tok)
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


def _challenged_champion(name: str, tuned: StepRef | None, home: str | None) -> str | None:
    """The champion version the gate compares against; part of the gate's key, so a new champion
    re-runs the gate. A model gated against itself is judged on values alone, hence None."""
    if tuned is None:
        return None
    champion = Registry(ArtifactStore(home), name).champion()
    if champion is None or champion.get("finetune_key") == tuned.key:
        return None
    return champion["version"]


@flow(name="pipeline", description="Raw text to an evaluated, gated model: every step, cached.")
def pipeline(
    config: PipelineConfig = PipelineConfig(), force: bool = False, home: str | None = None
) -> dict[str, Any]:
    return compose(config, "gate", force, home)
