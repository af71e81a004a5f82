"""Benchmark of the `prepare` step: docs/s per core per sub-step and end to end, peak RSS, and
MinHash dedup precision/recall on a generated near-duplicate set.

    python benchmarks/prepare.py --corpus /tmp/bench/corpus-10M.jsonl [--out benchmarks/results/prepare.json]

The corpus is the JSONL that `../shared/bench/make-bench-corpus.py` builds (`id`, `text`,
`source`). Everything runs in ONE process (workers=1), so docs/s is per core. The near-duplicate
set: `--dup-bases` documents of the corpus, each copied `--dup-variants` times with a known share
of word edits (substitute / delete / insert, 0-40%), plus the untouched rest of the sample as
distractors; ground truth is the true word-5-gram Jaccard of each (variant, base) pair, a pair
with J >= 0.8 is a duplicate. Recall = flagged duplicates among true pairs; precision = flagged
pairs whose true Jaccard with their `duplicate_of` is >= 0.8. Measured with and without the
true-Jaccard verification of candidates, and across two runs (the bases indexed by a first
run, the variants checked by a second that loads its index: incremental dedup).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from llmflow.config import PrepareConfig  # noqa: E402
from llmflow.step import run_step  # noqa: E402
from llmflow.store import ArtifactStore, StepRef  # noqa: E402
from tasks.decontaminate import Decontaminator  # noqa: E402
from tasks.dedup import Deduper  # noqa: E402
from tasks.filters import QualityFilter  # noqa: E402
from tasks.langid import LangFilter  # noqa: E402
from tasks.minhash import Signer, jaccard, shingles  # noqa: E402
from tasks.normalize import normalize  # noqa: E402
from tasks.pii import redact  # noqa: E402
from tasks.prepare import VERSION, prepare_step  # noqa: E402
from tasks.toxicity import ToxicityFilter  # noqa: E402


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)


def load(path: str, limit: int | None) -> list[dict]:
    docs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            docs.append(json.loads(line))
            if limit and len(docs) >= limit:
                break
    return docs


def timed(name: str, fn, texts: list[str]) -> dict:
    t0 = time.process_time()
    for t in texts:
        fn(t)
    s = time.process_time() - t0
    return {"step": name, "docs": len(texts), "seconds": round(s, 3), "docs_per_s": round(len(texts) / s, 1)}


def substeps(texts: list[str], cfg: PrepareConfig) -> list[dict]:
    q, lang, tox = QualityFilter(cfg.quality), LangFilter(cfg.langid), ToxicityFilter(cfg.toxicity)
    signer = Signer(cfg.dedup.minhash.num_perm)
    n = cfg.dedup.minhash.shingle_words
    rng = random.Random(0)
    decon = Decontaminator.from_texts(
        [" ".join(t.split()[:60]) for t in rng.sample(texts, min(500, len(texts)))]
    )
    lang("warm up the model")
    rows = [
        timed("normalize", normalize, texts),
        timed("quality (gopher+c4+fineweb)", q, texts),
        timed("langid (py3langid)", lang, texts),
        timed("toxicity", tox, texts),
        timed("decontaminate (13-gram)", decon, texts),
        timed("pii", redact, texts),
        timed("minhash signature", lambda t: signer(shingles(t, n)), texts),
    ]
    d = Deduper(num_perm=cfg.dedup.minhash.num_perm)
    sigs = [(shingles(t, n),) for t in texts]
    sigs = [(s, signer(s)) for (s,) in sigs]
    t0 = time.process_time()
    for i, (s, g) in enumerate(sigs):
        d.check(str(i), str(i), g, s)
    sec = time.process_time() - t0
    rows.append(
        {
            "step": "LSH query+insert",
            "docs": len(texts),
            "seconds": round(sec, 3),
            "docs_per_s": round(len(texts) / sec, 1),
        }
    )
    return rows


def whole(docs: list[dict], cfg: PrepareConfig, shard_docs: int = 5000) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = ArtifactStore(tmp)
        with store.write("ingest", "bench") as out:
            (out / "docs").mkdir()
            for i in range(0, len(docs), shard_docs):
                chunk = docs[i : i + shard_docs]
                pq.write_table(
                    pa.table(
                        {
                            "id": [d["id"] for d in chunk],
                            "text": [d["text"] for d in chunk],
                            "source": [d.get("source", "bench") for d in chunk],
                            "meta": [json.dumps({"license": "mixed"}) for _ in chunk],
                        }
                    ),
                    out / "docs" / f"part-{i // shard_docs:05d}.parquet",
                )
        ref = StepRef(step="ingest", key="bench", uri=store.artifact_path("ingest", "bench"))
        t0 = time.process_time()
        res = run_step("prepare", VERSION, prepare_step, cfg, {"docs": ref}, store=store)
        sec = time.process_time() - t0
    s = res.stats
    return {
        "docs": s["input"],
        "seconds": round(sec, 2),
        "docs_per_s_per_core": round(s["input"] / sec, 1),
        "kept": s["kept"],
        "kept_fraction": round(s["kept"] / max(s["input"], 1), 4),
        "rejects_by_reason": s["rejects_by_reason"],
        "minhash": s["minhash"],
        "pii": s["pii"],
    }


def mutate(words: list[str], rate: float, rng: random.Random, vocab: list[str]) -> list[str]:
    out = []
    for w in words:
        r = rng.random()
        if r < rate / 3:
            out.append(rng.choice(vocab))  # substitute
        elif r < 2 * rate / 3:
            continue  # delete
        elif r < rate:
            out += [w, rng.choice(vocab)]  # insert
        else:
            out.append(w)
    return out


def dedup_quality(
    texts: list[str], bases: int, variants: int, verify: bool, n: int = 5, across_runs: str | None = None
) -> dict:
    """Recall and precision on the near-duplicate set. `across_runs` (incremental dedup): the
    bases are indexed by a first run whose index is saved and loaded by a second, which checks the
    variants; "bases gone": the second run's corpus lacks the bases (the loaded index has no
    shingles: the MinHash estimate confirms), "bases again": it holds them too (their shingles,
    read first, confirm by true Jaccard, as `tasks.global_dedup.dedup_shards` does)."""
    rng = random.Random(1234)
    sample = rng.sample(texts, min(len(texts), bases * 3))
    vocab = sorted({w for t in sample[:200] for w in t.split()})
    items: list[tuple[str, str, str | None]] = [(f"b{i}", t, None) for i, t in enumerate(sample)]
    for i, t in enumerate(sample[:bases]):
        words = t.split()
        for v in range(variants):
            rate = rng.uniform(0.0, 0.4)
            items.append((f"b{i}-v{v}", " ".join(mutate(words, rate, rng, vocab)), f"b{i}"))
    rng.shuffle(items)
    items.sort(key=lambda x: x[2] is not None)  # bases first, so a variant's duplicate_of is its base
    sh = {k: shingles(t, n) for k, t, _ in items}
    d = Deduper(num_perm=112, threshold=0.8, verify_jaccard=verify)
    signer = d.signer
    flagged: dict[str, str] = {}
    if across_runs:
        for k, _, base in items:
            if base is None:
                m = d.check(k, k, signer(sh[k]), sh[k])
                if m is not None:
                    flagged[k] = m.duplicate_of
        with tempfile.TemporaryDirectory() as tmp:
            d.save(Path(tmp) / "index.parquet")
            d = Deduper(num_perm=112, threshold=0.8, verify_jaccard=verify)
            d.load(Path(tmp) / "index.parquet")
        if across_runs == "bases again":
            for k, _, base in items:
                if base is None:
                    d.seen(k, shingle_set=sh[k])
    for k, _, base in items:
        if across_runs == "bases gone" and base is None:
            continue
        m = d.check(k, k, signer(sh[k]), sh[k])
        if m is not None:
            flagged[k] = m.duplicate_of
    truth = {k for k, _, base in items if base is not None and jaccard(sh[k], sh[base]) >= 0.8}
    tp_pairs = sum(1 for k, dup in flagged.items() if jaccard(sh[k], sh[dup]) >= 0.8)
    return {
        "verify_jaccard": verify,
        "across_runs": across_runs,
        "bands": d.bands,
        "rows": d.rows,
        "true_pairs": len(truth),
        "flagged": len(flagged),
        "recall": round(len(truth & set(flagged)) / max(len(truth), 1), 4),
        "precision": round(tp_pairs / max(len(flagged), 1), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/tmp/bench/corpus-10M.jsonl")
    ap.add_argument("--limit", type=int, default=None, help="Use at most this many documents.")
    ap.add_argument("--substep-docs", type=int, default=3000, help="Documents for the per-sub-step timings.")
    ap.add_argument("--dup-bases", type=int, default=300)
    ap.add_argument("--dup-variants", type=int, default=3)
    ap.add_argument("--skip-whole", action="store_true")
    ap.add_argument("--out", default=None, help="Write the JSON results here.")
    args = ap.parse_args()
    docs = load(args.corpus, args.limit)
    texts = [d["text"] for d in docs]
    cfg = PrepareConfig()
    res: dict = {
        "corpus": os.path.basename(args.corpus),
        "documents": len(docs),
        "bytes": sum(len(t.encode()) for t in texts),
        "cpu": os.cpu_count(),
    }
    res["substeps"] = substeps(texts[: args.substep_docs], cfg)
    res["dedup_quality"] = [
        dedup_quality(texts, args.dup_bases, args.dup_variants, verify) for verify in (True, False)
    ] + [
        dedup_quality(texts, args.dup_bases, args.dup_variants, True, across_runs=mode)
        for mode in ("bases gone", "bases again")
    ]
    if not args.skip_whole:
        res["whole"] = whole(docs, cfg)
    res["peak_rss_mb"] = peak_rss_mb()
    print(f"{'step':32s} {'docs/s':>10s}")
    for r in res["substeps"]:
        print(f"{r['step']:32s} {r['docs_per_s']:10.1f}")
    if "whole" in res:
        w = res["whole"]
        print(
            f"{'whole prepare (1 process)':32s} {w['docs_per_s_per_core']:10.1f}  kept {w['kept_fraction']:.1%}"
        )
    for q in res["dedup_quality"]:
        print(
            f"dedup verify={q['verify_jaccard']}{' across runs, ' + q['across_runs'] if q['across_runs'] else ''}: {q['bands']}x{q['rows']} recall {q['recall']} precision {q['precision']} ({q['true_pairs']} true pairs)"
        )
    print(f"peak RSS {res['peak_rss_mb']} MB")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
