"""The `prepare` step: ingested documents -> clean, deduplicated, decontaminated train/validation.

Per document, in order (each sub-step switchable in `PrepareConfig`):

    normalize -> quality filters -> language ID -> toxicity -> decontaminate -> PII redaction
    -> exact + MinHash dedup -> split (train/validation by id hash)

in three phases that keep memory bounded by the shard size, not the corpus size: the per-shard
work (`tasks.doc_pipeline`), then the dedup over all shards and the split (`tasks.global_dedup`);
the accounting and the report read back what was written (`tasks.prepare_report`).

Phase 1 runs either inside the step (serially or in a process pool, `PrepareConfig.workers`) or,
in the flows, as the mapped step `prepare_shard`: one cached artifact per input shard, keyed by
the shard's content (`shard_inputs` gives each ingest shard a content-addressed `doc_shard`
artifact), the per-shard part of the config (`shard_config`) and the task data. Adding a source
then recomputes only the new source's shards; `prepare` takes them as inputs ``shard-NNNNN``
and does phases 2 and 3. Every input id ends in exactly one of train, validation or rejects
(checked before publishing); a reject keeps its origin (`tasks.rejects`).

Incremental dedup: the dedup index is saved as `dedup/index.parquet` (+ `members.parquet`); an
earlier prepare artifact given as input ``previous`` seeds it, so new documents are deduplicated
against everything the earlier runs kept, and the saved index holds them all. The earlier index
enters the key as that input's key (an artifact, never a mutable file); which artifact is the
previous one is the flow's choice (`tasks.dedup_history`).
"""

from __future__ import annotations

import functools
import gc
import os
import shutil
import socket
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from prefect import task

from llmflow.config import DecontaminateConfig, PrepareConfig
from llmflow.step import StepContext
from llmflow.store import ArtifactStore, StepRef, file_sha256, step_key
from tasks.common import step_task
from tasks.decontaminate import Decontaminator
from tasks.doc_pipeline import process_shard
from tasks.global_dedup import dedup_shards, finalize_shard, make_deduper
from tasks.prepare_report import accounting, sub_steps, write_report

VERSION = 4  # 2: per-shard inputs (shard-NNNNN); 3: numpy dedup index (format 2), shingles re-read;
# 4: rejects with their origin, kept documents with their cluster
SHARD_VERSION = 1
DOC_SHARD_STEP = "doc_shard"  # content-addressed copies (hard links) of single ingest shards


def _decontaminator(ctx: StepContext, cfg: PrepareConfig) -> Decontaminator | None:
    if cfg.decontaminate.enabled and "task" in ctx.inputs:
        d = cfg.decontaminate
        return _load_decontaminator(str(ctx.input_path("task")), d.model_dump_json())
    if cfg.decontaminate.enabled:
        ctx.logger.warning("%s: no 'task' input, decontamination skipped", ctx.step)
    return None


@functools.lru_cache(maxsize=2)
def _load_decontaminator(task_dir: str, settings: str) -> Decontaminator:
    """One index per (task artifact, settings) per process: mapped shard tasks share it."""
    d = DecontaminateConfig.model_validate_json(settings)
    return Decontaminator.from_task_dir(task_dir, d.ngram, d.splits, d.min_matches, d.min_words)


def shard_config(cfg: PrepareConfig) -> PrepareConfig:
    """The part of the config that the per-shard work depends on (the rest reset to defaults), so
    that changing e.g. the dedup threshold or the split re-runs `prepare` but no shard."""
    default = PrepareConfig()
    mh = cfg.dedup.minhash
    return cfg.model_copy(
        update={
            "validation_fraction": default.validation_fraction,
            "workers": default.workers,
            "examples_per_reason": default.examples_per_reason,
            "dedup": cfg.dedup.model_copy(
                update={
                    "incremental": default.dedup.incremental,
                    "minhash": default.dedup.minhash.model_copy(
                        update={
                            k: getattr(mh, k)
                            for k in ("enabled", "num_perm", "shingle_words", "verify_jaccard", "seed")
                        }
                    ),
                }
            ),
        }
    )


