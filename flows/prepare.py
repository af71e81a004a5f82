"""The prepare step as a fan-out: one mapped `prepare_shard` task per ingest shard, then `prepare`.

    docs ─▶ shard_inputs ─▶ prepare_shard × N (parallel on the flow's task runner) ─▶ prepare
    task ──────────────────────────┘ (decontamination)                                   ▲
    docs, task ──────────────────────────────────────────────────────────────────────────┘

Each shard is keyed by its content, the per-shard part of the prepare config and the task data,
so adding a source recomputes only that source's shards; `prepare` (global dedup and split)
re-runs whenever any shard changed. Memory per task is bounded by one shard.
"""

from __future__ import annotations

from flows.runner import StepRunner
from llmflow.config import PrepareConfig
from llmflow.store import StepRef
from tasks.prepare import prepare, prepare_shard, shard_config, shard_inputs


def prepare_sharded(
    run: StepRunner, config: PrepareConfig, docs: StepRef | None, task: StepRef | None
) -> StepRef | None:
    """`run(prepare, ...)` with the per-shard work mapped over the flow's task runner."""
    if run.done or docs is None or task is None:
        return None
    pieces = shard_inputs(docs, home=run.home)
    per_shard = {"task": task} if config.decontaminate.enabled else {}
    shards = run.map(prepare_shard, shard_config(config), [{"docs": p, **per_shard} for p in pieces])
    if shards is None:
        return None
    return run(prepare, config, docs=docs, task=task, **{f"shard-{i:05d}": s for i, s in enumerate(shards)})
