"""Fine-tuning benchmark: ROUGE-L of the base model vs the fine-tuned model on the task's test split.

Runs on the artifacts of a finished pipeline run (e.g. `make demo`): the registry's champion
gives the fine-tune artifact and, through its lineage, the base model and the task data.

    python benchmarks/finetune.py [--home .llmflow] [--name llmflow] [--limit 200]

Writes `benchmarks/results/finetune.json` and prints a short table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from llmflow.registry import Registry
from llmflow.store import ArtifactStore


def rouge_l_vs_base(
    base_dir: str | Path,
    finetuned: str | Path,
    rows: list[dict[str, Any]],
    *,
    limit: int = 200,
    max_new_tokens: int = 32,
    batch_size: int = 16,
) -> dict[str, Any]:
    """ROUGE-L F1 of the base model and of the fine-tuned one on the same task rows (greedy).

    Both see the same rendered prompt; the fine-tuned model is loaded with `load_finetuned`.
    """
    from rouge_score import rouge_scorer

    from model.adapters import load_base, load_finetuned
    from model.generate import generate
    from model.sft_data import RejectedRow, row_text

    usable = []
    for r in rows:
        try:
            usable.append(row_text(r))
        except RejectedRow:
            continue
    usable = usable[:limit]
    if not usable:
        raise ValueError("no usable rows to score")
    prompts, refs = [p for p, _ in usable], [r for _, r in usable]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    out: dict[str, Any] = {"n": len(usable)}
    for name, loader in (
        ("base", lambda: load_base(base_dir)),
        ("finetuned", lambda: load_finetuned(finetuned)),
    ):
        model, tokenizer = loader()
        model.eval()
        t0 = time.time()
        preds = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        scores = [scorer.score(ref, pred)["rougeL"].fmeasure for ref, pred in zip(refs, preds, strict=True)]
        out[name] = round(sum(scores) / len(scores), 4)
        out[f"{name}_seconds"] = round(time.time() - t0, 2)
        out[f"{name}_samples"] = [
            {"reference": r, "prediction": p} for r, p in list(zip(refs, preds, strict=True))[:5]
        ]
        del model
    out["gain"] = round(out["finetuned"] - out["base"], 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default=None)
    ap.add_argument("--name", default="llmflow")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()

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
        "scoring_seconds": res["finetuned_seconds"],
        "samples": res["finetuned_samples"][:5],
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
