"""`llmflow run`'s closing table: the candidate next to every reference point the evaluation
scored, with the gate's verdict where the gate compared, and "not gated" where it did not."""

from __future__ import annotations

import io

from rich.console import Console

from deployments import summary as S


def _scores(rouge: float) -> dict:
    return {"rougeL": rouge, "bleu": 1.0, "chrf": 10.0, "exact_match": 0.0}


def test_a_reference_point_the_gate_left_out_is_shown_as_not_gated(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(S, "console", Console(file=out, width=200, color_system=None))
    evaluate = {
        "n": 183,
        "metrics": _scores(0.2237),
        "baselines": {
            "base": _scores(0.0938),
            "name_words": _scores(0.1784),
            "nearest_train": _scores(0.226),
        },
    }
    gate = {
        "confidence": 0.95,
        "references": {
            "base": {"diff": 0.1299, "lower": 0.1089, "passed": True},
            "name_words": {"diff": 0.0453, "lower": 0.0196, "passed": True},
        },
    }
    S.print_references(evaluate, gate)
    rows = {line.split("│")[1].strip(): line for line in out.getvalue().splitlines() if line.count("│") > 2}
    assert "+0.0453 [+0.0196]" in rows["baseline: name_words"] and "beats" in rows["baseline: name_words"]
    assert "not gated" in rows["baseline: nearest_train"] and "+0." not in rows["baseline: nearest_train"]
    assert "beats" in rows["before fine-tuning"]
