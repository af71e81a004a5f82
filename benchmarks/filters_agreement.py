"""Agreement of llmflow's quality filters with the reference, datatrove 0.10.1, document by document.

    pip install 'datatrove==0.10.1' spacy        # the optional `bench` extra
    python benchmarks/filters_agreement.py --corpus /tmp/bench/corpus-10M.jsonl \\
        [--limit N] [--out benchmarks/results/filters-agreement.json]

Both libraries see the same texts (each corpus document normalized as `prepare` normalizes it).
For each reference filter with its defaults (`GopherQualityFilter`, `GopherRepetitionFilter`,
`C4QualityFilter`, `FineWebQualityFilter`) and for each of its rules alone (the filter's other
rules switched off), it counts the documents where both say keep or both say drop. datatrove runs
twice: as shipped (English words are spaCy tokens, punctuation included) and with words =
`str.split` (datatrove's filter code unchanged, only its word tokenizer swapped), so the second
column is the agreement once the one named tokenizer choice is taken out; a third column compares
llmflow with `quality.words: spacy` against datatrove as shipped. C4 counts words by `str.split`
itself; only its sentence count uses spaCy, so datatrove's C4 runs once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmflow.config import QualityConfig  # noqa: E402
from tasks.filters import FAMILIES, QualityFilter  # noqa: E402
from tasks.normalize import normalize  # noqa: E402

try:
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.utils.word_tokenizers import SpaCyTokenizer, WordTokenizer
except ImportError as e:  # pragma: no cover - optional benchmark dependency
    sys.exit(f"needs the reference: pip install 'datatrove==0.10.1' spacy ({e})")


class SplitWords(WordTokenizer):
    """Words = `str.split`; sentences as datatrove's English (spaCy) tokenizer cuts them."""

    def __init__(self):
        super().__init__("en")
        self._spacy = SpaCyTokenizer("en")

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return self._spacy.sent_tokenize(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return self._spacy.span_tokenize(text)


GQ_OFF = dict(
    min_doc_words=None, max_doc_words=None, min_avg_word_length=None, max_avg_word_length=None,
    max_symbol_word_ratio=None, max_bullet_lines_ratio=None, max_ellipsis_lines_ratio=None,
    max_non_alpha_words_ratio=None, min_stop_words=None,
)  # fmt: skip
GR_OFF = dict(
    dup_line_frac=None, dup_para_frac=None, dup_line_char_frac=None, dup_para_char_frac=None,
    top_n_grams=(), dup_n_grams=(),
)  # fmt: skip
FW_OFF = dict(line_punct_thr=0.0, short_line_thr=1.0, char_duplicates_ratio=1.0, new_line_ratio=float("inf"))
C4_DOC_OFF = dict(filter_lorem_ipsum=False, filter_curly_bracket=False, min_num_sentences=-1)

# (family, rule label, llmflow rules it is compared with, reference class, kwargs; None = defaults)
GQ = GopherQualityFilter
GR = GopherRepetitionFilter
RULES: list[tuple[str, str, tuple[str, ...], type, dict | None]] = [
    ("gopher_quality", "all rules", FAMILIES["gopher_quality"], GQ, None),
    ("gopher_quality", "words 50..100,000", ("gopher_min_words", "gopher_max_words"), GQ,
     {**GQ_OFF, "min_doc_words": 50, "max_doc_words": 100_000}),
    ("gopher_quality", "mean word length 3..10", ("gopher_mean_word_length",), GQ,
     {**GQ_OFF, "min_avg_word_length": 3, "max_avg_word_length": 10}),
    ("gopher_quality", "# and ellipsis per word", ("gopher_hash_ratio", "gopher_ellipsis_ratio"), GQ,
     {**GQ_OFF, "max_symbol_word_ratio": 0.1}),
    ("gopher_quality", "bullet lines", ("gopher_bullet_lines",), GQ, {**GQ_OFF, "max_bullet_lines_ratio": 0.9}),
    ("gopher_quality", "ellipsis lines", ("gopher_ellipsis_lines",), GQ, {**GQ_OFF, "max_ellipsis_lines_ratio": 0.3}),
    ("gopher_quality", "alphabetic words", ("gopher_alpha_words",), GQ, {**GQ_OFF, "max_non_alpha_words_ratio": 0.8}),
    ("gopher_quality", "stop words", ("gopher_stop_words",), GQ, {**GQ_OFF, "min_stop_words": 2}),
    ("gopher_repetition", "all rules", FAMILIES["gopher_repetition"], GR, None),
    ("gopher_repetition", "dup paragraphs", ("gopher_dup_paragraphs",), GR, {**GR_OFF, "dup_para_frac": 0.3}),
    ("gopher_repetition", "dup paragraph chars", ("gopher_dup_paragraph_chars",), GR,
     {**GR_OFF, "dup_para_char_frac": 0.2}),
    ("gopher_repetition", "dup lines", ("gopher_dup_lines",), GR, {**GR_OFF, "dup_line_frac": 0.3}),
    ("gopher_repetition", "dup line chars", ("gopher_dup_line_chars",), GR, {**GR_OFF, "dup_line_char_frac": 0.2}),
    *[("gopher_repetition", f"top {n}-gram", (f"gopher_top_{n}gram",), GR, {**GR_OFF, "top_n_grams": ((n, f),)})
      for n, f in ((2, 0.2), (3, 0.18), (4, 0.16))],
    *[("gopher_repetition", f"dup {n}-grams", (f"gopher_dup_{n}gram",), GR, {**GR_OFF, "dup_n_grams": ((n, f),)})
      for n, f in ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))],
    ("c4", "all rules", FAMILIES["c4"], C4QualityFilter, None),
    ("c4", "lorem ipsum", ("c4_lorem_ipsum",), C4QualityFilter, {**C4_DOC_OFF, "filter_lorem_ipsum": True}),
    ("c4", "curly bracket", ("c4_curly_bracket",), C4QualityFilter, {**C4_DOC_OFF, "filter_curly_bracket": True}),
    ("c4", "min 5 sentences", ("c4_min_sentences",), C4QualityFilter, {**C4_DOC_OFF, "min_num_sentences": 5}),
    ("fineweb", "all rules", FAMILIES["fineweb"], FineWebQualityFilter, None),
    ("fineweb", "line punctuation", ("fineweb_line_punct",), FineWebQualityFilter, {**FW_OFF, "line_punct_thr": 0.12}),
    ("fineweb", "short lines", ("fineweb_short_lines",), FineWebQualityFilter, {**FW_OFF, "short_line_thr": 0.67}),
    ("fineweb", "dup line chars", ("fineweb_dup_line_chars",), FineWebQualityFilter,
     {**FW_OFF, "char_duplicates_ratio": 0.01}),
    ("fineweb", "list ratio", ("fineweb_list_ratio",), FineWebQualityFilter, {**FW_OFF, "new_line_ratio": 0.3}),
]  # fmt: skip
TOKENIZED = (GopherQualityFilter, GopherRepetitionFilter, FineWebQualityFilter)