def prepare_shard_step(ctx: StepContext) -> dict[str, Any]:
    """One shard: normalize, filter, identify language, score toxicity, decontaminate, redact PII.

    Input `docs` is a `doc_shard` artifact (`docs.parquet`); writes `kept.parquet` (survivors with
    the dedup work columns) and `rejects.parquet`; `prepare` dedups and splits them globally.
    """
    cfg = ctx.config if isinstance(ctx.config, PrepareConfig) else PrepareConfig.model_validate(ctx.config)
    decon = _decontaminator(ctx, cfg)
    stats = process_shard(
        ctx.input_path("docs") / "docs.parquet",
        ctx.out / "kept.parquet",
        ctx.out / "rejects.parquet",
        cfg,
        decon,
    )
    stats["decontamination_ngrams"] = len(decon) if decon is not None else 0
    stats["worker"] = f"{socket.gethostname()}/{os.getpid()}"  # where it ran (a cluster's node)
    ctx.progress(1, 1, f"{stats['kept']}/{stats['input']} kept")
    return stats


def split_into_shards(docs: StepRef, store: ArtifactStore) -> list[StepRef]:
    """One content-addressed `doc_shard` artifact per ingest shard (a hard link, no copy on a local
    store), so a shard's downstream key depends on its content, not on the other sources."""
    refs = []
    for f in sorted((store.local_path(docs) / "docs").glob("part-*.parquet")):
        digest = file_sha256(f)
        key = step_key(DOC_SHARD_STEP, 1, None, extra={"sha256": digest})
        if not store.exists(DOC_SHARD_STEP, key):
            manifest = {"stats": {"sha256": digest, "first_seen_as": f"{docs.step}/{docs.key}/docs/{f.name}"}}
            with store.write(DOC_SHARD_STEP, key, manifest) as out:
                try:
                    os.link(f, out / "docs.parquet")
                except OSError:
                    shutil.copy2(f, out / "docs.parquet")
        ref = store.ref(DOC_SHARD_STEP, key)
        assert ref is not None
        refs.append(ref)
    return refs


@task(name="shard_inputs", description="One content-addressed artifact per ingest shard.", retries=1)
def shard_inputs(docs: StepRef, home: str | None = None) -> list[StepRef]:
    return split_into_shards(docs, ArtifactStore(home))


