"""Memory of the sharded `prepare` as the corpus grows: peak RSS of ingest + prepare, per corpus size.

    python benchmarks/prepare_memory.py --corpus /tmp/bench/corpus-100M.jsonl /tmp/bench/corpus-1G.jsonl \
        --probe 40000 --out benchmarks/results/prepare-memory.json
    python benchmarks/prepare_memory.py --extend /tmp/bench/corpus-204M.jsonl /tmp/bench/corpus-1G-synth.jsonl 4

For each corpus a FRESH subprocess (an empty `LLMFLOW_HOME`, nothing cached) runs the steps as
the data flow does, minus Prefect: `tasks.ingest.ingest_step` on one JSONL source through
`llmflow.step.run_step` (default `shard_docs`), `tasks.prepare.split_into_shards` (the body of
the `shard_inputs` task), `prepare_shard_step` per shard through `run_step` with
`shard_config(cfg)`, then `prepare_step` with inputs ``docs`` and ``shard-NNNNN``: the order and
keys of `flows/prepare.py`, but called serially (one core), so Prefect's own server/engine memory
is not in the figure (tasks/prepare.py still imports Prefect: its import cost is in the baseline).
Config: the default `PrepareConfig` (published thresholds) with decontamination off.

The parent samples every `--interval` s the RSS summed over the child and all its descendants
(psutil), and takes the exact high-water mark from `wait4`. The child marks phases (ingest, each
shard, dedup, finalize, accounting, report) so the peak can be attributed; docs/s per core is
documents / CPU seconds of the child (user + system), fair on a shared machine.

`--extend SRC DST K` writes a larger corpus where a machine holds too little distinct text for
`make-bench-corpus.py --size 1G` (it stops with "sources exhausted"): SRC followed by K copies in
which every non-stop word goes, consistently, to the corpus word of the same length k frequency
ranks away (copy k). Stop words, punctuation, case, lines and repetition statistics are kept;
each copy is new text for exact and MinHash dedup.

`--probe N` also measures the dedup index's bytes per kept document (band table, signatures, ids,
exact-hash keys) by inserting N distinct random signatures into a `Deduper` in a fresh process:
the RSS slope, and the arrays' own size (`Deduper.nbytes`, allocated capacity included).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MB = 1 << 20


# --------------------------------------------------------------------------- child: the pipeline


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Phases:
    """Start/end (wall and CPU) of named phases, written to the parent's result file."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.me = psutil.Process()

    def mark(self, name: str, t0: float, c0: float, **extra) -> None:
        self.rows.append(
            {
                "phase": name,
                "t0": t0,
                "t1": time.time(),
                "cpu": _cpu() - c0,
                "rss_end": self.me.memory_info().rss,
            }
            | extra
        )

    def wrap(self, module, attr: str, name: str, inspect=None) -> None:
        fn = getattr(module, attr)

        def wrapped(*a, **k):
            t0, c0 = time.time(), _cpu()
            out = fn(*a, **k)
            self.mark(name, t0, c0, **(inspect(a, out) if inspect else {}))
            return out

        setattr(module, attr, wrapped)


def _deduper_sizes(args, out) -> dict:
    d = args[1]
    return {
        "index_docs": len(d),
        "index_bytes": d.nbytes,
        "index_bytes_per_doc": round(d.nbytes / max(len(d), 1)),
        "band_entries": len(d._lsh),
        "shingle_rereads": d.shingle_rereads,
        "verified_by_estimate": d.verified_by_estimate,
        "duplicates": len(out),
    }


def child(corpus: str, home: str, result: str) -> None:
    t_start, c_start = time.time(), _cpu()
    import tasks.prepare as tp
    from llmflow.config import IngestConfig, PrepareConfig, SourceConfig
    from llmflow.step import run_step
    from llmflow.store import ArtifactStore
    from tasks import ingest as ti

    ph = Phases()
    ph.mark("imports", t_start, c_start)
    store = ArtifactStore(home)
    icfg = IngestConfig(sources=[SourceConfig(name="bench", kind="jsonl", path=corpus, license="mixed")])
    cfg = PrepareConfig()
    cfg = cfg.model_copy(update={"decontaminate": cfg.decontaminate.model_copy(update={"enabled": False})})

    t0, c0 = time.time(), _cpu()
    docs = run_step("ingest", ti.VERSION, ti.ingest_step, icfg, store=store, extra=ti.fingerprint(icfg))
    ph.mark("ingest", t0, c0, documents=docs.stats["documents"], bytes=docs.stats["bytes"])

    t0, c0 = time.time(), _cpu()
    pieces = tp.split_into_shards(docs, store)
    ph.mark("shard_inputs", t0, c0, shards=len(pieces))
    shard_cfg = tp.shard_config(cfg)
    shards = []
    for p in pieces:
        t0, c0 = time.time(), _cpu()
        shards.append(
            run_step(
                "prepare_shard", tp.SHARD_VERSION, tp.prepare_shard_step, shard_cfg, {"docs": p}, store=store
            )
        )
        ph.mark("prepare_shard", t0, c0, kept=shards[-1].stats["kept"])

    ph.wrap(tp, "dedup_shards", "prepare:dedup", _deduper_sizes)
    ph.wrap(tp, "finalize_shard", "prepare:finalize")
    ph.wrap(tp, "accounting", "prepare:accounting")
    ph.wrap(tp, "write_report", "prepare:report")
    t0, c0 = time.time(), _cpu()
    inputs = {"docs": docs, **{f"shard-{i:05d}": s for i, s in enumerate(shards)}}
    ref = run_step("prepare", tp.VERSION, tp.prepare_step, cfg, inputs, store=store)
    ph.mark("prepare", t0, c0)
    s = ref.stats
    summary = {
        k: s[k] for k in ("input", "kept", "rejected", "train_docs", "validation_docs", "shards", "dedup")
    }
    summary["ingest_bytes"] = docs.stats["bytes"]
    Path(result).write_text(json.dumps({"phases": ph.rows, "stats": summary}))


