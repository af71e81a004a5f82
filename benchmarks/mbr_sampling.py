"""MBR decoding's draws: transformers' `generate` against llmflow's sampling loop, side by side.

    python benchmarks/mbr_sampling.py FINETUNE_DIR TASK_DIR [--split validation] [--seeds 1234 1235]

Decodes every item of TASK_DIR's split as the demo's evaluate step does (`model.generate.generate`
with the demo preset's decoding: greedy + 32 samples at temperature 0.8, copy bias 2, MBR with
ROUGE-L and the name and nearest-train evidence), once per seed with each way of drawing the
samples: `transformers` (its `generate`, every row kept until the longest ends, `multinomial`
over the whole vocabulary) and `llmflow` (`model.sampling.sample_continuations`: finished rows
leave the batch, the draw is made among the top k). Both draw from the same distribution, so
ROUGE-L may differ by sampling noise only: the report pairs them per item (two-sided paired
bootstrap, 95%) next to the seed-to-seed difference of the reference itself. Run it alone on the
machine. Appends to benchmarks/results/mbr-sampling.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def transformers_draws(
    model, inputs, *, max_new_tokens, temperature, stop_ids, top_k=None, top_p=None, row_bias=None
):
    """The reference: the same rows through transformers' `generate` (as llmflow drew them before
    model/sampling.py), the copy bias as a logits processor, each row cut before its first stop id."""
    from transformers import LogitsProcessorList

    rows = inputs["input_ids"].shape[0]
    bias = LogitsProcessorList([lambda ids, scores: scores + row_bias[:, : scores.shape[-1]]])
    out = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        **({"top_k": top_k} if top_k is not None else {}),  # None given explicitly turns transformers' 50 off
        **({"top_p": top_p} if top_p is not None else {}),
        eos_token_id=stop_ids,
        pad_token_id=model.generation_config.pad_token_id
        if model.generation_config.pad_token_id is not None
        else stop_ids[0],
        **({"logits_processor": bias} if row_bias is not None else {}),
    )
    new = out[:, inputs["input_ids"].shape[1] :].tolist()
    assert len(new) == rows
    return [row[: next((k for k, t in enumerate(row) if t in stop_ids), len(row))] for row in new]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("task")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1234, 1235])
    ap.add_argument("--config", default="demo")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/mbr-sampling.json"))
    args = ap.parse_args()

    import torch

    import model.generate as G
    from llmflow.config import load_config
    from model.sft_data import render_prompt
    from tasks import mbr_evidence
    from tasks import metrics as M
    from tasks.evaluate import decoding, load_model

    cfg = load_config(args.config).evaluate
    task = Path(args.task)
    rows = [json.loads(x) for x in (task / f"{args.split}.jsonl").read_text().splitlines() if x.strip()]
    model, tok = load_model(Path(args.model))
    evidence = mbr_evidence.from_config(cfg, mbr_evidence.read_train_rows(task))
    raw = [r["prompt"] for r in rows]
    prompts = [render_prompt(p, tok) for p in raw]
    gen = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, **decoding(cfg))
    fast = G.sample_continuations
    results = {}
    for seed in args.seeds:
        for name, impl in (("transformers", transformers_draws), ("llmflow", fast)):
            G.sample_continuations = impl
            t0 = time.perf_counter()
            preds = G.generate(
                model, tok, prompts, **{**gen, "seed": seed}, mbr_evidence=evidence(raw) if evidence else None
            )
            seconds = time.perf_counter() - t0
            scores = [M.rouge_l(p, r["response"]) for p, r in zip(preds, rows, strict=True)]
            results[f"{name}/{seed}"] = {
                "seconds": round(seconds, 1),
                "rougeL": sum(scores) / len(scores),
                "scores": scores,
            }
            print(
                f"{name:12s} seed {seed}: {seconds:6.1f} s  ROUGE-L {results[f'{name}/{seed}']['rougeL']:.4f}",
                flush=True,
            )
    G.sample_continuations = fast

    def pair(a: str, b: str) -> dict:
        pb = M.paired_bootstrap(results[a]["scores"], results[b]["scores"], n_boot=1000, seed=0)
        return {"pair": f"{a} - {b}", "diff": round(pb["diff"], 4), "ci95": [round(x, 4) for x in pb["ci"]]}

    s0, s1 = args.seeds[0], args.seeds[-1]
    pairs = [pair(f"llmflow/{s}", f"transformers/{s}") for s in args.seeds]
    if s1 != s0:
        pairs.append(pair(f"transformers/{s1}", f"transformers/{s0}"))
    for p in pairs:
        print(f"{p['pair']:40s} {p['diff']:+.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}]")
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "model": args.model,
        "split": args.split,
        "items": len(rows),
        "threads": torch.get_num_threads(),
        "runs": {k: {"seconds": v["seconds"], "rougeL": round(v["rougeL"], 4)} for k, v in results.items()},
        "pairs": pairs,
    }
    out = Path(args.out)
    history = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps([*history, record], indent=1) + "\n")


if __name__ == "__main__":
    main()