def load(path: str, limit: int | None) -> list[tuple[str, str]]:
    docs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            text = normalize(d["text"])
            if text.strip():
                docs.append((str(d["id"]), text))
            if limit and len(docs) >= limit:
                break
    return docs


def keeps(flt, doc_id: str, text: str) -> bool:
    res = flt.filter(Document(text=text, id=doc_id))  # C4 rewrites doc.text: a fresh Document each call
    return res if isinstance(res, bool) else bool(res[0])


COLUMNS = {
    "spacy": ("whitespace", "spacy"),
    "split": ("whitespace", "split"),
    "llmflow_spacy": ("spacy", "spacy"),
}
ZERO = {"both_keep": 0, "both_drop": 0, "only_llmflow_drops": 0, "only_reference_drops": 0}


def tally_chunk(docs: list[tuple[str, str]]) -> dict:
    """Per rule and column, the four verdict counts over `docs` (one worker's share)."""
    import warnings

    from loguru import logger

    warnings.filterwarnings("ignore", category=RuntimeWarning)  # datatrove: mean of no words
    logger.remove()  # datatrove logs every filter construction
    ours = {
        "whitespace": QualityFilter(QualityConfig()),
        "spacy": QualityFilter(QualityConfig(words="spacy")),
    }
    langs = {"spacy": "en", "split": SplitWords()}
    filters = {
        (lang, i): cls(**(kw or {}), language=tok)
        for lang, tok in langs.items()
        for i, (_, _, _, cls, kw) in enumerate(RULES)
        if lang == "spacy" or cls in TOKENIZED
    }
    tally = {(col, i): {**ZERO, "examples": []} for col in COLUMNS for i in range(len(RULES))}
    for doc_id, text in docs:
        mine = {w: f.verdicts(f.signals(text)) for w, f in ours.items()}
        ref = {k: keeps(flt, doc_id, text) for k, flt in filters.items()}
        for (col, i), t in tally.items():
            words, lang = COLUMNS[col]
            a = all(mine[words][r] for r in RULES[i][2] if r in mine[words])
            b = ref.get((lang, i), ref[("spacy", i)])  # C4 runs once (words do not matter to it)
            key = (
                ("both_keep" if b else "both_drop")
                if a == b
                else ("only_llmflow_drops" if b else "only_reference_drops")
            )
            t[key] += 1
            if a != b and len(t["examples"]) < 5:
                t["examples"].append(doc_id)
    return tally


