"""`llmflow data` on Dask and its memory, measured through the command itself.

    python benchmarks/dask_scaling.py --corpus /tmp/bench/corpus-100M.jsonl \\
        --big /tmp/bench/corpus-1G-synth.jsonl --out benchmarks/results/dask-scaling.json

Every run is a FRESH `llmflow data` process (`python -m deployments.cli data`, this checkout on
PYTHONPATH) with an empty workspace and an empty PREFECT_HOME, so nothing is cached and the
command starts its own temporary Prefect server, as a user's first run does. The config: one JSONL
source (the corpus), the default `PrepareConfig` with decontamination off (as
benchmarks/prepare_memory.py, so the step-by-step figures compare), the given `runner`.

1. Scaling: `runner.kind=dask`, a local cluster of `--workers` (1 and 2) single-threaded worker
   processes, on `--corpus`. docs/s of the fan-out = input documents / wall time from the first
   `prepare_shard` start to the last one's end (from the shard manifests: `created - seconds`,
   `created`); docs/s end to end = documents / the command's wall time (server start, ingest and
   the global dedup and split included). Scaling efficiency = rate(N) / (N x rate(1)).
2. Memory: peak RSS of the whole process tree of the command (the CLI, its Prefect server, the
   pool's or the cluster's worker processes), sampled every `--interval` s with psutil, for the
   default runner (threads, one shard in flight per core) on `--corpus` and `--big`; with
   `--unbounded`, also the previous behaviour at `--corpus` (every shard in flight at once:
   `runner.workers` = the shard count, what `Task.map` on an unbounded thread pool did).

`os.getloadavg()` is recorded before and after each run: on a shared machine the timings are
"under load" and only the memory figures are comparable.
`--extend SRC DST K` of benchmarks/prepare_memory.py writes a 1 GB corpus from the 100 MB one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.prepare_memory import MB, run_child  # noqa: E402
from llmflow.store import ArtifactStore  # noqa: E402

SHARD_DOCS = 5000  # the default `ingest.shard_docs`; --shard-docs gives a small corpus several shards


def _config(corpus: str, path: Path) -> None:
    cfg = {
        "name": "bench",
        "ingest": {
            "sources": [{"name": "bench", "kind": "jsonl", "path": corpus, "license": "mixed"}],
            "shard_docs": SHARD_DOCS,
        },
        "prepare": {"decontaminate": {"enabled": False}},
    }
    path.write_text(yaml.safe_dump(cfg))


def _git_commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip()


def run_data(corpus: str, sets: list[str], interval: float) -> dict:
    """One fresh `llmflow data` run; its wall time, tree peak RSS and the fan-out's timings."""
    with tempfile.TemporaryDirectory(prefix="llmflow-daskbench-") as tmp:
        cfg, home = Path(tmp, "bench.yaml"), Path(tmp, "home")
        _config(corpus, cfg)
        argv = [sys.executable, "-m", "deployments.cli", "data", "--config", str(cfg), "--home", str(home)]
        for s in sets:
            argv += ["--set", s]
        env_keep = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        old = dict(os.environ)
        os.environ.clear()
        os.environ.update(
            env_keep,
            PREFECT_HOME=str(Path(tmp, "prefect")),
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env_keep.get("PYTHONPATH")])),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_LOGGING_LEVEL="WARNING",
        )
        load0 = os.getloadavg()
        t0 = time.time()
        try:
            samples, usage = run_child(argv, interval)
        finally:
            os.environ.clear()
            os.environ.update(old)
        wall = time.time() - t0
        load1 = os.getloadavg()
        store = ArtifactStore(str(home))
        shards = store.list("prepare_shard")
        prep = store.list("prepare")[-1]
        ingest = store.list("ingest")[-1]
    starts = [m["created"] - m["seconds"] for m in shards]
    ends = [m["created"] for m in shards]
    fan_wall = max(ends) - min(starts)
    docs = prep["stats"]["input"]
    return {
        "runner": sets,
        "documents": docs,
        "text_bytes": ingest["stats"]["bytes"],
        "kept": prep["stats"]["kept"],
        "shards": len(shards),
        "workers_seen": len({m["stats"]["worker"] for m in shards}),
        "wall_s": round(wall, 1),
        "cpu_s": round(usage["cpu_s"], 1),
        "fanout_wall_s": round(fan_wall, 1),
        "shard_cpu_s_sum": round(sum(m["seconds"] for m in shards), 1),
        "prepare_global_s": round(prep["seconds"], 1),
        "docs_per_s_fanout": round(docs / fan_wall, 1),
        "docs_per_s_end_to_end": round(docs / wall, 1),
        "peak_rss_mb": round(max(r for _, r in samples) / MB, 1),
        "peak_rss_mb_wait4": round(usage["maxrss_mb"], 1),
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in load1],
    }


def main() -> None:
    global SHARD_DOCS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/tmp/bench/corpus-100M.jsonl", help="The 100 MB corpus.")
    ap.add_argument("--big", default=None, help="The 1 GB corpus (memory only); skipped when not given.")
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="Dask worker counts.")
    ap.add_argument("--unbounded", action="store_true", help="Also measure every shard in flight at once.")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--interval", type=float, default=0.2, help="RSS sampling period, seconds.")
    ap.add_argument("--shard-docs", type=int, default=SHARD_DOCS, help="ingest.shard_docs.")
    ap.add_argument("--out", default="benchmarks/results/dask-scaling.json")
    args = ap.parse_args()
    SHARD_DOCS = args.shard_docs
    out: dict = {
        "cpu": os.cpu_count(),
        "commit": _git_commit(),
        "shard_docs": SHARD_DOCS,
        "note": "timings measured under load when loadavg exceeds the core count",
        "scaling": [],
        "memory": [],
    }

    def save() -> None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))

    def show(what: str, r: dict) -> None:
        print(
            f"{what}: {r['documents']:,} docs, {r['shards']} shards on {r['workers_seen']} worker(s), "
            f"wall {r['wall_s']} s, fan-out {r['fanout_wall_s']} s = {r['docs_per_s_fanout']} docs/s, "
            f"end to end {r['docs_per_s_end_to_end']} docs/s, peak RSS {r['peak_rss_mb']} MB, "
            f"load {r['loadavg_before'][0]} -> {r['loadavg_after'][0]}",
            flush=True,
        )

    if not args.skip_scaling:
        for n in args.workers:
            r = run_data(args.corpus, ["runner.kind=dask", f"runner.workers={n}"], args.interval)
            r["dask_workers"] = n
            out["scaling"].append(r)
            show(f"dask x{n} {os.path.basename(args.corpus)}", r)
            save()
        rates = {r["dask_workers"]: r["docs_per_s_fanout"] for r in out["scaling"]}
        if 1 in rates:
            out["efficiency"] = {n: round(v / (n * rates[1]), 3) for n, v in rates.items() if n > 1}
            print(f"scaling efficiency (fan-out docs/s over N x one worker's): {out['efficiency']}")
            save()
    runs = [("threads", args.corpus, ["runner.kind=threads"])]
    if args.big:
        runs.append(("threads", args.big, ["runner.kind=threads"]))
    if args.unbounded:
        runs.append(("unbounded", args.corpus, ["runner.kind=threads", "runner.workers=4096"]))
    for label, corpus, sets in runs:
        r = run_data(corpus, sets, args.interval)
        r.update(label=label, corpus=os.path.basename(corpus))
        out["memory"].append(r)
        show(f"memory {label} {r['corpus']}", r)
        save()
    save()


if __name__ == "__main__":
    main()
