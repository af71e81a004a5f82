"""Minimum Bayes risk decoding's candidate pool, sampled once and re-scored offline.

    python benchmarks/demo_mbr_pool.py sample MODEL TASK_DIR OUT.json [--split test] [--samples 32]
    python benchmarks/demo_mbr_pool.py score MODEL POOL.json [--null empty frame]
    python benchmarks/demo_mbr_pool.py compare A.json [B.json ...] [--out results.json]

`sample` decodes every item of TASK_DIR's split as the evaluate step does (`model.generate.generate`:
greedy + N samples at temperature 0.8, copy bias 2, seed 1234) and keeps every candidate, the
greedy answer first. `compare` scores, per pool file, with the project's ROUGE-L: greedy, MBR over
the greedy answer and the first 16 samples (`mbr16a`), the greedy answer and the last 16
(`mbr16b`: the same decoding on other draws, i.e. the sampling noise of one MBR-16 run), all 32
(`mbr32`), the best candidate (an oracle, the pool's headroom), and two rerankers (MBR score plus
a weight times the candidate's ROUGE-1 precision against the prompt, or times its length in
words); after `score` (each candidate's log-likelihood given the prompt and given null prompts),
likelihood rerankers too: the most likely candidate per token, the highest pointwise mutual
information with the prompt, and MBR plus a weight times that PMI. With two files of the same
items (`A.json+B.json`) it also scores their union (an MBR ensemble of two fine-tunes) and pairs A
against B per selection rule (one-sided paired bootstrap, 95%, 1,000 resamples). Use a
`demo_levers.py --cv-fold` evaluation task (its test split is the held-out fold): the levers never
look at the task's test split.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import cache, lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.mbr import choose, utility_sums  # noqa: E402


def sample(args) -> None:
    import model.mbr as mbr
    from model.generate import generate, load
    from model.sft_data import render_prompt

    rows = [json.loads(x) for x in (Path(args.task) / f"{args.split}.jsonl").read_text().splitlines()]
    pools: list[list[str]] = []
    choose = mbr.choose

    def keep(candidates, utility=None, evidence=()):  # generate() imports model.mbr.choose at call time
        pools.append(list(candidates))
        return choose(candidates, utility, evidence)

    mbr.choose = keep
    model, tok = load(args.model, "cpu")
    generate(
        model,
        tok,
        [render_prompt(r["prompt"], tok) for r in rows],
        max_new_tokens=32,
        batch_size=16,
        seed=1234,
        mbr_samples=args.samples,
        mbr_temperature=0.8,
        copy_bias=2.0,
    )
    out = [
        {"id": r["id"], "prompt": r["prompt"], "ref": r["response"], "cands": c}
        for r, c in zip(rows, pools, strict=True)
    ]
    Path(args.out).write_text(json.dumps(out))


def null_prompt(prompt: str, kind: str) -> str:
    """The prompt without its evidence: `empty`, or `frame` (the signature line and the name-words
    line of `signature_first_name_words`, the docstring body dropped)."""
    if kind not in ("empty", "frame"):
        raise ValueError(f"null prompt {kind!r}: expected 'empty' or 'frame'")
    if kind == "empty":
        return ""
    lines = prompt.split("\n")
    return "\n".join([lines[0], lines[-1]]) if len(lines) > 2 else lines[0]


def score(args) -> None:
    """Add each candidate's log-likelihood under MODEL to a pool file: `lp` given the prompt,
    `lp_<null>` given a null prompt (see `null_prompt`), `ntok` its answer tokens (end and eos
    included), teacher-forced as the fine-tune encodes a pair (`model.sft_data.encode_pair`)."""
    import torch

    from model.generate import load
    from model.sft_data import encode_pair, render_prompt

    model, tok = load(args.model, "cpu")
    pools = json.loads(Path(args.pool).read_text())
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @torch.no_grad()
    def logliks(pairs: list[tuple[str, str]]) -> tuple[list[float], list[int]]:
        enc = [encode_pair(tok, render_prompt(p, tok), c, 256) for p, c in pairs]
        width = max(len(ids) for ids, _, _ in enc)
        ids = torch.full((len(enc), width), pad)
        labels = torch.full((len(enc), width), -100)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for i, (x, y, _) in enumerate(enc):
            ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        logp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
        tgt = labels[:, 1:]
        lp = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (tgt != -100)
        return lp.sum(-1).tolist(), (tgt != -100).sum(-1).tolist()

    for k, pool in enumerate(pools):
        cands = pool["cands"]
        pool["lp"], pool["ntok"] = logliks([(pool["prompt"], c) for c in cands])
        for kind in args.null:
            pool[f"lp_{kind}"] = logliks([(null_prompt(pool["prompt"], kind), c) for c in cands])[0]
        if k % 50 == 0:
            print(f"{k}/{len(pools)}", flush=True)
    Path(args.pool).write_text(json.dumps(pools))


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)


@cache
def _precision1(a: str, b: str) -> float:
    """ROUGE-1 precision of a against b, stemming on."""
    return _scorer().score(b, a)["rouge1"].precision  # rouge-score's order: (target, prediction)


def _mbr_scores(cands: list[str]) -> list[float]:
    """MBR's mean utility per candidate (`model.mbr.utility_sums`, ROUGE-L)."""
    return [s / max(1, len(cands) - 1) for s in utility_sums(cands)]