def run(docs: list[tuple[str, str]], workers: int) -> dict:
    """Per rule: llmflow (default words) vs datatrove as shipped ("spacy") and with split words
    ("split"); llmflow with `quality.words: spacy` vs datatrove as shipped ("llmflow_spacy")."""
    chunks = [docs[k::workers] for k in range(workers)]
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(tally_chunk, chunks)
    else:
        parts = [tally_chunk(docs)]
    tally = parts[0]
    for part in parts[1:]:
        for k, t in part.items():
            for c in ZERO:
                tally[k][c] += t[c]
            tally[k]["examples"] = (tally[k]["examples"] + t["examples"])[:5]
    rows = []
    for i, (family, label, ours_rules, cls, _) in enumerate(RULES):
        row = {"family": family, "rule": label, "llmflow_rules": list(ours_rules), "reference": cls.__name__}
        for col in COLUMNS:
            t = tally[(col, i)]
            n = sum(t[k] for k in ZERO)
            row[col] = {**t, "agreement": round((t["both_keep"] + t["both_drop"]) / n, 4)}
        rows.append(row)
    return {"docs": len(docs), "rules": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="JSONL with id, text (make-bench-corpus.py)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--workers", type=int, default=1, help="processes (verdicts do not depend on it)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "filters-agreement.json"))
    args = ap.parse_args()
    docs = load(args.corpus, args.limit)
    t0 = time.time()
    res = run(docs, args.workers)
    res.update(
        corpus=os.path.basename(args.corpus), datatrove=version("datatrove"), spacy=version("spacy"),
        seconds=round(time.time() - t0, 1), loadavg=os.getloadavg(),
    )  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"{res['docs']} documents; agreement with datatrove: llmflow default vs datatrove as shipped")
    print("(spaCy words) and with words = str.split; llmflow `words: spacy` vs datatrove as shipped")
    print(
        f"{'family':<18} {'rule':<26} {'shipped':>8} {'split':>7} {'w=spacy':>8}  drops llmflow/ref (shipped)"
    )
    for r in res["rules"]:
        s = r["spacy"]
        drops = (s["both_drop"] + s["only_llmflow_drops"], s["both_drop"] + s["only_reference_drops"])
        print(
            f"{r['family']:<18} {r['rule']:<26} {s['agreement']:>8.1%} {r['split']['agreement']:>7.1%} "
            f"{r['llmflow_spacy']['agreement']:>8.1%}  {drops}"
        )


if __name__ == "__main__":
    main()
