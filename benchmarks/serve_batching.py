"""Latency and throughput of /v1/chat/completions with and without batching of concurrent requests.

Serves a randomly initialised model of a preset (`--preset small`, the demo's; the tokenizer of
tests/helpers.py) from a registry, with `llmflow`'s `run()` under uvicorn on loopback, once per
`serve.max_batch_size` (1 = one request at a time, the unbatched path), and sends greedy chat
completions of `--max-tokens` from 1, 8 and 32 concurrent clients (threads, one connection each).

    python benchmarks/serve_batching.py [--preset small] [--batch-sizes 1,8,32] [--clients 1,8,32] \
        [--wait-ms 0] [--max-tokens 32]

Writes benchmarks/results/serve-batching.json and prints a table: p50 and p95 latency of a
request, requests and completion tokens per second. Wall-clock figures: run it on a quiet machine
(the load average is recorded with them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_model(base: Path, preset: str, seq_len: int) -> str:
    import torch
    from transformers import AutoTokenizer

    from model.presets import build_config, build_model
    from tests.helpers import tiny_tokenizer_dir

    tok_dir = tiny_tokenizer_dir(base / "tok")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = build_config(
        preset,
        len(tok),
        seq_len=seq_len,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    out = base / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def serve(home: Path, port: int, batch: int, wait_ms: float, max_tokens: int, log: Path) -> subprocess.Popen:
    settings = f"max_batch_size={batch}, batch_wait_ms={wait_ms}, max_new_tokens={max_tokens}"
    code = (
        "from deployments.service import run; from llmflow.config import ServeConfig; "
        f"run(ServeConfig({settings}, reload_interval_seconds=3600), "
        f"port={port}, home={str(home)!r}, name='bench', log_level='warning')"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(LLMFLOW_HOME=str(home), PYTHONPATH=str(ROOT))
    env.pop("LLMFLOW_SERVE_TOKEN", None)
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=out, stderr=out)


def wait_up(url: str, proc: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).json()["model_loaded"]:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the service did not come up within 120 s")


PROMPTS = [
    "def add(a, b): return a + b",
    "open a file for reading",
    "sort the items by key and return the length of the sequence",
    "parse a string into an integer",
    "split the line on whitespace",
    "check whether the object is callable",
    "convert the value to a float and write text to a stream",
    "make a new directory",
]


def load(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    """`requests` greedy chat completions from `clients` threads; latency and throughput."""
    import httpx

    latencies: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client(k: int) -> None:
        with httpx.Client(timeout=300) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body = {
                    "model": "bench",
                    "messages": [{"role": "user", "content": PROMPTS[(i + k) % len(PROMPTS)]}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                }
                t0 = time.perf_counter()
                r = http.post(f"{url}/v1/chat/completions", json=body)
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code != 200:
                        errors.append(r.text[:200])
                    else:
                        latencies.append(dt)
                        tokens.append(r.json()["usage"]["completion_tokens"])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(lat),
        "errors": errors,
        "p50_s": statistics.median(lat),
        "p95_s": lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))],
        "requests_per_s": len(lat) / wall,
        "tokens_per_s": sum(tokens) / wall,
        "mean_completion_tokens": sum(tokens) / len(tokens),
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--wait-ms", type=float, default=0.0, help="serve.batch_wait_ms")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--min-requests", type=int, default=16, help="per level; at least 2 per client")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve-batching.json"))
    args = ap.parse_args()

    import torch

    from llmflow.registry import Registry
    from llmflow.store import ArtifactStore
    from tests.livestack import free_port

    base = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    home = base / "home"
    reg = Registry(ArtifactStore(home), "bench")
    reg.promote(reg.register("bench", build_model(base, args.preset, seq_len=256)))
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        port, log = free_port(), base / f"serve-{batch}.log"
        proc = serve(home, port, batch, args.wait_ms, args.max_tokens, log)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_up(url, proc, log)
            load(url, 2, 4, args.max_tokens)  # warm up
            for clients in [int(c) for c in args.clients.split(",")]:
                requests = max(args.min_requests, 2 * clients)
                row = {"max_batch_size": batch, **load(url, clients, requests, args.max_tokens)}
                rows.append(row)
                print(
                    f"batch {batch:>2}  clients {clients:>2}  p50 {row['p50_s']:6.3f} s  p95 {row['p95_s']:6.3f} s  "
                    f"{row['requests_per_s']:6.2f} req/s  {row['tokens_per_s']:7.1f} tok/s"
                    + (f"  errors {len(row['errors'])}" if row["errors"] else ""),
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result = {
        "preset": args.preset,
        "max_tokens": args.max_tokens,
        "batch_wait_ms": args.wait_ms,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n| max_batch_size | clients | p50 s | p95 s | req/s | tok/s |\n|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['max_batch_size']} | {r['clients']} | {r['p50_s']:.3f} | {r['p95_s']:.3f} | "
            f"{r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
