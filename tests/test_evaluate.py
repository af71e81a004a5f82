"""The evaluate step on tiny real artifacts (random Llama, BPE tokenizer, packed shards)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from llmflow.config import EvaluateConfig, GateConfig, Threshold
from llmflow.registry import Registry
from llmflow.step import run_step
from tasks import baselines as B
from tasks import evaluate as E
from tasks import gate as G
from tests.helpers import corpus, task_rows, tiny_model_dir

CFG = EvaluateConfig(
    max_samples=20,
    max_new_tokens=4,
    batch_size=8,
    bpb_batches=1,
    bpb_seq_len=32,
    bootstrap=50,
    counterfactual_samples=4,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _artifact(store, step, key, fill=None, stats=None):
    with store.write(step, key, {"stats": stats or {}}) as out:
        if fill:
            fill(out)
    return store.ref(step, key, status="ran")


def _inputs(store, tok_dir, rows, model_key="ft1", with_tokenizer=True, train=None):
    def model(out):
        tiny_model_dir(out / "model", tok_dir)
        if not with_tokenizer:
            for f in out.joinpath("model").glob("tokenizer*"):
                f.unlink()

    def shards(out):
        tok = AutoTokenizer.from_pretrained(tok_dir)
        text = corpus(60)
        ids = [
            i for line in text for i in [*tok(line, add_special_tokens=False)["input_ids"], tok.eos_token_id]
        ]
        np.asarray(ids, dtype=np.uint16).tofile(out / "validation.bin")
        np.asarray(ids[::-1], dtype=np.uint16).tofile(out / "train.bin")
        nbytes = sum(len(t.encode()) for t in text)
        meta = {
            "dtype": "uint16",
            "vocab_size": len(tok),
            "validation": {"tokens": len(ids), "bytes": nbytes},
            "train": {"tokens": len(ids), "bytes": nbytes},
        }
        (out / "meta.json").write_text(json.dumps(meta))

    def task(out):
        if rows is not None:
            (out / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            rows_train = train or [
                {"prompt": "p", "response": r} for r in ("Open a file.", "Sort items.", "Open a file.")
            ]
            (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_train))

    def base(out):
        tiny_model_dir(out / "model", tok_dir, seed=7)

    return {
        "model": _artifact(store, "finetune", model_key, model),
        "base": _artifact(store, "pretrain", "pre1", base, stats={"val_bpb": 5.5}),
        "shards": _artifact(store, "pack", "pack1", shards),
        "task": _artifact(store, "task_data", f"task-{model_key}", task),
    }


def _rows():
    rows = task_rows(10)
    rows[1]["group"] = "h"
    rows.append(
        {
            "id": "he",
            "prompt": "Why did he return the list?",
            "response": "He needed the values.",
            "group": "h",
        }
    )
    rows.append(
        {"id": "uni", "prompt": "Résumé du café", "response": "Привет мир, café très bon", "group": "g"}
    )
    rows.append({"id": "bad", "prompt": 3, "response": "x"})  # unusable: skipped and counted
    return rows


def test_evaluate_step_end_to_end_then_gate(store, tok_dir):
    published = []
    inputs = _inputs(store, tok_dir, _rows())
    ref = run_step(
        "evaluate",
        E.VERSION,
        E.evaluate_step,
        CFG,
        inputs,
        store=store,
        extra={"name": "demo"},
        on_publish=lambda kind, name, payload: published.append((kind, name, payload)),
    )
    out = store.local_path(ref)
    m = ref.stats["metrics"]
    for k in (
        "rouge1",
        "rouge2",
        "rougeL",
        "rougeLsum",
        "bleu",
        "chrf",
        "exact_match",
        "f1",
        "val_bpb",
        "val_ppl",
        "base_val_bpb",
        "toxicity_rate",
        "stereotype_pct",
        "stereotype_bias",
        "stereotype_pct_gender",
        "counterfactual_mean_abs_change",
    ):
        assert isinstance(m[k], float), k
    assert m["val_bpb"] > 0 and m["val_ppl"] > 1 and m["base_val_bpb"] == 5.5
    assert 0 <= m["stereotype_pct"] <= 100 and m["stereotype_bias"] == abs(m["stereotype_pct"] - 50)
    assert ref.stats["n"] == 12 and ref.stats["skipped"] == 1
    lo, hi = ref.stats["ci"]["rougeL"]
    assert lo <= m["rougeL"] <= hi

    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 12 and {"prompt", "reference", "prediction", "scores", "toxicity"} <= set(
        samples[0]
    )
    assert samples[-1]["reference"] == "Привет мир, café très bon"
    assert m["rougeL"] == pytest.approx(np.mean([s["scores"]["rougeL"] for s in samples]))
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["groups"]) == {"g", "h"} and doc["signatures"]["bleu"].startswith("nrefs:1")
    bias = json.loads((out / "bias.json").read_text())
    assert len(bias["stereotype"]["categories"]) == 6 and bias["counterfactual"]["n_swapped"] >= 1
    tables = {name: payload for kind, name, payload in published if kind == "table"}
    assert set(tables) == {"metrics", "worst-samples", "bias"} and len(tables["worst-samples"]) == 10
    report = (out / "report.md").read_text()
    assert "samples.jsonl" in report and "Stereotype preference" in report and "Ten worst" in report

    # reference points on the same items: the model before fine-tuning and the trivial baselines
    assert set(samples[0]["baselines"]) == {"base", "constant", "first_sentence"}  # no signatures here
    assert {s["baselines"]["constant"]["prediction"] for s in samples} == {"Open a file."}  # most frequent
    for name, b in doc["baselines"].items():
        per_item = [s["baselines"][name]["scores"]["rougeL"] for s in samples]
        assert b["rougeL"] == pytest.approx(np.mean(per_item)), name
    assert ref.stats["baselines"] == doc["baselines"] and "Against reference points" in report
    # the unigram model's bits per byte on the same windows; the uniform one is log2(V) per token
    assert 0 < m["val_bpb_unigram"] < m["val_bpb_uniform"]

    # the gate on this evaluation: first model, promoted, card written
    # (random tiny models beat no reference point: this part is about promotion and the card)
    gcfg = GateConfig(
        value_thresholds=[Threshold(metric="val_bpb", max=100.0)],
        beat_base=False,
        beat_baselines=[],
        beat_unigram_bpb=False,
    )
    g = run_step(
        "gate",
        G.VERSION,
        G.gate_step,
        gcfg,
        {"eval": ref, "model": inputs["model"]},
        store=store,
        extra={"name": "demo", "champion": None},
    )
    assert g.stats["passed"] and g.stats["promoted"]
    reg = Registry(store, "demo")
    assert reg.champion()["eval_key"] == ref.key
    card = Path(reg.card_path(1)).read_text()
    assert "Counterfactual consistency" in card and "| constant | " in card

    # a second evaluation of the same model now shows deltas against the champion (zero)
    published.clear()
    run_step(
        "evaluate",
        E.VERSION,
        E.evaluate_step,
        CFG,
        inputs,
        store=store,
        extra={"name": "demo"},
        force=True,
        on_publish=lambda kind, name, payload: published.append((kind, name, payload)),
    )
    table = next(p for k, n, p in published if n == "metrics")
    assert {r["metric"]: r["delta"] for r in table}["rougeL"] == 0.0


def test_bad_inputs_are_clear_errors(store, tok_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="evaluation set missing"):
        run_step("evaluate", 1, E.evaluate_step, CFG, _inputs(store, tok_dir, None, "a"), store=store)
    with pytest.raises(ValueError, match="evaluation set is empty"):
        run_step(
            "evaluate",
            1,
            E.evaluate_step,
            CFG,
            _inputs(store, tok_dir, [{"id": "x", "prompt": "", "response": "y"}], "b"),
            store=store,
        )
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        run_step(
            "evaluate",
            1,
            E.evaluate_step,
            CFG,
            _inputs(store, tok_dir, task_rows(2), "c", with_tokenizer=False),
            store=store,
        )
    assert not store.exists("evaluate", "anything") and store.list("evaluate") == []
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_mbr_decoding_is_recorded_and_applies_to_the_base_model_too(store, tok_dir):
    cfg = CFG.model_copy(update={"mbr_samples": 3, "bias": False, "counterfactual_samples": 0})

    def evaluate(update: dict | None = None, force: bool = False):
        c = cfg.model_copy(update=update or {})
        inputs = _inputs(store, tok_dir, _rows())
        return run_step("evaluate", E.VERSION, E.evaluate_step, c, inputs, store=store, force=force)

    def read(ref, name: str) -> str:
        return (store.local_path(ref) / name).read_text()

    ref = evaluate()
    doc = json.loads(read(ref, "metrics.json"))
    assert (
        doc["decoding"].startswith("MBR over greedy + 3 samples") and ref.stats["decoding"] == doc["decoding"]
    )
    again = evaluate(force=True)
    first = read(ref, "samples.jsonl")
    assert read(again, "samples.jsonl") == first  # seeded: repeatable
    greedy = evaluate({"mbr_samples": 0})
    assert json.loads(read(greedy, "metrics.json"))["decoding"] == "greedy"
    copied = evaluate({"copy_bias": 2.0})
    doc = json.loads(read(copied, "metrics.json"))
    assert doc["decoding"].startswith("MBR over greedy + 3") and doc["decoding"].endswith(", copy bias 2")
    assert read(copied, "samples.jsonl") != first  # the bias was applied


def test_mbr_evidence_reaches_the_choice_for_the_candidate_and_the_base_model(store, tok_dir, monkeypatch):
    """evaluate.mbr_name_weight / mbr_neighbors: each item's MBR choice weighs the name as words and
    the nearest train responses, for the fine-tuned model and the model before fine-tuning alike."""
    import model.mbr as mbr

    seen = []
    choose = mbr.choose
    monkeypatch.setattr(mbr, "choose", lambda c, u=None, e=(): seen.append(e) or choose(c, u, e))
    rows = task_rows(4)
    train = [
        {"prompt": f"notes on {r['prompt'].split()[1][:-4]}", "response": f"T{i}."}
        for i, r in enumerate(rows)
    ]
    cfg = CFG.model_copy(
        update={
            "mbr_samples": 2,
            "mbr_name_weight": 0.3,
            "mbr_neighbors": 1,
            "mbr_neighbor_weight": 0.5,
            "bias": False,
            "counterfactual_samples": 0,
            "bootstrap": 0,
        }
    )
    ref = run_step(
        "evaluate",
        E.VERSION,
        E.evaluate_step,
        cfg,
        _inputs(store, tok_dir, rows, "ev", train=train),
        store=store,
    )
    want = [[(0.3, [B.name_words(r["prompt"])]), (0.5, [f"T{i}."])] for i, r in enumerate(rows)]
    assert seen == want + want  # the candidate's items, then the base model's
    assert ref.stats["decoding"].endswith(
        "MBR evidence: the name as words x 0.3 and the 1 nearest train summaries x 0.5"
    )
    seen.clear()  # greedy: no MBR choice to weigh, and the decoding says so
    greedy = run_step(
        "evaluate",
        E.VERSION,
        E.evaluate_step,
        cfg.model_copy(update={"mbr_samples": 0}),
        _inputs(store, tok_dir, rows, "ev", train=train),
        store=store,
    )
    assert seen == [] and greedy.stats["decoding"] == "greedy"


def test_the_retrieval_baseline_is_scored_and_the_gate_takes_it_unless_left_out(store, tok_dir):
    """evaluate.retrieval_baseline adds nearest_train (the most similar train prompt's response);
    the gate compares against every evaluated baseline unless beat_baselines names them."""
    rows = task_rows(6)
    words = [r["prompt"].split()[1].split("(")[0] for r in rows]
    train = [{"prompt": f"notes on {w} for a reader", "response": f"About {w}."} for w in words[:3]]
    train.append({"prompt": "unrelated notes", "response": "Nothing here."})
    cfg = CFG.model_copy(
        update={"retrieval_baseline": True, "bias": False, "counterfactual_samples": 0, "bootstrap": 0}
    )
    inputs = _inputs(store, tok_dir, rows, model_key="nt", train=train)
    ref = run_step("evaluate", E.VERSION, E.evaluate_step, cfg, inputs, store=store)
    samples = [json.loads(x) for x in (store.local_path(ref) / "samples.jsonl").read_text().splitlines()]
    answers = {s["id"]: s["baselines"]["nearest_train"]["prediction"] for s in samples}
    assert [answers[r["id"]] for r in rows[:3]] == [f"About {w}." for w in words[:3]]
    assert "nearest_train" in ref.stats["baselines"]

    def references(beat):
        gcfg = GateConfig(beat_base=False, beat_baselines=beat, beat_unigram_bpb=False)
        return {c["reference"] for c in G.reference_checks(gcfg, ref.stats["metrics"], samples)}

    assert references(None) == {"constant", "first_sentence", "name_words", "nearest_train"}
    assert references(["constant", "first_sentence"]) == {"constant", "first_sentence"}

    # asked for but not evaluated: the gate fails and says which option scores it
    gcfg = GateConfig(beat_base=False, beat_baselines=["nearest_train"], beat_unigram_bpb=False)
    without = [
        {**s, "baselines": {k: v for k, v in s["baselines"].items() if k != "nearest_train"}} for s in samples
    ]
    [check] = G.reference_checks(gcfg, ref.stats["metrics"], without)
    assert not check["passed"] and "evaluate.retrieval_baseline must be on" in check["reason"]