def _pick(cands: list[str], extra=None) -> str:
    """MBR's choice (`model.mbr.choose`, ROUGE-L); with `extra`, its mean utility plus extra(candidate)."""
    if extra is None:
        return choose(cands)
    scores = [s + extra(c) for s, c in zip(_mbr_scores(cands), cands, strict=True)]
    return cands[max(range(len(cands)), key=lambda i: (scores[i], -i))]


def _evidence_rules(c: list[str], evidence: dict[str, list[str]]) -> dict[str, str]:
    """MBR over all candidates weighing extra evidence that is not the model's (`model.mbr.choose`'s
    `evidence`, as the evaluate step decodes): `nw` the function's name as words
    (`tasks.baselines.name_words`), `nnK` the summaries of the K most TF-IDF-similar train items
    (the fold's train split, other modules). The pick is always one of the model's candidates."""
    out = {}
    for tag, refs in evidence.items():
        for w in (0.1, 0.2, 0.3, 0.5, 1.0):
            if refs:
                out[f"mbr32+{tag}x{w}"] = choose(c, evidence=[(w, refs)])
    for a in (0.2, 0.3):  # both: the name and the neighbours
        for b in (0.5, 1.0):
            out[f"mbr32+nwx{a}+nn10x{b}"] = choose(c, evidence=[(a, evidence["nw"]), (b, evidence["nn10"])])
    return out


def rules(pool: dict, evidence: dict[str, list[str]] | None = None) -> dict[str, str]:
    c, prompt = pool["cands"], pool["prompt"]
    n = (len(c) - 1) // 2
    out = {
        "greedy": c[0],
        "mbr16a": _pick(c[: n + 1]),
        "mbr16b": _pick([c[0], *c[n + 1 :]]),
        "mbr32": _pick(c),
        "mbr16a+faith0.2": _pick(c[: n + 1], lambda x: 0.2 * (_precision1(x, prompt) if x.strip() else 0.0)),
        "mbr16a+len0.01": _pick(c[: n + 1], lambda x: 0.01 * len(x.split())),
    }
    if evidence:
        out.update(_evidence_rules(c, evidence))
    if "lp" in pool:  # likelihood rerankers (`score`): per-token log p, and PMI against null prompts
        lp = dict(zip(c, pool["lp"], strict=True))
        nt = dict(zip(c, pool["ntok"], strict=True))
        out["lp/tok"] = max(c[: n + 1], key=lambda x: lp[x] / nt[x])
        for kind in [k[3:] for k in pool if k.startswith("lp_")]:
            lp0 = dict(zip(c, pool[f"lp_{kind}"], strict=True))
            out[f"pmi_{kind}"] = max(c[: n + 1], key=lambda x: lp[x] - lp0[x])
            for beta in (0.01, 0.02, 0.05, 0.1):
                for sub, cands in (("16a", c[: n + 1]), ("16b", [c[0], *c[n + 1 :]])):
                    out[f"mbr{sub}+pmi_{kind}/tok{beta}"] = _pick(
                        cands, lambda x, b=beta, d=lp0: b * (lp[x] - d[x]) / nt[x]
                    )
                    out[f"mbr{sub}+pmi_{kind}{beta}"] = _pick(
                        cands, lambda x, b=beta, d=lp0: b * (lp[x] - d[x])
                    )
    return out


