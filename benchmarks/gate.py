"""What the gate decides for models it must reject, and for the demo's own model, at demo scale.

Candidates, all evaluated by the demo preset's `evaluate` on the built-in task's held-out test
items and gated by the demo preset's gate and by the default `GateConfig`:

- `random`: a randomly initialised model (the demo architecture, pretraining at lr 1e-12);
- `not-fine-tuned`: the demo's pretrained model, without fine-tuning;
- `shuffled-targets`: the demo's LoRA fine-tune on the train split with responses shuffled;
- `demo`: the demo's LoRA fine-tune, as `make demo` builds it.

    python benchmarks/gate.py [--home benchmarks/out/gate-home] [--set section.key=value ...]

Writes benchmarks/results/gate.json and prints a table. The demo pipeline's artifacts are built
(or reused) in `--home`; pretraining has a wall-clock budget, so run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", default=str(ROOT / "benchmarks" / "out" / "gate-home"))
    ap.add_argument("--set", action="append", default=[], help="config override for every candidate")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gate.json"))
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    from prefect import flow

    from flows.pipeline import compose
    from llmflow.config import GateConfig, load_config
    from llmflow.step import run_step
    from llmflow.store import ArtifactStore, StepRef
    from tasks import evaluate as E
    from tasks import finetune as F
    from tasks import gate as G
    from tasks import pretrain as P
    from tests.helpers import shuffled_targets_task

    cfg = load_config("demo", args.set)
    store = ArtifactStore(args.home)

    @flow(name="gate-benchmark-upstream")
    def upstream() -> dict:
        return compose(cfg, "finetune", home=args.home)

    t0 = time.time()
    refs = {k: StepRef(**v) for k, v in upstream().items()}
    print(f"demo pipeline up to finetune: {time.time() - t0:.0f}s", flush=True)

    def run(step, module, fn, config, inputs, extra=None):
        return run_step(step, module.VERSION, fn, config, inputs, store=store, extra=extra)

    rand = run(
        "pretrain",
        P,
        P.pretrain_step,
        cfg.pretrain.model_copy(update={"lr": 1e-12, "max_steps": 1, "max_seconds": None}),
        {"shards": refs["pack"], "tokenizer": refs["tokenizer"]},
    )
    shuffled = run(
        "finetune",
        F,
        F.finetune_step,
        cfg.finetune,
        {"base": refs["pretrain"], "task": shuffled_targets_task(store, refs["task_data"])},
    )
    candidates = {
        "random": rand,
        "not-fine-tuned": refs["pretrain"],
        "shuffled-targets": shuffled,
        "demo": refs["finetune"],
    }
    gates = {"demo": cfg.gate, "default": GateConfig()}
    results = {}
    for name, model in candidates.items():
        t1 = time.time()
        ev = run(
            "evaluate",
            E,
            E.evaluate_step,
            cfg.evaluate,
            {"model": model, "base": refs["pretrain"], "shards": refs["pack"], "task": refs["task_data"]},
            extra={"name": f"bench-{name}"},
        )
        metrics = json.loads((store.local_path(ev) / "metrics.json").read_text())
        row = {
            "rougeL": metrics["metrics"]["rougeL"],
            "val_bpb": metrics["metrics"].get("val_bpb"),
            "val_bpb_unigram": metrics["metrics"].get("val_bpb_unigram"),
            "baselines": {b: m["rougeL"] for b, m in metrics["baselines"].items()},
            "evaluate_seconds": round(time.time() - t1, 1),
            "gates": {},
        }
        for gname, gcfg in gates.items():
            g = run(
                "gate",
                G,
                G.gate_step,
                gcfg,
                {"eval": ev, "model": model},
                extra={"name": f"bench-{name}-{gname}", "champion": None},
            )
            d = json.loads((store.local_path(g) / "decision.json").read_text())
            row["gates"][gname] = {
                "passed": d["passed"],
                "reasons": d["reasons"],
                "references": d["references"],
            }
        results[name] = row
        print(
            f"{name}: rougeL {row['rougeL']:.4f}, demo gate {'PASS' if row['gates']['demo']['passed'] else 'FAIL'}",
            flush=True,
        )

    doc = {
        "config": "demo" + "".join(f" --set {s}" for s in args.set),
        "pretrain_steps": refs["pretrain"].stats.get("steps"),
        "pretrain_seconds": refs["pretrain"].stats.get("seconds"),
        "n_test": metrics.get("n"),
        "candidates": results,
        "torch_threads": __import__("torch").get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print()
    print(
        "| candidate | ROUGE-L | best baseline | base (before fine-tuning) | val bpb | unigram bpb | demo gate | default gate | first failed check |"
    )
    print("|---|---:|---|---:|---:|---:|---|---|---|")
    for name, r in results.items():
        b = {k: v for k, v in r["baselines"].items() if k != "base"}
        best = max(b, key=b.get)
        reasons = r["gates"]["demo"]["reasons"]
        print(
            f"| {name} | {r['rougeL']:.3f} | {best} {b[best]:.3f} | {r['baselines'].get('base', float('nan')):.3f} | "
            f"{r['val_bpb']:.3f} | {r['val_bpb_unigram']:.3f} | {'pass' if r['gates']['demo']['passed'] else 'FAIL'} | "
            f"{'pass' if r['gates']['default']['passed'] else 'FAIL'} | {reasons[0] if reasons else ''} |"
        )


if __name__ == "__main__":
    main()
