"""The `pretrain` step: train the base model on packed token shards (model/train.py does the work).

Inputs: `shards` (pack) and `tokenizer`, plus `init` (a `base_model` artifact) when
`pretrain.init_from` names a checkpoint to continue pretraining. Output: `model/` (safetensors + tokenizer files, loadable
with AutoModelForCausalLM/AutoTokenizer), `checkpoints/` (the final checkpoint), `metrics.json`,
`loss.csv`, `loss.png` and a report with samples. The wall-clock figures (seconds, tokens/s, MFU,
energy) go to the manifest's timings and the Prefect UI, not into the files: the same key gives
the same files. While it trains, the loss curve, tokens/s and time left are shown live
(tasks/live_curves.py: a `pretrain-live-curve` artifact and TensorBoard event files).

Checkpoints are written to a work directory outside the staging folder,
`<LLMFLOW_HOME>/work/pretrain/<key>/checkpoints`, so a killed or retried task with the same key
resumes where it stopped instead of starting over. A forced run (`force`) removes that directory
first and starts from step 0 (a Prefect retry of it resumes its own checkpoints); a successful run
removes it too. With several processes or machines (`num_processes`, `num_machines`; DDP or
FSDP by `strategy`) the loop runs under `accelerate launch` as a subprocess (model/launch.py)
whose output streams into the step's logger; its failure fails the step with the subprocess's own
error. On machine `machine_rank` > 0 the step only lends its processes: machine 0 writes the
model, and this machine's artifact is `joined.json`. Checkpoints must then sit on a filesystem
every machine shares (LLMFLOW_HOME), since each process writes its own shards or RNG state.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from llmflow import events
from llmflow.config import PretrainConfig
from llmflow.step import StepContext
from llmflow.store import StepRef, step_key
from model import launch as launcher
from model.train import StepHook
from tasks.base_model import tokenizer_dir
from tasks.common import step_task
from tasks.live_curves import LiveCurves

VERSION = 1
TIMINGS = ("seconds", "tokens_per_s", "mfu", "energy_wh")  # of model.train's metrics
SAMPLE_PROMPTS = ["def ", "The ", "Return the", "import "]


def launch(
    job: dict[str, Any], cfg: PretrainConfig, ctx: StepContext, on_step: StepHook | None = None
) -> None:
    """Run model.train under `accelerate launch` (model/launch.py); stream its output (progress
    and step rows to `ctx.progress` and `on_step`); raise with its error."""
    job_file = Path(job["out"]) / "job.json"
    job_file.write_text(json.dumps(job))
    try:
        cmd = launcher.command("model.train", job_file, cfg)
        launcher.run(
            cmd, cfg.num_processes, ctx.progress, lambda m: ctx.logger.info("%s", m), "pretraining", on_step
        )
    finally:
        job_file.unlink(missing_ok=True)


def plot_loss(csv_path: Path, png_path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(csv_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(df["step"], df["loss"], lw=1, alpha=0.8, label="train loss")
    val = df.dropna(subset=["val_loss"])
    if len(val):
        ax.plot(val["step"], val["val_loss"], "o-", label="validation loss")
        bpb = ax.twinx()
        bpb.plot(val["step"], val["val_bpb"], "s--", color="tab:green", label="validation bpb")
        bpb.set_ylabel("bits per byte")
        bpb.legend(loc="center right")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def samples(model_dir: Path, n_tokens: int = 40) -> list[dict[str, str]]:
    from model.generate import generate, load

    model, tok = load(model_dir, device="cpu")
    greedy = generate(model, tok, SAMPLE_PROMPTS, max_new_tokens=n_tokens)
    topk = generate(model, tok, SAMPLE_PROMPTS, max_new_tokens=n_tokens, temperature=0.8, top_k=40, seed=0)
    return [
        {"prompt": p, "greedy": g, "top_k=40, T=0.8": s}
        for p, g, s in zip(SAMPLE_PROMPTS, greedy, topk, strict=True)
    ]


def pretrain_step(ctx: StepContext) -> dict[str, Any]:
    """Pretrain the base model on packed token shards; resumes from the step's own checkpoints."""
    from model.train import train

    if ctx.force and ctx.work_dir.exists():  # first, before anything can fail: step 0, not resumed
        ctx.logger.info("forced run: removing the earlier run's checkpoints in %s", ctx.work_dir)
        shutil.rmtree(ctx.work_dir)
    cfg: PretrainConfig = ctx.config
    launcher.check_machine(cfg)
    shards, tokenizer = ctx.input_path("shards"), tokenizer_dir(ctx.input_path("tokenizer"))
    init = ctx.input_path("init") / "model" if "init" in ctx.inputs else None
    ckpts = _run_dir(ctx, cfg) / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    job = {
        "config": cfg.model_dump(mode="json"),
        "shards": str(shards),
        "out": str(ctx.out),
        "checkpoints": str(ckpts),
        "tokenizer": str(tokenizer),
        "init_from": None if init is None else str(init),
    }
    with LiveCurves(ctx, f"Pretraining {_title(cfg)}: live") as live:
        if launcher.is_launched(cfg):
            launch(job, cfg, ctx, live)
            if cfg.machine_rank > 0:
                return _joined(cfg, ctx)
            metrics = json.loads((ctx.out / "metrics.json").read_text())
        else:
            metrics = train(
                cfg, shards, ctx.out, ckpts, tokenizer,
                on_progress=ctx.progress, log=lambda m: ctx.logger.info("%s", m), init_from=init,
                on_step=live,
            )  # fmt: skip
        live.final = {
            "step": metrics["steps"],
            "val_loss": metrics["val_loss"],
            "val_bpb": metrics["val_bpb"],
        }
    ctx.timings.update({k: metrics.pop(k) for k in TIMINGS})
    (ctx.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    # the final checkpoint travels with the artifact; the work directory is then released
    last = sorted(ckpts.glob("step-*"))[-1]
    shutil.copytree(last, ctx.out / "checkpoints" / last.name)
    shutil.rmtree(ctx.work_dir, ignore_errors=True)

    plot_loss(ctx.out / "loss.csv", ctx.out / "loss.png", f"{_title(cfg)}: pretraining loss")
    ctx.image(ctx.out / "loss.png", "loss-curve", "Pretraining loss and validation bits per byte")
    rows = samples(ctx.out / "model")
    (ctx.out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ctx.report(_report(cfg, metrics, rows))
    ctx.table([{k: v for k, v in {**metrics, **ctx.timings}.items() if not isinstance(v, dict)}], "metrics")
    return {
        "val_bpb": round(metrics["val_bpb"], 4),
        "val_loss": round(metrics["val_loss"], 4),
        "val_ppl": round(metrics["val_ppl"], 3),
        "steps": metrics["steps"],
        "tokens": metrics["tokens"],
        "params": metrics["params"],
    }


def _title(cfg: PretrainConfig) -> str:
    return f"continued from {cfg.init_from}" if cfg.init_from else f"{cfg.arch}/{cfg.preset}"


def _run_dir(ctx: StepContext, cfg: PretrainConfig) -> Path:
    """The checkpoints' work directory: the step's own, or on several machines machine 0's (its
    key differs only by machine_rank), so every process of the run writes into the same one."""
    if cfg.machine_rank == 0:
        return ctx.work_dir
    machine0 = cfg.model_copy(update={"machine_rank": 0})
    key = step_key(
        ctx.step, VERSION, machine0, {k: v.key for k, v in ctx.inputs.items()}, ctx.extra, code=ctx.code
    )
    return ctx.work_dir.parent / key


def _joined(cfg: PretrainConfig, ctx: StepContext) -> dict[str, Any]:
    """Machine `machine_rank` > 0 lent its processes to a run whose outputs machine 0 writes
    (machine 0's step removes the shared checkpoints)."""
    stats = {
        "machine_rank": cfg.machine_rank,
        "num_machines": cfg.num_machines,
        "joined": cfg.main_process_ip,
    }
    (ctx.out / "joined.json").write_text(json.dumps(stats, indent=2))
    ctx.report(
        f"# Pretraining: machine {cfg.machine_rank} of {cfg.num_machines}\n\n"
        f"This machine ran {cfg.num_processes} of the run's processes; the model, metrics and "
        f"checkpoints are written by machine 0 ({cfg.main_process_ip}).\n"
    )
    return stats


def _report(cfg: PretrainConfig, m: dict[str, Any], rows: list[dict[str, str]]) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", "⏎")[:120]

    lines = [
        f"# Pretraining: {_title(cfg)}",
        "",
        f"{m['params'] / 1e6:.2f}M parameters, {m['steps']} steps, {m['tokens']:,} tokens on "
        f"{m['hardware']} ({m['num_processes']} process(es), precision {m['mixed_precision']}).",
        "",
        "| metric | value |",
        "|---|---|",
        f"| validation bits per byte | {m['val_bpb']:.4f} |",
        f"| validation loss (nats/token) | {m['val_loss']:.4f} |",
        f"| validation perplexity | {m['val_ppl']:.2f} |",
        f"| training FLOPs | {m['flops']:.3g} |",
        "",
        "## Samples",
        "",
        "| prompt | greedy | top-k 40, T 0.8 |",
        "|---|---|---|",
        *[f"| {cell(r['prompt'])} | {cell(r['greedy'])} | {cell(r['top_k=40, T=0.8'])} |" for r in rows],
        "",
        "Files: `model/` (AutoModelForCausalLM + tokenizer), `checkpoints/`, `metrics.json`, `loss.csv`, `loss.png`. "
        "Throughput (tokens/s, MFU, energy) is in the metrics table and the manifest's timings.",
    ]
    return "\n".join(lines) + "\n"


def _events(ref: StepRef) -> list[tuple[str, str, dict[str, Any]]]:
    if "joined" in ref.stats:  # machine > 0 of a multi-machine run: machine 0 announces the model
        return []
    payload = {
        "key": ref.key,
        "uri": ref.uri,
        **{k: ref.stats.get(k) for k in ("val_bpb", "params", "tokens")},
    }
    return [(events.MODEL_PRETRAINED, events.resource_id("model", ref.key[:12]), payload)]


pretrain = step_task("pretrain", VERSION, pretrain_step, events=_events)