def prepare_step(ctx: StepContext) -> dict[str, Any]:
    """Normalize, filter, identify language, score toxicity, decontaminate, redact PII, dedup, split.

    With inputs ``shard-NNNNN`` (outputs of `prepare_shard`, in ingest shard order) the per-shard
    work is already done; otherwise it runs here, serially or in `cfg.workers` processes.
    """
    cfg: PrepareConfig = ctx.config
    docs_dir = ctx.input_path("docs") / "docs"
    in_shards = sorted(docs_dir.glob("part-*.parquet"))
    shard_inputs_ = sorted(k for k in ctx.inputs if k.startswith("shard-"))
    out = ctx.out
    work = out / "_work"
    work.mkdir()
    results: list[dict[str, Any]] = []
    decon_ngrams = 0
    if shard_inputs_:
        if len(shard_inputs_) != len(in_shards):
            raise ValueError(f"prepare: {len(shard_inputs_)} shard inputs for {len(in_shards)} ingest shards")
        parts = [
            (ctx.input_path(n) / "kept.parquet", ctx.input_path(n) / "rejects.parquet") for n in shard_inputs_
        ]
        results = [ctx.input_stats(n) for n in shard_inputs_]
        want = shard_config(cfg).model_dump(mode="json")
        for n in shard_inputs_:
            ref = ctx.inputs[n]
            got = (ctx.store.manifest(ref.step, ref.key) or {}).get("config")
            if ref.step != "prepare_shard" or got != want:
                raise ValueError(
                    f"prepare: input {n} ({ref.step}/{ref.key[:12]}) was not made with this config"
                )
        decon_ngrams = max((r.get("decontamination_ngrams", 0) for r in results), default=0)
    else:
        decon = _decontaminator(ctx, cfg)
        decon_ngrams = len(decon) if decon is not None else 0
        parts = [
            (work / f"kept-{i:05d}.parquet", work / f"rejects-{i:05d}.parquet") for i in range(len(in_shards))
        ]
        args = [
            (str(p), *map(str, parts[i]), cfg.model_dump(mode="json"), decon) for i, p in enumerate(in_shards)
        ]
        workers = cfg.workers or os.cpu_count() or 1
        if workers > 1 and len(in_shards) > 1:
            with ProcessPoolExecutor(min(workers, len(in_shards)), mp_context=get_context("spawn")) as pool:
                for r in pool.map(process_shard, *zip(*args, strict=True)):
                    results.append(r)
                    ctx.progress(
                        len(results),
                        len(in_shards) + 1,
                        f"shard {len(results) - 1}: {r['kept']}/{r['input']} kept",
                    )
        else:
            for a in args:
                results.append(process_shard(*a))
                ctx.progress(
                    len(results),
                    len(in_shards) + 1,
                    f"shard {len(results) - 1}: {results[-1]['kept']}/{results[-1]['input']}",
                )
    shards = list(range(len(parts)))
    deduper = make_deduper(cfg)
    previous = 0
    if "previous" in ctx.inputs:  # incremental: dedup against an earlier prepare's kept docs
        prev_index = ctx.input_path("previous") / "dedup" / "index.parquet"
        previous = deduper.load(prev_index)
    clusters: list = []
    dups = dedup_shards([k for k, _ in parts], deduper, clusters)
    sizes = [deduper.cluster_sizes(c) for c in clusters]
    del clusters
    (out / "dedup").mkdir()
    deduper.save(out / "dedup" / "index.parquet")
    minhash_stats = {
        "bands": deduper.bands,
        "rows": deduper.rows,
        "num_perm": deduper.num_perm,
        "threshold": deduper.threshold,
        "verified_by_estimate": deduper.verified_by_estimate,
    }
    previous_stats = {
        "previous_index_docs": previous,
        "previous_seen_again": deduper.seen_again,
        "duplicates_of_previous": deduper.against_previous,
    }
    index_stats = {
        "index_docs": len(deduper),
        "index_bytes": deduper.nbytes,
        "shingle_rereads": deduper.shingle_rereads,
    }
    del deduper  # the index is saved: free it before the shards are written (peak RSS)
    gc.collect()
    totals: Counter[str] = Counter()
    for s in shards:
        totals.update(finalize_shard(*parts[s], s, out, dups, cfg.validation_fraction, sizes[s]))
    for split in ("train", "validation", "rejects"):
        (out / split).mkdir(exist_ok=True)
    shutil.rmtree(work)
    ctx.progress(len(shards) + 1, len(shards) + 1, "done")
    pii: Counter[str] = Counter()
    for r in results:
        pii.update(r["pii"])
    stats: dict[str, Any] = {
        "input": sum(r["input"] for r in results),
        "kept": totals["train_docs"] + totals["validation_docs"],
        "rejected": totals["rejected"],
        "train_docs": totals["train_docs"],
        "validation_docs": totals["validation_docs"],
        "train_bytes": totals["train_bytes"],
        "validation_bytes": totals["validation_bytes"],
        "shards": len(shards),
        "pii": {t: pii.get(t, 0) for t in cfg.pii.types} if cfg.pii.enabled else {},
        "minhash": minhash_stats,
        "dedup": {
            "exact": sum(1 for v in dups.values() if v[1] == "exact"),
            "near": sum(1 for v in dups.values() if v[1] == "near"),
            **previous_stats,
            **index_stats,
        },
        "decontamination_ngrams": decon_ngrams,
    }
    del dups  # free the duplicate map before the read-back
    stats.update(accounting(out, docs_dir, ctx.input_path("docs") / "rejects"))
    if stats["input"] != stats["kept"] + stats["rejected"]:
        raise RuntimeError(
            f"prepare accounting broken: {stats['input']} != {stats['kept']} + {stats['rejected']}"
        )
    stats["steps"] = sub_steps(cfg, decon_ngrams, stats["rejects_by_reason"], stats["dedup"])
    write_report(ctx, stats, out, cfg.examples_per_reason)
    return stats


prepare = step_task("prepare", VERSION, prepare_step)
prepare_shard = step_task("prepare_shard", SHARD_VERSION, prepare_shard_step)
