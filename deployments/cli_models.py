"""`llmflow models` (the registry: list, show, promote, roll back, export) and `llmflow generate`
(sample from a registered version or any model directory)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from deployments.cli_app import HomeOpt, app, console, err_console, fail, use_home

models_app = typer.Typer(
    help="The model registry: list, show, promote, roll back, export.", no_args_is_help=True
)
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
    for col in ("version", "aliases", "rougeL", "val_bpb", "created", "erased"):
        table.add_column(col)
    for e in entries:
        m = e.get("metrics", {})
        table.add_row(
            str(e["version"]),
            ", ".join(e.get("aliases", [])),
            f"{m['rougeL']:.3f}" if isinstance(m.get("rougeL"), int | float) else "",
            f"{m['val_bpb']:.3f}" if isinstance(m.get("val_bpb"), int | float) else "",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(e.get("created", 0))),
            _erased(e.get("erased")),
        )
    console.print(table)
    if any(e.get("erased") for e in entries):
        console.print("Erased: trained on data an erasure request removed (README, 'Removing data').")


def _erased(erased: dict | None) -> str:
    """The `erased` column: the requests and whether the artifacts are deleted yet."""
    if not erased:
        return ""
    state = "purged" if erased.get("purged") else "ERASED"
    return f"{state} ({', '.join(erased.get('requests', []))})"


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
    reg = _registry(home, name)
    try:
        reg.promote(version)
    except (KeyError, ValueError) as e:
        fail(str(e), code=1)
    console.print(f"{version} is now the champion of '{name}'.")
    _mirror(reg)


@models_app.command("rollback")
def models_rollback(home: HomeOpt = None, name: NameOpt = "llmflow") -> None:
    """Restore the previous champion."""
    reg = _registry(home, name)
    try:
        entry = reg.rollback()
    except (KeyError, ValueError) as e:
        fail(str(e), code=1)
    console.print(f"Rolled back: {entry['version'] if isinstance(entry, dict) else entry} is the champion.")
    _mirror(reg)


def _mirror(reg) -> None:
    """Move the MLflow aliases too when MLFLOW_TRACKING_URI is set (llmflow/mlflow_registry.py). The
    registry has changed either way: a tracking failure is a warning, not the command's failure."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return
    from llmflow.mlflow_registry import mirror_from_env

    try:
        numbers = mirror_from_env(reg)
    except Exception as e:  # an MLflow server that is down must not undo or fail the promotion
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        err_console.print(
            f"[yellow]warning:[/] MLflow not updated ({type(e).__name__}: {first[:300]})",
            highlight=False,
            soft_wrap=True,
        )
        return
    champion = next((e["version"] for e in reg.list() if "champion" in e["aliases"]), None)
    if champion is not None and numbers:
        console.print(
            f"MLflow: '{reg.name}' alias champion -> version {numbers[str(champion)]}",
            highlight=False,
            soft_wrap=True,
        )