def probe(n: int, result: str) -> None:
    """Bytes per kept document of the dedup index (no verification cache): RSS slope over n inserts."""
    import numpy as np

    from llmflow.config import PrepareConfig
    from tasks.global_dedup import make_deduper

    cfg = PrepareConfig()
    d = make_deduper(cfg)
    rng = np.random.default_rng(0)
    me = psutil.Process()
    pts = []
    step = n // 4
    for i in range(n + 1):
        if i % step == 0:
            gc.collect()
            pts.append((i, me.memory_info().rss))
        if i == n:
            break
        sig = rng.integers(0, 2**32, cfg.dedup.minhash.num_perm, dtype=np.uint32)
        d.check(f"bench:{i:020x}", f"{rng.integers(0, 2**63):032x}", sig, None)
    xs, ys = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)
    slope = float(np.polyfit(xs, ys, 1)[0])
    Path(result).write_text(
        json.dumps(
            {
                "docs": n,
                "bytes_per_doc": round(slope),
                "nbytes_per_doc": round(d.nbytes / n),
                "points": pts,
                "bands": d.bands,
                "rows": d.rows,
            }
        )
    )


def extend(src: str, dst: str, copies: int) -> None:
    """SRC + `copies` word-mapped copies of it (see the module docstring), as JSONL."""
    import re
    from collections import Counter

    from tasks.quality_signals import STOP_WORDS

    word = re.compile(r"[A-Za-z]+")
    vocab: Counter[str] = Counter()
    with open(src, encoding="utf-8") as f:
        for line in f:
            vocab.update(w.lower() for w in word.findall(json.loads(line)["text"]))
    by_len: dict[int, list[str]] = {}
    for w, _ in vocab.most_common():  # by frequency: a common word maps to a common word
        if w not in STOP_WORDS:
            by_len.setdefault(len(w), []).append(w)
    with open(dst, "w", encoding="utf-8") as out:
        with open(src, encoding="utf-8") as f:
            out.writelines(f)
        for k in range(1, copies + 1):
            m = {
                w: ws[(i + (k % len(ws) or 1)) % len(ws)]
                for ws in by_len.values()
                if len(ws) > 1
                for i, w in enumerate(ws)
            }

            def sub(mo: re.Match, m: dict[str, str] = m) -> str:
                w = mo.group(0)
                r = m.get(w.lower(), w.lower())
                return r.upper() if w.isupper() and len(w) > 1 else (r.capitalize() if w[0].isupper() else r)

            with open(src, encoding="utf-8") as f:
                for line in f:
                    d = json.loads(line)
                    d["id"], d["text"] = f"{d['id']}-s{k}", word.sub(sub, d["text"])
                    out.write(json.dumps(d, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- parent: sampling


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_child(argv: list[str], interval: float) -> tuple[list[tuple[float, int]], dict]:
    """Run `argv` in a subprocess; return the (time, tree RSS) samples and its rusage."""
    p = subprocess.Popen(argv, cwd=ROOT)
    proc = psutil.Process(p.pid)
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            with contextlib.suppress(psutil.Error):
                samples.append((time.time(), _tree_rss(proc)))
            done.wait(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, status, ru = os.wait4(p.pid, 0)
    done.set()
    th.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{argv} exited with {p.returncode}")
    usage = {"cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_mb": ru.ru_maxrss / 1024}
    return samples, usage


def measure(corpus: str, interval: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="llmflow-prepmem-") as home:
        result = os.path.join(home, "result.json")
        t0 = time.time()
        samples, usage = run_child(
            [
                sys.executable,
                __file__,
                "--child",
                corpus,
                "--home",
                os.path.join(home, "store"),
                "--result",
                result,
            ],
            interval,
        )
        wall = time.time() - t0
        res = json.loads(Path(result).read_text())
    phases = res["phases"]

    def peak(t0: float, t1: float) -> float:
        vals = [r for t, r in samples if t0 - interval <= t <= t1 + interval]
        return round(max(vals) / MB, 1) if vals else 0.0

    by_phase: dict[str, dict] = {}
    for r in phases:
        agg = by_phase.setdefault(r["phase"], {"count": 0, "wall_s": 0.0, "cpu_s": 0.0, "peak_rss_mb": 0.0})
        agg["count"] += 1
        agg["wall_s"] = round(agg["wall_s"] + r["t1"] - r["t0"], 2)
        agg["cpu_s"] = round(agg["cpu_s"] + r["cpu"], 2)
        agg["peak_rss_mb"] = max(agg["peak_rss_mb"], peak(r["t0"], r["t1"]))
        agg["rss_end_mb"] = round(r["rss_end"] / MB, 1)
        for k, v in r.items():
            if k not in ("phase", "t0", "t1", "cpu", "rss_end"):
                agg[k] = v
    stats = res["stats"]
    ingest, prep = by_phase["ingest"], by_phase["prepare"]
    shard = by_phase["prepare_shard"]
    cpu_pipeline = ingest["cpu_s"] + by_phase["shard_inputs"]["cpu_s"] + shard["cpu_s"] + prep["cpu_s"]
    cpu_prepare = shard["cpu_s"] + prep["cpu_s"]
    n = stats["input"]
    return {
        "corpus": os.path.basename(corpus),
        "corpus_file_bytes": os.path.getsize(corpus),
        "documents": n,
        "text_bytes": stats["ingest_bytes"],
        "kept": stats["kept"],
        "shards": stats["shards"],
        "dedup": stats["dedup"],
        "wall_s": round(wall, 1),
        "cpu_s": round(usage["cpu_s"], 1),
        "cpu_s_ingest_plus_prepare": round(cpu_pipeline, 1),
        "cpu_s_prepare": round(cpu_prepare, 1),
        "docs_per_s_per_core": round(n / cpu_pipeline, 1),
        "docs_per_s_per_core_prepare_only": round(n / cpu_prepare, 1),
        "peak_rss_mb": round(max(r for _, r in samples) / MB, 1),
        "peak_rss_mb_wait4": round(usage["maxrss_mb"], 1),
        "baseline_rss_mb": by_phase["imports"]["rss_end_mb"],
        "phases": by_phase,
        "samples": len(samples),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", nargs="*", default=["/tmp/bench/corpus-100M.jsonl"])
    ap.add_argument("--interval", type=float, default=0.2, help="RSS sampling period, seconds.")
    ap.add_argument(
        "--probe", type=int, default=0, help="Also measure index bytes/doc over this many inserts."
    )
    ap.add_argument("--out", default=None, help="Write the JSON results here.")
    ap.add_argument(
        "--extend", nargs=3, metavar=("SRC", "DST", "K"), help="Write SRC + K word-mapped copies."
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--probe-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.home, args.result)
    if args.probe_child:
        return probe(args.probe_child, args.result)
    if args.extend:
        return extend(args.extend[0], args.extend[1], int(args.extend[2]))
    out: dict = {"cpu": os.cpu_count(), "interval_s": args.interval, "runs": []}
    if args.out and Path(args.out).exists():  # keep earlier runs of other corpora
        prev = json.loads(Path(args.out).read_text())
        out["runs"] = [
            r for r in prev.get("runs", []) if r["corpus"] not in map(os.path.basename, args.corpus)
        ]
        out["index_probe"] = prev.get("index_probe")
    for corpus in args.corpus:
        r = measure(corpus, args.interval)
        out["runs"].append(r)
        print(
            f"{r['corpus']}: {r['documents']:,} docs, {r['text_bytes'] / 1e6:.0f} MB text, wall {r['wall_s']} s, "
            f"CPU {r['cpu_s_ingest_plus_prepare']} s, {r['docs_per_s_per_core']} docs/s/core, "
            f"peak RSS {r['peak_rss_mb']} MB (wait4 {r['peak_rss_mb_wait4']} MB)"
        )
        for name, ph in r["phases"].items():
            print(
                f"  {name:20s} x{ph['count']:<4d} cpu {ph['cpu_s']:8.1f} s  peak {ph['peak_rss_mb']:8.1f} MB"
            )
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(out, indent=2))
    if args.probe:
        with tempfile.TemporaryDirectory() as tmp:
            res = os.path.join(tmp, "probe.json")
            run_child(
                [sys.executable, __file__, "--probe-child", str(args.probe), "--result", res], args.interval
            )
            out["index_probe"] = json.loads(Path(res).read_text())
        print(f"dedup index: {out['index_probe']['bytes_per_doc']} bytes per kept document")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
