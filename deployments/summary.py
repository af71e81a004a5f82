"""What a pipeline run prints at the end: the data kept and dropped, one line per step with its
headline figure, and where to look next."""

from __future__ import annotations

import os
from typing import Any

from rich.table import Table

from deployments.cli_app import console


def key_output(step: str, stats: dict[str, Any]) -> str:
    """The one figure a person wants to see for each step."""

    def g(k: str, fmt: str = "{:,}") -> str:
        v = stats.get(k)
        return fmt.format(v) if isinstance(v, int | float) else "?"

    if step == "ingest":
        return f"{g('documents')} docs, {g('rejected')} rejected"
    if step == "task_data":
        return f"{g('train')} train / {g('validation')} val / {g('test')} test examples"
    if step == "prepare":
        return f"{g('kept')} kept of {g('input')}, {g('train_docs')} train docs"
    if step == "tokenizer":
        return f"vocab {g('vocab_size')}, {g('bytes_per_token', '{:.2f}')} bytes/token"
    if step == "base_model":
        return f"{stats.get('source')}: {stats.get('model_type')}, licence {stats.get('license') or 'not stated'}"
    if step == "pack":
        return f"{g('train_tokens')} train tokens ({stats.get('dtype', '?')})"
    if step == "pretrain":
        return f"val {g('val_bpb', '{:.3f}')} bits/byte after {g('steps')} steps"
    if step == "finetune":
        return f"{stats.get('method', '?')}: val loss {g('val_loss', '{:.3f}')}, trainable {g('trainable_fraction', '{:.2%}')}"
    if step == "evaluate":
        m = stats.get("metrics", {})
        parts = [
            f"{k} {m[k]:.3f}" for k in ("rougeL", "bleu", "val_bpb") if isinstance(m.get(k), int | float)
        ]
        refs = {b: v.get("rougeL", 0.0) for b, v in (stats.get("baselines") or {}).items()}
        if "base" in refs:
            parts.append(f"before fine-tuning rougeL {refs.pop('base'):.3f}")
        if refs:
            best = max(refs, key=refs.__getitem__)
            parts.append(f"best baseline {best} {refs[best]:.3f}")
        return ", ".join(parts) or "?"
    if step == "gate":
        verdict = "passed" if stats.get("passed") else "failed"
        promoted = f", promoted {stats.get('version')} to champion" if stats.get("promoted") else ""
        return f"{verdict}{promoted}"
    return ""


def print_data_summary(stats: dict[str, Any]) -> None:
    """The data report in short: what was dropped and why, what was kept by source and licence, and
    what was rejected by source, licence and stage."""
    table = Table(title="data: kept and dropped", show_lines=False)
    table.add_column("")
    table.add_column("", justify="right")
    table.add_row("[bold]input[/]", f"{stats.get('input', 0):,}")
    table.add_row("[bold]kept[/]", f"{stats.get('kept', 0):,}")
    for reason, n in list(stats.get("rejects_by_reason", {}).items())[:8]:
        table.add_row(f"  dropped: {reason}", f"{n:,}")
    for source, counts in stats.get("by_source", {}).items():
        table.add_row(f"source {source}", ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    for lic, counts in stats.get("by_license", {}).items():
        table.add_row(f"licence {lic}", ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    for r in stats.get("rejects_by_origin", []):  # ingest's rejects included, by stage
        stages = ", ".join(f"{k} {v:,}" for k, v in r.items() if k not in ("source", "license", "rejected"))
        table.add_row(f"rejected from {r['source']} ({r['license']})", stages)
    langs = list(stats.get("by_language", {}).items())[:5]
    if langs:
        table.add_row("languages (kept)", ", ".join(f"{k} {v:,}" for k, v in langs))
    console.print(table)


def print_references(evaluate: dict[str, Any], gate: dict[str, Any]) -> None:
    """The candidate next to the model before fine-tuning and the trivial baselines, on the same
    held-out items: each metric, and the gate's paired gain with its one-sided lower bound."""
    m, baselines = evaluate.get("metrics") or {}, evaluate.get("baselines") or {}
    if not baselines:
        return
    refs = gate.get("references") or {}
    conf = gate.get("confidence")
    n = evaluate.get("n")
    table = Table(title=f"the candidate against its reference points ({n} held-out items)")
    for col in ("answer", "ROUGE-L", "BLEU", "chrF", "exact match"):
        table.add_column(col, justify="left" if col == "answer" else "right")
    table.add_column(f"ROUGE-L gain [{conf:.0%} lower bound]" if conf else "ROUGE-L gain", justify="right")
    table.add_column("gate")

    def cells(v: dict[str, Any]) -> list[str]:
        return [
            f"{v[k]:.4f}"
            if k in ("rougeL", "exact_match")
            else f"{v[k]:.2f}"
            if isinstance(v.get(k), int | float)
            else "?"
            for k in ("rougeL", "bleu", "chrf", "exact_match")
        ]

    table.add_row("[bold]candidate[/]", *cells(m), "", "")
    order = ["base"] + sorted(
        (b for b in baselines if b != "base"), key=lambda b: -baselines[b].get("rougeL", 0)
    )
    for b in (b for b in order if b in baselines):
        r = refs.get(b) or {}
        gain = (
            f"{r['diff']:+.4f} [{r['lower']:+.4f}]"
            if isinstance(r.get("diff"), int | float) and isinstance(r.get("lower"), int | float)
            else ""
        )
        if r:
            verdict = "[green]beats[/]" if r.get("passed") else "[red]does not beat[/]"
        else:
            verdict = "not gated" if refs else ""
        label = "before fine-tuning" if b == "base" else f"baseline: {b}"
        table.add_row(label, *cells(baselines[b]), gain, verdict)
    console.print(table)


def print_summary(summary: dict[str, Any], seconds: float, home: str, next_steps: bool = True) -> None:
    if "prepare" in summary and summary["prepare"]["status"] == "ran":
        print_data_summary(summary["prepare"].get("stats", {}))
    if "evaluate" in summary:
        print_references(summary["evaluate"].get("stats", {}), summary.get("gate", {}).get("stats", {}))
    table = Table(title="llmflow run", show_lines=False)
    table.add_column("step")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("result")
    for step, ref in summary.items():
        status = "[green]ran[/]" if ref["status"] == "ran" else "[cyan]cached[/]"
        table.add_row(step, status, f"{ref['seconds']:.1f}s", key_output(step, ref.get("stats", {})))
    console.print(table)
    console.print(f"Total {seconds:.1f}s. Artifacts under [bold]{os.path.abspath(home)}/artifacts/[/].")
    last = list(summary)[-1] if summary else None
    if last:
        console.print(f"Last step output: {summary[last]['uri']}")
    if not next_steps:
        return
    console.print(
        "Next: [bold]llmflow generate --model champion --prompt '...'[/] to sample, "
        "[bold]llmflow models list[/] for the registry, [bold]llmflow server[/] for the Prefect UI."
    )
