"""Fine-tuning benchmark: ROUGE-L of the base model vs the fine-tuned model on the task's test split.

Runs on the artifacts of a finished pipeline run (e.g. `make demo`): the registry's champion
gives the fine-tune artifact and, through its lineage, the base model and the task data.

    python benchmarks/finetune.py [--home .llmflow] [--name llmflow] [--limit 200]

Writes `benchmarks/results/finetune.json` and prints a short table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmflow.registry import Registry
from llmflow.store import ArtifactStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default=None)
    ap.add_argument("--name", default="llmflow")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()

    from model.finetune import rouge_l_vs_base

    store = ArtifactStore(args.home)
    entry = Registry(store, args.name).champion()
    if entry is None:
        raise SystemExit(f"no champion in registry '{args.name}' under {store.root}: run the pipeline first")
    arts = entry["lineage"]["artifacts"]
    tuned_dir = store.local_path(("finetune", arts["finetune"]))
    base_dir = store.local_path(("pretrain", arts["pretrain"])) / "model"
    task_dir = store.local_path(("task_data", arts["task_data"]))
    rows = [json.loads(line) for line in (task_dir / "test.jsonl").read_text().splitlines() if line.strip()]
    res = rouge_l_vs_base(base_dir, tuned_dir, rows, limit=args.limit, max_new_tokens=args.max_new_tokens)
    ft_manifest = store.manifest("finetune", arts["finetune"])
    ft = ft_manifest["stats"]
    out = {
        "n": res["n"],
        "rougeL_base": res["base"],
        "rougeL_finetuned": res["finetuned"],
        "gain": res["gain"],
        "method": ft.get("method"),
        "trainable_fraction": ft.get("trainable_fraction"),
        "trainable_params": ft.get("trainable_params"),
        "finetune_seconds": ft_manifest.get("timings", {}).get("seconds"),
        "finetune_steps": ft.get("steps"),
        "scoring_seconds": res.get("seconds"),
        "samples": res.get("samples", [])[:5],
    }
    dest = Path(__file__).with_name("results") / "finetune.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(out, indent=2))
    print(f"test examples        {out['n']}")
    print(f"ROUGE-L base         {out['rougeL_base']:.4f}")
    print(f"ROUGE-L fine-tuned   {out['rougeL_finetuned']:.4f}  (gain {out['gain']:+.4f})")
    print(
        f"method               {out['method']}, trainable {out['trainable_fraction']:.2%} "
        f"({out['trainable_params']:,} params), {out['finetune_steps']} steps in {out['finetune_seconds']:.0f}s"
    )
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
