"""The model card says what the data steps recorded: which ran, what they dropped, the languages kept."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from llmflow.config import GateConfig, IngestConfig, PrepareConfig, SourceConfig
from llmflow.registry import Registry
from llmflow.step import run_step
from tasks import gate as G
from tasks import ingest as I
from tasks import prepare as P
from tasks.model_card import render_card
from tests.helpers import write_jsonl
from tests.test_prepare import prose

GERMAN = (
    "der die das und ist nicht ein eine mit von zu den im für auf dem sich des auch es an werden "
    "aus er hat dass sie nach wird bei einer um am sind noch wie einem über einen so zum war haben "
    "nur oder aber vor zur bis mehr durch man sein wurde sei in Datei Wert Schlüssel Abschnitt"
)
FRENCH = (
    "le la les de des et est un une dans pour que qui sur avec pas plus par ce il elle nous vous "
    "sont fichier valeur section lire retourne erreur ligne chaque option toujours quand manque"
)


def pseudo(vocabulary: str, seed: int, n: int = 90) -> str:
    """Deterministic paragraphs of the vocabulary's words (a language the identifier knows)."""
    words, out, k = vocabulary.split(), [], seed
    for s in range(n // 15):
        sent = []
        for _ in range(15):
            k = (k * 1103515245 + 12345) % (1 << 31)
            sent.append(words[k % len(words)])
        out.append(" ".join(sent).capitalize() + f" {seed} {s}.")
    return "\n".join(out)


def _artifact(store, step, key, inputs, files=None):
    """A stand-in artifact whose manifest names its inputs (the lineage walks these)."""
    refs = {n: {"step": r.step, "key": r.key} for n, r in inputs.items()}
    with store.write(step, key, {"inputs": refs, "stats": {}}) as out:
        for rel, text in (files or {}).items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text(text)
    return store.ref(step, key, status="ran")


def test_card_lists_the_data_steps_that_ran_their_counts_and_the_languages_kept(store, tmp_path):
    docs = [{"text": prose(i)} for i in range(30)]
    docs += [{"text": pseudo(GERMAN, i)} for i in range(4)]  # kept: German is allowed
    docs += [{"text": pseudo(FRENCH, i)} for i in range(3)]  # dropped by language ID
    docs += [
        {"text": docs[3]["text"].upper()},  # exact duplicate
        {"text": "Too short to keep."},  # quality filter
        {"text": prose(99) + "\nWrite to jane.roe@example.org today."},  # kept as is: PII is off
        {"text": prose(55) + " fuck shit fuck shit fuck shit fuck shit"},  # kept: toxicity is off
        {"text": prose(77) + "\nthe secret test answer is forty two and nobody should train on this"},
    ]
    write_jsonl(tmp_path / "src" / "web.jsonl", docs + [{"no_text": 1}])
    ingest_cfg = IngestConfig(sources=[SourceConfig(name="web", kind="jsonl", path=str(tmp_path / "src"))])
    ingest = run_step("ingest", I.VERSION, I.ingest_step, ingest_cfg, store=store)
    item = {"prompt": "What is the answer?", "group": "g"}
    response = "the secret test answer is forty two and nobody should train on this"
    task = _artifact(
        store, "task_data", "task-1", {},
        {f"{s}.jsonl": json.dumps({**item, "id": s, "response": response}) + "\n" for s in ("test", "validation")},
    )  # fmt: skip
    cfg = PrepareConfig.model_validate(
        {
            "quality": {"min_stop_words": 0},  # the English stop-word rule would drop the German
            "langid": {"allow": ["en", "de"]},
            "toxicity": {"enabled": False},
            "pii": {"enabled": False},
        }
    )
    prepare = run_step("prepare", P.VERSION, P.prepare_step, cfg, {"docs": ingest, "task": task}, store=store)
    s = prepare.stats
    assert s["steps"]["pii"]["status"] == s["steps"]["toxicity"]["status"] == "off"
    assert set(s["by_language"]) == {"en", "de"}

    tok = _artifact(store, "tokenizer", "tok-1", {"data": prepare})
    pack = _artifact(store, "pack", "pack-1", {"data": prepare, "tokenizer": tok})
    base = _artifact(store, "pretrain", "pre-1", {"shards": pack, "tokenizer": tok})
    model = _artifact(
        store, "finetune", "ft-1", {"base": base, "task": task},
        {"model/config.json": "{}", "lineage.json": json.dumps({"config": {"method": "lora"}})},
    )  # fmt: skip
    metrics = {"rougeL": 0.3, "val_bpb": 3.0}
    ev = _artifact(
        store, "evaluate", "ev-1", {"model": model}, {"metrics.json": json.dumps({"metrics": metrics})}
    )
    run_step(
        "gate", 1, G.gate_step, GateConfig(), {"eval": ev, "model": model}, store=store, extra={"name": "m"}
    )
    card = Path(Registry(store, "m").card_path(1)).read_text()

    meta = yaml.safe_load(card.split("---")[1])
    assert meta["language"] == ["en", "de"]  # most documents first
    rows = {line.split(" | ")[0].lstrip("| "): line for line in card.splitlines() if line.startswith("| ")}
    assert "no: turned off in the config" in rows["PII redaction"]
    assert "no: turned off in the config" in rows["toxicity filter"]
    langid = rows["language ID (allowed: en, de)"]
    assert "| yes |" in langid and f"dropped {s['rejects_by_reason']['filter:lang:fr']:,} " in langid
    assert s["rejects_by_reason"]["filter:lang:fr"] == 3
    quality = sum(s["steps"]["quality"]["dropped"].values())
    assert quality >= 1 and f"dropped {quality:,} (" in rows["quality filters"]
    assert "`filter:gopher_min_words` 1" in rows["quality filters"]
    assert s["dedup"]["exact"] == 1 and "removed 1 duplicate |" in rows["exact deduplication"]
    assert sum(sum(step["dropped"].values()) for step in s["steps"].values()) == s["rejected"]
    decon = rows["decontamination against the task's held-out items"]
    assert f"dropped {s['rejects_by_reason']['decontaminated']:,} " in decon and "| yes |" in decon
    assert f"kept {s['kept']:,} (train {s['train_docs']:,}" in card
    assert f"Languages of the kept documents: en ({s['by_language']['en']:,}), de (" in card
    assert f"read {ingest.stats['documents']:,} documents" in card and "`invalid:" in card
    assert "toxicity filter, deduplication, PII redaction" not in card  # the old blanket claim


def test_card_claims_no_language_when_language_id_did_not_run():
    prep = {
        "key": "p" * 64,
        "config": {},
        "stats": {
            "input": 3,
            "kept": 3,
            "rejected": 0,
            "by_language": {"und": 3},
            "steps": {"langid": {"status": "off", "dropped": {}}},
        },
    }

    class Store:
        def manifest(self, step, key):
            return {"config": prep["config"], "stats": prep["stats"]} if step == "prepare" else None

    entry = {"name": "m", "version": 1, "lineage": {"artifacts": {"prepare": "p" * 64}}}
    card = render_card(entry, store=Store())
    assert "language" not in yaml.safe_load(card.split("---")[1])
    assert "| language ID | no: turned off in the config | — |" in card
    assert "Languages of the kept documents: not identified (language ID did not run)." in card


def test_card_without_data_records_claims_nothing_about_the_data():
    card = render_card({"name": "m", "version": 1, "lineage": {"artifacts": {"finetune": "f" * 64}}})
    assert "language" not in yaml.safe_load(card.split("---")[1])
    assert "nothing is claimed here about the data" in card and "pretrained from scratch" not in card
