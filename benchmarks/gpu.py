"""Training throughput, MFU and peak memory of the ~125M preset, and what a sliding window saves.

    .venv/bin/python benchmarks/gpu.py                      # GPU: seq 2048, windows full,1024,256
    .venv/bin/python benchmarks/gpu.py --seq 512 --steps 2  # CPU: the defaults are already small

For each attention span (`full`, then each window) it times optimizer steps (forward, backward,
AdamW) of the `gpt125m` preset (Qwen3 layout, 12 x 768) in bf16 autocast under `torch.compile`:
full attention through fused SDPA (`is_causal`), windows through flex attention with a block
mask (model/flex.py), which skips the blocks outside the window, so the step gets cheaper as the
window shrinks. A second table times the attention kernel alone (forward + backward) per span,
where the saving is not diluted by the MLPs.

MFU = achieved training FLOP/s / the device's dense bf16 peak. GPUs: the datasheet figure from
GPU_PEAK_BF16 (dense, no sparsity). CPU: no datasheet applies, so the peak is MEASURED: the best
of bf16 and fp32 square matmuls on all the process's threads (`measure_cpu_peak`). FLOPs per token
are model.train's (6N + 12 L d span, span = min(seq, window)). Peak memory: CUDA's max allocated
per configuration; on CPU the process's peak RSS so far (it only grows). Writes a JSON file and
prints markdown tables; the host's load average is recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import flex  # noqa: E402
from model.presets import build_config, build_model  # noqa: E402
from model.train import flops_per_token  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s, no 2:4 sparsity) from NVIDIA's datasheets; matched by
# substring of torch.cuda.get_device_name(), most specific first.
GPU_PEAK_BF16 = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("GH200", 989e12),
    ("A100", 312e12),
    ("A10G", 70e12),  # AWS's A10G (lower clocks than the A10)
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("RTX 6000 Ada", 364e12),
    ("A6000", 155e12),
    ("4090", 165e12),  # with fp32 accumulation, as training uses
    ("3090", 71e12),
]


def gpu_peak(name: str) -> float | None:
    return next((peak for key, peak in GPU_PEAK_BF16 if key in name), None)


def measure_cpu_peak(n: int = 1024, seconds: float = 2.0) -> dict[str, float]:
    """Best sustained FLOP/s of n x n matmuls on this process's threads, bf16 and fp32."""
    out = {}
    for dtype in (torch.bfloat16, torch.float32):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)
        best, t_end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            for _ in range(4):
                torch.mm(a, b)
            best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t))
        out[str(dtype).split(".")[-1]] = best
    return out


def device_info() -> dict:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = gpu_peak(name)
        return {"device": "cuda", "name": name, "peak_flops": peak,
                "peak_source": "datasheet (dense bf16)" if peak else "unknown GPU: no MFU"}  # fmt: skip
    measured = measure_cpu_peak()
    return {
        "device": "cpu",
        "name": f"CPU, {torch.get_num_threads()} threads",
        "peak_flops": max(measured.values()),
        "peak_source": "measured matmul "
        + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in measured.items()),
    }