@models_app.command("export")
def models_export(
    version: Annotated[str, typer.Argument(help="Version or alias.")],
    out_dir: Annotated[Path, typer.Argument(metavar="DIR", help="A new (or empty) folder to write.")],
    push: Annotated[
        str | None,
        typer.Option("--push", metavar="REPO", help="Then upload it to this Hub repository (OWNER/NAME)."),
    ] = None,
    public: Annotated[bool, typer.Option("--public", help="Create the Hub repository public.")] = False,
    home: HomeOpt = None,
    name: NameOpt = "llmflow",
) -> None:
    """Write a version as a folder ready for `huggingface-cli upload`: safetensors weights, tokenizer
    and chat template, model card with the evaluation results, and the adapter when there is one."""
    from llmflow.config import InputError
    from llmflow.export import check_repo_id, export_version, hub_token
    from llmflow.export import push as push_folder
    from llmflow.registry import RegistryError

    try:
        token = None
        if push is not None:  # before any work: a bad repository or no token is one line
            check_repo_id(push)
            token = hub_token()
        entry = _registry(home, name).get(version)
        folder = export_version(_registry(home, name), entry["version"], out_dir)
    except RegistryError as e:
        fail(str(e), code=1)
    except InputError as e:
        fail(str(e))
    console.print(f"Exported {name} v{entry['version']} to {folder}", highlight=False, soft_wrap=True)
    if push is None:
        return
    try:
        url = push_folder(folder, push, token, entry["version"], private=not public)
    except Exception as e:  # the Hub's errors (auth, network, offline mode) are the user's to act on
        fail(f"push to {push} failed: {str(e).splitlines()[0]}", code=1)
    console.print(f"Pushed to {url}", highlight=False, soft_wrap=True)


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
    copy_bias: Annotated[
        float,
        typer.Option(
            "--copy-bias",
            min=0.0,
            max=20.0,
            help="Add this to the logits of the prompt's own tokens (the decoding `evaluate.copy_bias` "
            "measures); 0 = off.",
        ),
    ] = 0.0,
    mbr_name_weight: Annotated[
        float,
        typer.Option(
            "--mbr-name-weight",
            min=0.0,
            max=10.0,
            help="With --mbr: the choice also weighs the function's name as words, this much "
            "(`evaluate.mbr_name_weight`).",
        ),
    ] = 0.0,
    mbr_neighbors: Annotated[
        int,
        typer.Option(
            "--mbr-neighbors",
            min=0,
            max=100,
            help="With --mbr: the choice also weighs the responses of the N most similar items of the "
            "model's own train split, found through its artifact (`evaluate.mbr_neighbors`).",
        ),
    ] = 0,
    mbr_neighbor_weight: Annotated[
        float, typer.Option("--mbr-neighbor-weight", min=0.0, max=10.0, help="The neighbours' weight.")
    ] = 0.0,
    home: HomeOpt = None,
    name: NameOpt = "llmflow",
) -> None:
    """Sample from a checkpoint: a registry version or alias, or any model directory."""
    if mbr and temperature > 0:
        fail("--mbr chooses among samples itself: use it with --temperature 0", code=2)
    if bool(mbr_neighbors) != bool(mbr_neighbor_weight):
        fail("--mbr-neighbors and --mbr-neighbor-weight go together: set both or neither", code=2)
    if (mbr_name_weight or mbr_neighbors) and not mbr:
        fail("--mbr-name-weight / --mbr-neighbors weigh MBR's choice: use them with --mbr N", code=2)
    path = Path(model)
    if not path.exists():
        from llmflow.registry import RegistryError

        try:
            entry = _registry(home, name).get(model)
        except RegistryError as e:
            fail(f"'{model}' is neither a path nor usable in registry '{name}': {e}", code=1)
        path = Path(entry["model_path"])
    evidence = None
    if mbr_name_weight or mbr_neighbors:  # before the model loads: a missing split fails fast
        from llmflow.store import ArtifactStore
        from tasks.mbr_evidence import MbrEvidence, train_rows_of_model

        rows = train_rows_of_model(path, ArtifactStore(home)) if mbr_neighbors else []
        if mbr_neighbors and not rows:
            fail(
                f"--mbr-neighbors: {path} has no train split in the artifact store (not a fine-tune of it)",
                code=1,
            )
        evidence = MbrEvidence(mbr_name_weight, mbr_neighbors, mbr_neighbor_weight, rows)
    from model.adapters import FINETUNE_META, load_finetuned
    from model.chat import format_prompt
    from model.generate import generate as sample
    from model.generate import load, resolve_model_dir

    try:
        weights, _ = resolve_model_dir(path)
        lm, tok = load_finetuned(weights) if (weights / FINETUNE_META).exists() else load(path)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e), code=1)
    text = prompt if raw else format_prompt(prompt, tokenizer=tok)
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
        copy_bias=copy_bias,
        **({"mbr_evidence": evidence([prompt]) * num} if evidence is not None else {}),
    )
    for i, out in enumerate(outs):
        if num > 1:
            console.print(f"[bold]--- sample {i + 1}[/]")
        console.print(out, highlight=False, markup=False)
