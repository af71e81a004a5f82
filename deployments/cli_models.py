"""`llmflow models` (the registry: list, show, promote, roll back) and `llmflow generate`
(sample from a registered version or any model directory)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from deployments.cli_app import HomeOpt, app, console, fail, use_home

models_app = typer.Typer(help="The model registry: list, show, promote, roll back.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _registry(home: str | None, name: str):
    from llmflow.registry import Registry
    from llmflow.store import ArtifactStore

    return Registry(ArtifactStore(use_home(home)), name)


NameOpt = Annotated[
    str, typer.Option("--name", envvar="LLMFLOW_MODEL", help="Registered model name (the config's `name`).")
]


@models_app.command("list")
def models_list(home: HomeOpt = None, name: NameOpt = "llmflow") -> None:
    """List registered versions with their aliases and headline metrics."""
    reg = _registry(home, name)
    entries = reg.list()
    if not entries:
        console.print(f"No registered versions of '{name}' yet. Run [bold]llmflow run[/] first.")
        return
    table = Table(title=f"models: {name}")
    for col in ("version", "aliases", "rougeL", "val_bpb", "created"):
        table.add_column(col)
    for e in entries:
        m = e.get("metrics", {})
        table.add_row(
            str(e["version"]),
            ", ".join(e.get("aliases", [])),
            f"{m['rougeL']:.3f}" if isinstance(m.get("rougeL"), int | float) else "",
            f"{m['val_bpb']:.3f}" if isinstance(m.get("val_bpb"), int | float) else "",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(e.get("created", 0))),
        )
    console.print(table)


@models_app.command("show")
def models_show(
    version: Annotated[str, typer.Argument(help="Version or alias.")] = "champion",
    home: HomeOpt = None,
    name: NameOpt = "llmflow",
) -> None:
    """Show one version (or alias) as JSON: lineage, metrics, paths."""
    try:
        entry = _registry(home, name).get(version)
    except ValueError as e:
        fail(str(e), code=1)
    console.print_json(json.dumps(entry, default=str))


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="Version to make champion.")],
    home: HomeOpt = None,
    name: NameOpt = "llmflow",
) -> None:
    """Make a version the champion."""
    try:
        _registry(home, name).promote(version)
    except (KeyError, ValueError) as e:
        fail(str(e), code=1)
    console.print(f"{version} is now the champion of '{name}'.")


@models_app.command("rollback")
def models_rollback(home: HomeOpt = None, name: NameOpt = "llmflow") -> None:
    """Restore the previous champion."""
    try:
        entry = _registry(home, name).rollback()
    except (KeyError, ValueError) as e:
        fail(str(e), code=1)
    console.print(f"Rolled back: {entry['version'] if isinstance(entry, dict) else entry} is the champion.")


@app.command()
def generate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The prompt text.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Registry version/alias or a model directory.")
    ] = "champion",
    max_new_tokens: Annotated[int, typer.Option(min=1, max=4096)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, max=5.0)] = 0.8,
    top_k: Annotated[int | None, typer.Option(min=1)] = 50,
    top_p: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = 0.95,
    raw: Annotated[
        bool, typer.Option("--raw", help="Continue the text as is (no chat prompt format).")
    ] = False,
    num: Annotated[int, typer.Option("--num", "-n", min=1, max=64, help="Number of samples.")] = 1,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    mbr: Annotated[
        int,
        typer.Option(
            "--mbr",
            min=0,
            max=256,
            help="With --temperature 0: minimum Bayes risk decoding over the greedy answer and N "
            "samples (the decoding `evaluate.mbr_samples` measures).",
        ),
    ] = 0,
    home: HomeOpt = None,
    name: NameOpt = "llmflow",
) -> None:
    """Sample from a checkpoint: a registry version or alias, or any model directory."""
    if mbr and temperature > 0:
        fail("--mbr chooses among samples itself: use it with --temperature 0", code=2)
    path = Path(model)
    if not path.exists():
        from llmflow.registry import RegistryError

        try:
            entry = _registry(home, name).get(model)
        except RegistryError as e:
            fail(f"'{model}' is neither a path nor usable in registry '{name}': {e}", code=1)
        path = Path(entry["model_path"])
    from model.adapters import FINETUNE_META, load_finetuned
    from model.chat import format_prompt
    from model.generate import generate as sample
    from model.generate import load, resolve_model_dir

    try:
        weights, _ = resolve_model_dir(path)
        lm, tok = load_finetuned(weights) if (weights / FINETUNE_META).exists() else load(path)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e), code=1)
    text = prompt if raw else format_prompt(prompt)
    outs = sample(
        lm,
        tok,
        [text] * num,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        mbr_samples=mbr,
    )
    for i, out in enumerate(outs):
        if num > 1:
            console.print(f"[bold]--- sample {i + 1}[/]")
        console.print(out, highlight=False, markup=False)
