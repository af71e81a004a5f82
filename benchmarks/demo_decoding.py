"""The decoding lever of the demo: greedy, beam search and minimum Bayes risk on one fine-tuned model.

    python benchmarks/demo_decoding.py FINETUNE_DIR TASK_DIR [--prompt-format sig_last] \
        [--configs '{}' '{"num_beams": 4}' '{"mbr": 16, "temperature": 0.8}' ...]

FINETUNE_DIR is a `finetune` artifact (or model directory) of `benchmarks/demo_levers.py`; TASK_DIR
a task_data artifact whose `validation.jsonl` is scored (the levers never look at the test split).
Every configuration is scored with the project's ROUGE-L (stemming on), BLEU, chrF and exact match,
next to the function-name baseline, with the gate's one-sided paired bootstrap (95%, 1,000
resamples). MBR candidates are the greedy answer plus N samples; the utility is ROUGE-L
(model/mbr.py). Configurations without transformers' own keys (`num_beams`, ...) decode with
`model.generate.generate`, as the evaluate step does: `{"mbr": 16, "temperature": 0.8,
"copy_bias": 2}` is the demo's decoding; `"contrast": w` adds context-aware decoding against the
empty prompt (`"null": "frame"`: against the signature and name lines without the body). Appends
to benchmarks/results/demo-decoding.json. Seconds depend on the load (recorded).
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
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("task")
    ap.add_argument(
        "--configs", nargs="*", default=["{}", '{"num_beams": 4}', '{"mbr": 16, "temperature": 0.8}']
    )
    ap.add_argument("--prompt-format", default=None, choices=["sig_last"])
    ap.add_argument("--label", default="")
    ap.add_argument(
        "--split",
        default="validation",
        help="the task split to score: `test` of a `demo_levers.py --cv-fold` evaluation task is the held-out fold",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "demo-decoding.json"))
    args = ap.parse_args()

    import numpy as np
    import torch
    from demo_mbr_pool import null_prompt

    from model.generate import encode_prompt, generate, load, prompt_budget, stop_token_ids
    from model.mbr import choose
    from model.sft_data import render_prompt
    from tasks import metrics as M
    from tasks.baselines import name_words

    rows = [json.loads(x) for x in (Path(args.task) / f"{args.split}.jsonl").read_text().splitlines()]
    refs = [r["response"] for r in rows]
    nw = [M.rouge_l(name_words(r["prompt"]) or "", ref) for r, ref in zip(rows, refs, strict=True)]
    fmt = (lambda p: p) if args.prompt_format is None else __import__("demo_levers").sig_last
    model, tok = load(args.model, "cpu")
    stop = stop_token_ids(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def decode(out, width):
        res = []
        for row in out[:, width:].tolist():
            cut = next((k for k, t in enumerate(row) if t in stop), len(row))
            res.append(tok.decode(row[:cut], skip_special_tokens=True))
        return res

    results = []
    for raw in args.configs:
        c = json.loads(raw)
        t0, preds, bs = time.time(), [], 8
        mnt = c.get("max_new_tokens", 32)
        budget = prompt_budget(model, tok, mnt)
        ours = ("max_new_tokens", "mbr", "temperature", "copy_bias", "contrast", "null")
        hf = {k: v for k, v in c.items() if k not in ours}
        if not hf:  # greedy, MBR and the copy bias: the code the evaluate step runs
            preds = generate(
                model,
                tok,
                [render_prompt(fmt(r["prompt"]), tok) for r in rows],
                max_new_tokens=mnt,
                batch_size=16,
                seed=1234,
                mbr_samples=c.get("mbr", 0),
                mbr_temperature=c.get("temperature", 0.8),
                mbr_utility=M.rouge_l,
                copy_bias=c.get("copy_bias", 0.0),
                contrast=c.get("contrast", 0.0),
                contrast_prompts=[render_prompt(null_prompt(r["prompt"], c["null"]), tok) for r in rows]
                if c.get("null")
                else None,
            )
        for i in range(0, len(rows), bs) if hf else ():
            enc = [encode_prompt(tok, render_prompt(fmt(r["prompt"])), budget)[0] for r in rows[i : i + bs]]
            w = max(map(len, enc))
            ids = torch.full((len(enc), w), pad)
            att = torch.zeros((len(enc), w), dtype=torch.long)
            for j, e in enumerate(enc):
                ids[j, w - len(e) :] = torch.tensor(e)
                att[j, w - len(e) :] = 1
            common = dict(
                input_ids=ids, attention_mask=att, max_new_tokens=mnt, eos_token_id=stop, pad_token_id=pad
            )
            greedy = decode(model.generate(**common, do_sample=False, **hf), w)
            if c.get("mbr"):
                n = c["mbr"]
                torch.manual_seed(1234 + i)
                drawn = decode(
                    model.generate(
                        **common,
                        do_sample=True,
                        temperature=c.get("temperature", 1.0),
                        num_return_sequences=n,
                    ),
                    w,
                )
                greedy = [choose([g, *drawn[j * n : (j + 1) * n]], M.rouge_l) for j, g in enumerate(greedy)]
            preds += greedy
        metrics, _, per, _ = M.score_all(preds, refs, n_boot=0, seed=1234)
        s = [x["rougeL"] for x in per]
        gain = M.paired_lower_bound(s, nw, 1000, 1234, 0.95)
        r = {
            "label": args.label,
            "split": args.split,
            "config": c,
            "rougeL": round(float(np.mean(s)), 4),
            "bleu": round(metrics["bleu"], 2),
            "chrf": round(metrics["chrf"], 2),
            "exact_match": round(metrics["exact_match"], 4),
            "name_words": round(float(np.mean(nw)), 4),
            "gain_over_name_words": gain,
            "mean_words": round(float(np.mean([len(p.split()) for p in preds])), 2),
            "seconds": round(time.time() - t0, 1),
            "load_avg": os.getloadavg()[0],
            "examples": [
                {"prediction": p, "reference": ref} for p, ref in list(zip(preds, refs, strict=True))[:3]
            ],
            "item_rougeL": [round(x, 6) for x in s],  # per item, for paired comparisons across runs
        }
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k not in ("examples", "item_rougeL")}), flush=True)
    out = Path(args.out)
    prev = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(prev + results, indent=2))


if __name__ == "__main__":
    main()
