"""Traceable rejects: a document dropped at any stage (ingest, quality, language, decontamination,
dedup) leads back to its source, licence, file and line or row; the data report counts them."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pyarrow.parquet as pq
from test_prepare import prose

from llmflow.config import IngestConfig, PrepareConfig
from llmflow.step import run_step
from llmflow.store import StepRef
from tasks import ingest as ingest_mod
from tasks import prepare as prepare_mod
from tasks.rejects import REJECT_SCHEMA, stage_of

SPANISH_TEXT = (
    "el analizador lee un archivo de configuración y devuelve una tabla con los nombres de las secciones "
    "y sus valores cuando falta una clave se usa el valor por defecto para que cada opción tenga siempre "
    "un valor y los errores se informan con el número de línea donde ocurren"
)
CONTAMINATED = "the secret test answer is forty two and nobody should train on this sentence at all"


def spanish(seed: int) -> str:
    """Spanish prose that passes the quality filters (with a few English stop words)."""
    words_of, out, k = SPANISH_TEXT.split(), [], seed
    for s in range(6):
        words = []
        for _ in range(16):
            k = (k * 1103515245 + 12345) % (1 << 31)
            words.append(words_of[k % len(words_of)])
        out.append(" ".join(words).capitalize() + f" número {seed} {s} the and of to with.")
    return "\n".join(out)


def test_every_stage_keeps_the_origin_and_the_report_counts_by_source_and_licence(store, tmp_path):
    web = [json.dumps({"text": prose(i)}) for i in range(8)]
    web[2] = '{"text": "a line that is not JSON'  # line 3: ingest parse error
    web[3] = json.dumps({"text": "Too short to keep."})  # line 4: quality
    web[5] = json.dumps({"text": prose(60) + "\n" + CONTAMINATED})  # line 6: decontamination
    (tmp_path / "web.jsonl").write_text("\n".join(web) + "\n")
    with open(tmp_path / "books.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["title", "text"])
        for i in range(6):
            text = {2: spanish(1), 4: prose(0).upper()}.get(i, prose(100 + i))  # row 2: language, 4: dup
            w.writerow([f"t{i}", text])
    cfg = IngestConfig.model_validate(
        {
            "sources": [
                {"name": "web", "kind": "jsonl", "path": str(tmp_path / "web.jsonl"), "license": "CC-BY-4.0"},
                {"name": "books", "kind": "csv", "path": str(tmp_path / "books.csv"), "license": "MIT"},
            ]
        }
    )
    docs = run_step("ingest", ingest_mod.VERSION, ingest_mod.ingest_step, cfg, store=store)
    with store.write("task_data", "task") as out:
        (out / "test.jsonl").write_text(json.dumps({"prompt": "What?", "response": CONTAMINATED}) + "\n")
        (out / "validation.jsonl").write_text("")
    task = StepRef(step="task_data", key="task", uri=store.artifact_path("task_data", "task"))
    ref = run_step(
        "prepare",
        prepare_mod.VERSION,
        prepare_mod.prepare_step,
        PrepareConfig(),
        {"docs": docs, "task": task},
        store=store,
    )

    ingest_rej = pq.read_table(store.local_path(docs) / "rejects")
    prep_rej = pq.read_table(store.local_path(ref) / "rejects")
    assert ingest_rej.schema == prep_rej.schema == REJECT_SCHEMA  # one shape
    rows = ingest_rej.to_pylist() + prep_rej.to_pylist()
    origin = {
        stage_of(r["reason"]): (r["source"], r["license"], r["file"], r["line"], r["row"], r["reason"])
        for r in rows
    }
    assert origin == {
        "ingest": ("web", "CC-BY-4.0", "web.jsonl", 3, None, "invalid:json"),
        "quality": ("web", "CC-BY-4.0", "web.jsonl", 4, None, "filter:gopher_min_words"),
        "decontaminate": ("web", "CC-BY-4.0", "web.jsonl", 6, None, "decontaminated"),
        "langid": ("books", "MIT", "books.csv", None, 2, "filter:lang:es"),
        "dedup": ("books", "MIT", "books.csv", None, 4, "dedup"),
    }
    dup = next(r for r in rows if r["reason"] == "dedup")
    kept = pq.read_table(store.local_path(ref) / "train").to_pylist()
    kept += pq.read_table(store.local_path(ref) / "validation").to_pylist()
    original = next(r for r in kept if r["id"] == dup["duplicate_of"])
    assert json.loads(original["meta"])["line"] == 1 and original["cluster_size"] == 2
    assert all(json.loads(r["meta"])["file"].endswith(r["file"]) for r in rows)  # absolute path kept

    by_origin = {(r["source"], r["license"]): r for r in ref.stats["rejects_by_origin"]}
    want = Counter((r["source"], r["license"], stage_of(r["reason"])) for r in rows)
    assert by_origin == {
        ("web", "CC-BY-4.0"): {
            "source": "web", "license": "CC-BY-4.0", "ingest": 1, "quality": 1, "decontaminate": 1, "rejected": 3,
        },
        ("books", "MIT"): {"source": "books", "license": "MIT", "langid": 1, "dedup": 1, "rejected": 2},
    }  # fmt: skip
    assert all(by_origin[(s, lic)][stage] == n for (s, lic, stage), n in want.items())
    report = (store.local_path(ref) / "report.md").read_text()
    assert "| web | CC-BY-4.0 | 1 | 1 | 0 | 1 | 0 | 3 |" in report
    assert "| books | MIT | 0 | 0 | 1 | 0 | 1 | 2 |" in report
    assert "books.csv row 4" in report and "web.jsonl line 4" in report