def _sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def _peak_mem(dev: str) -> float:
    if dev == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def train_steps(
    preset: str, seq: int, batch: int, steps: int, window: int | None, compile: bool, dev: str, train: bool
) -> dict:
    """Time `steps` optimizer steps (or forwards, `train=False`) after two warm-up ones (compilation
    happens there)."""
    torch.manual_seed(0)
    vocab = 50_304
    config = build_config(preset, vocab, seq_len=seq, sliding_window=window)
    attention = flex.FLEX if window is not None else "sdpa"
    if attention == flex.FLEX and not compile and train:
        raise SystemExit("a window needs --compile: uncompiled flex attention has no backward")
    model = build_model(config, attention=attention).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev == "cuda")
    step_fn = torch.compile(model) if compile else model
    x = torch.randint(0, vocab, (batch, seq), device=dev)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        if not train:
            with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16):
                step_fn(input_ids=x, labels=x)
            return
        with torch.autocast(dev, dtype=torch.bfloat16):
            loss = step_fn(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(2):
        step()
    _sync(dev)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    dt = (time.perf_counter() - t0) / steps
    tps = batch * seq / dt
    return {
        "window": window or "full", "attention": attention, "seq": seq, "batch": batch, "steps": steps,
        "step_s": round(dt, 4), "tokens_per_s": round(tps, 1), "warmup_s": round(warm, 1),
        "pass": "train" if train else "forward",
        "flops_per_token": flops_per_token(model, seq) / (1 if train else 3), "peak_mem_gib": round(_peak_mem(dev), 3),
    }  # fmt: skip


def attention_kernel(
    seq: int, heads: int, head_dim: int, batch: int, window: int | None, dev: str, reps: int, train: bool
) -> dict:
    """Forward (+ backward when `train`) of the attention alone: SDPA causal for full, compiled
    flex for windows."""
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    q, k, v = (torch.randn(batch, heads, seq, head_dim, device=dev, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))  # fmt: skip
    if not train:
        q, k, v = (t.detach() for t in (q, k, v))
    if window is None:

        def run():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        density = 1.0
    else:

        def sliding(b, h, qi, ki):
            return (ki <= qi) & (qi - ki < window)

        mask = create_block_mask(sliding, None, None, seq, seq, device=dev)
        fn = torch.compile(flex_attention, dynamic=False)
        n = mask.kv_num_blocks.shape[-1]  # query blocks
        full = mask.full_kv_num_blocks.sum().item() if mask.full_kv_num_blocks is not None else 0
        density = (mask.kv_num_blocks.sum().item() + full) / (n * (n + 1) / 2)

        def run():
            return fn(q, k, v, block_mask=mask)

    def once() -> None:
        out = run()
        if train:
            out.sum().backward()

    for _ in range(2):
        once()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        once()
    _sync(dev)
    return {"window": window or "full", "ms": round(1000 * (time.perf_counter() - t0) / reps, 3),
            "blocks_vs_causal": round(density, 3)}  # fmt: skip


def failed(window: int | None, e: Exception) -> dict:
    """A span that could not be measured (e.g. torch 2.13's inductor fails to build the CPU flex
    kernel for a window smaller than its 128-token block): its row says why instead of a figure."""
    first = next((line for line in str(e).splitlines() if "error" in line.lower()), str(e).split("\n")[0])
    return {"window": window or "full", "error": f"{type(e).__name__}: {first.strip()[:160]}"}


def main() -> None:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="gpt125m")
    p.add_argument("--seq", type=int, default=2048 if gpu else 1024)
    p.add_argument("--batch", type=int, default=8 if gpu else 1)
    p.add_argument("--steps", type=int, default=20 if gpu else 2)
    p.add_argument("--windows", default="1024,256" if gpu else "256,64", help="comma-separated spans")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="SDPA only (no windows)")
    p.add_argument("--skip-model", action="store_true", help="only the attention-kernel table")
    p.add_argument(
        "--forward-only", action="store_true", default=not gpu,
        help="time forwards only (the CPU default: torch 2.13's flex attention has no backward on CPU)",
    )  # fmt: skip
    p.add_argument(
        "--out", default="benchmarks/results/gpu-cuda.json" if gpu else "benchmarks/results/gpu-cpu.json"
    )
    args = p.parse_args()
    dev = "cuda" if gpu else "cpu"
    if not gpu:
        print(
            "no CUDA device: running on CPU (small seq and steps, forward only; not GPU figures)", flush=True
        )
    info = device_info()
    print(f"{info['name']}: peak {info['peak_flops'] or 0:.3g} FLOP/s ({info['peak_source']})", flush=True)
    windows = [None] + [int(w) for w in args.windows.split(",") if w]
    if not args.compile:
        windows = [None]
    result = {"host": info, "load_avg_1_5_15": os.getloadavg(), "torch": torch.__version__,
              "args": vars(args), "model": [], "attention": []}  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.skip_model:
        for w in windows:
            try:
                r = train_steps(
                    args.preset, args.seq, args.batch, args.steps, w, args.compile, dev, not args.forward_only
                )
            except Exception as e:  # noqa: BLE001 - one span failing (a compiler bug) must not lose the others
                r = failed(w, e)
                result["model"].append(r)
                print(json.dumps(r), flush=True)
                continue
            r["mfu"] = (
                round(r["tokens_per_s"] * r["flops_per_token"] / info["peak_flops"], 4)
                if info["peak_flops"]
                else None
            )
            result["model"].append(r)
            print(json.dumps(r), flush=True)
            out.write_text(json.dumps(result, indent=2))
    c = build_config(args.preset, 2, seq_len=args.seq)
    for w in windows if args.compile else []:
        try:
            r = attention_kernel(
                args.seq,
                c.num_attention_heads,
                c.head_dim,
                args.batch,
                w,
                dev,
                5 if gpu else 2,
                not args.forward_only,
            )
        except Exception as e:  # noqa: BLE001
            r = failed(w, e)
        result["attention"].append(r)
        print(json.dumps(r), flush=True)
        out.write_text(json.dumps(result, indent=2))
    result["load_avg_after"] = os.getloadavg()
    out.write_text(json.dumps(result, indent=2))
    what = "forward only" if args.forward_only else "training steps (forward, backward, AdamW)"
    print(f"\n{info['name']}, {args.preset}, seq {args.seq}, batch {args.batch}, bf16 autocast, "
          f"compile={args.compile}, {what}; load average {result['load_avg_1_5_15'][0]:.1f}\n")  # fmt: skip
    print("| attention | tokens/s | step s | MFU | peak memory GiB | warm-up s |\n|---|---|---|---|---|---|")
    for r in result["model"]:
        if "error" in r:
            print(f"| {r['window']} | failed: {r['error']} | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"| {r['window']} ({r['attention']}) | {r['tokens_per_s']:,.0f} | {r['step_s']} | {mfu} | "
              f"{r['peak_mem_gib']} | {r['warmup_s']} |")  # fmt: skip
    print(
        f"\n| attention alone | {'fwd' if args.forward_only else 'fwd+bwd'} ms | blocks computed vs causal |\n|---|---|---|"
    )
    for r in result["attention"]:
        print(
            f"| {r['window']} | {r.get('ms', 'failed: ' + r.get('error', ''))} | {r.get('blocks_vs_causal', '')} |"
        )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
