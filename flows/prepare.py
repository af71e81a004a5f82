"""The prepare step as a fan-out: one mapped `prepare_shard` task per ingest shard, then `prepare`.

    docs ─▶ shard_inputs ─▶ prepare_shard × N (parallel on the flow's task runner) ─▶ prepare
    task ──────────────────────────┘ (decontamination)                                   ▲
    docs, task ──────────────────────────────────────────────────────────────────────────┘

Each shard is keyed by its content, the per-shard part of the prepare config and the task data,
so adding a source recomputes only that source's shards; `prepare` (global dedup and split)
re-runs whenever any shard changed. Memory per task is bounded by one shard.

With `dedup.incremental`, `prepare` also takes the pipeline's previous prepare artifact as input
``previous`` (its dedup index), chosen by `tasks.dedup_history`, and becomes the chain's head.
"""

from __future__ import annotations

from flows.runner import StepRunner
from llmflow.config import PrepareConfig
from llmflow.store import ArtifactStore, StepRef
from tasks.dedup_history import previous_prepare, record_head
from tasks.prepare import prepare, prepare_shard, shard_config, shard_inputs


def prepare_sharded(
    run: StepRunner, config: PrepareConfig, docs: StepRef | None, task: StepRef | None, name: str
) -> StepRef | None:
    """`run(prepare, ...)` with the per-shard work mapped over the flow's task runner; `name`
    (the pipeline's) names the chain of an incremental dedup."""
    if run.done or docs is None or task is None:
        return None
    pieces = shard_inputs(docs, home=run.home)
    per_shard = {"task": task} if config.decontaminate.enabled else {}
    shards = run.map(prepare_shard, shard_config(config), [{"docs": p, **per_shard} for p in pieces])
    if shards is None:
        return None
    inputs = {f"shard-{i:05d}": s for i, s in enumerate(shards)}
    store = ArtifactStore(run.home)
    if config.dedup.incremental and (previous := previous_prepare(store, name, config, docs, task)):
        inputs["previous"] = previous
    ref = run(prepare, config, docs=docs, task=task, **inputs)
    if config.dedup.incremental and ref is not None:
        record_head(store, name, ref)
    return ref