def _evidence(pools: list[dict], train_dir: str | None) -> list[dict[str, list[str]]]:
    """Per item, {tag: evidence answers} for `_evidence_rules`; empty without `--train`. The
    neighbours come from `tasks.baselines.TfidfIndex`, as `tasks.mbr_evidence` finds them."""
    if not train_dir:
        return [{} for _ in pools]
    from tasks.baselines import TfidfIndex, name_words

    train = [json.loads(x) for x in (Path(train_dir) / "train.jsonl").read_text().splitlines()]
    index = TfidfIndex([r["prompt"] for r in train])
    out = []
    for p in pools:
        near = [train[i]["response"] for i in index.top(p["prompt"], 10)]
        words = name_words(p["prompt"])
        out.append({"nw": [words] if words else [], **{f"nn{k}": near[:k] for k in (1, 5, 10)}})
    return out


def compare(args) -> None:
    import numpy as np

    from tasks import metrics as M

    results = {}
    for spec in args.pools:
        names = spec.split("+")
        files = [json.loads(Path(f).read_text()) for f in names]
        refs = [p["ref"] for p in files[0]]
        per: dict[str, dict[str, list[float]]] = {}
        for name, pools in zip(names, files, strict=True):
            assert [p["id"] for p in pools] == [p["id"] for p in files[0]], "pools of different items"
            picks = [rules(p, e) for p, e in zip(pools, _evidence(pools, args.train), strict=True)]
            per[name] = {k: [M.rouge_l(x[k], r) for x, r in zip(picks, refs, strict=True)] for k in picks[0]}
            per[name]["oracle"] = [
                max(M.rouge_l(c, r) for c in p["cands"]) for p, r in zip(pools, refs, strict=True)
            ]
        row = {n: {k: round(float(np.mean(v)), 4) for k, v in s.items()} for n, s in per.items()}
        from tasks.baselines import name_words

        nws = [M.rouge_l(name_words(p["prompt"]) or "", r) for p, r in zip(files[0], refs, strict=True)]
        row["name_words"] = round(float(np.mean(nws)), 4)
        for n, s in per.items():  # MBR-32 and each evidence rule against the name as words, paired
            row[f"{n} vs name_words"] = {
                k: M.paired_lower_bound(v, nws, 1000, 1234, 0.95)
                for k, v in s.items()
                if k.startswith("mbr32")
            }
        for n, s in per.items():  # each evidence rule against plain MBR-32, paired per item
            row[f"{n} vs mbr32"] = {
                k: M.paired_lower_bound(v, s["mbr32"], 1000, 1234, 0.95)
                for k, v in s.items()
                if k.startswith("mbr32+")
            }
        if len(files) == 2:  # an ensemble: one MBR over both models' candidates
            union = [_pick(a["cands"] + b["cands"]) for a, b in zip(*files, strict=True)]
            scores = [M.rouge_l(x, r) for x, r in zip(union, refs, strict=True)]
            row["ensemble: both pools"] = round(float(np.mean(scores)), 4)
            a, b = per[names[0]], per[names[1]]
            row["A - B"] = {k: M.paired_lower_bound(a[k], b[k], 1000, 1234, 0.95) for k in a if k != "oracle"}
        results[spec] = {"items": len(refs), **row}
        print(json.dumps({spec: results[spec]}, indent=1), flush=True)
    if args.out:
        prev = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
        Path(args.out).write_text(json.dumps({**prev, **results}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("model")
    s.add_argument("task")
    s.add_argument("out")
    s.add_argument("--split", default="test")
    s.add_argument("--samples", type=int, default=32)
    sc = sub.add_parser("score")
    sc.add_argument("model")
    sc.add_argument("pool")
    sc.add_argument("--null", nargs="+", default=["empty", "frame"], choices=["empty", "frame"])
    c = sub.add_parser("compare")
    c.add_argument("pools", nargs="+", help="a pool file, or A.json+B.json to pair two")
    c.add_argument("--out", default=None)
    c.add_argument(
        "--train", default=None, help="a task folder whose train.jsonl gives the retrieval evidence"
    )
    args = ap.parse_args()
    {"sample": sample, "score": score, "compare": compare}[args.cmd](args)


if __name__ == "__main__":
    main()
