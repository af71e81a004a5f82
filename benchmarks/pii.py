"""PII redaction: recall per type on an independent labelled set, lines altered in clean technical
prose, and the cost per document.

    python benchmarks/pii.py [--corpus /tmp/bench/corpus-10M.jsonl] [--out benchmarks/results/pii.json]

- Recall: `tests/pii_labels.py` (values Faker writes, 11 locales, in short sentences); a value is
  found when one span of its type covers it.
- Clean prose: every document of `builtin:pydocs` (reference topics + stdlib docstrings) and, when
  /usr/share/man exists, every `--man-every`-th English man page (roff source with the markup
  stripped: requests, font escapes, comments). Each document is redacted whole, as prepare does,
  and a line counts as altered when a span touches it. Alterations per 100 non-blank lines,
  by type, with the altered lines kept in the JSON for reading.
- Cost: CPU seconds of `redact` (all types) over the pydocs documents and, with `--corpus`, over
  the JSONL corpus of `../shared/bench/make-bench-corpus.py`; docs/s per core. The corpus is also
  measured as prose (it is reflowed: there a line is a paragraph).
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import re
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.pii import redact  # noqa: E402

_ROFF_ESCAPE = re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)|\\s[+-]?\d|\\[&|^%c]|\\\*(?:\(..|\[[^\]]*\]|.)")
_ROFF_CHAR = {r"\-": "-", r"\(em": "--", r"\(en": "-", r"\(aq": "'", r"\(dq": '"', r"\e": "\\", r"\ ": " "}


def deroff(source: str) -> str:
    """Roff source to plain lines: comments and bare requests go, font escapes are dropped."""
    out = []
    for line in source.splitlines():
        if line.startswith(('.\\"', "'\\\"", '.\\"')) or line in (".", "'"):
            continue
        if line.startswith((".", "'")):
            req, _, rest = line[1:].partition(" ")
            if req in {
                "B",
                "I",
                "BR",
                "RB",
                "IR",
                "RI",
                "BI",
                "IB",
                "SH",
                "SS",
                "TP",
                "IP",
                "TH",
                "SM",
                "SB",
            }:
                line = rest.replace('"', "")
            else:
                continue
        for k, v in _ROFF_CHAR.items():
            line = line.replace(k, v)
        out.append(_ROFF_ESCAPE.sub("", line))
    return "\n".join(out)


def man_documents(every: int) -> list[tuple[str, str]]:
    root = Path("/usr/share/man")
    pages = sorted(p for d in sorted(root.glob("man[1-8]")) for p in d.glob("*.gz"))[::every]
    docs = []
    for p in pages:
        try:
            docs.append((str(p), deroff(gzip.decompress(p.read_bytes()).decode("utf-8", "replace"))))
        except (OSError, EOFError):  # a broken or dangling page is not prose: skip it
            continue
    return docs


def altered_lines(docs: list[tuple[str, str]], keep: int = 150) -> dict:
    """Lines a span touches, by type, and up to `keep` of them (other types before emails), shown
    REDACTED: the JSON is committed and must not carry the emails and addresses it counts."""
    lines = altered = 0
    by_type: Counter[str] = Counter()
    examples = []
    for name, text in docs:
        starts = [0] + [m.end() for m in re.finditer("\n", text)]
        lines += sum(1 for line in text.split("\n") if line.strip())
        spans = redact(text).spans
        hit: dict[int, list] = {}
        for s in spans:
            for i in range(_line_of(starts, s.start), _line_of(starts, max(s.start, s.end - 1)) + 1):
                hit.setdefault(i, []).append(s)
        altered += len(hit)
        for i, line_spans in sorted(hit.items()):
            kinds = sorted({s.type for s in line_spans})
            by_type.update(kinds)
            start, end = starts[i], starts[i + 1] - 1 if i + 1 < len(starts) else len(text)
            examples.append(
                {"doc": name, "types": kinds, "line": _redacted(text, start, end, line_spans)[:200]}
            )
    examples.sort(key=lambda e: e["types"] == ["email"])  # stable: document order within each group
    return {
        "documents": len(docs),
        "lines": lines,
        "altered_lines": altered,
        "altered_per_100_lines": round(100 * altered / max(lines, 1), 3),
        "altered_lines_by_type": dict(sorted(by_type.items())),
        "altered": examples[:keep],
    }


def _redacted(text: str, start: int, end: int, spans: list) -> str:
    parts, pos = [], start
    for s in spans:
        parts += [text[pos : max(pos, s.start)], f"<{s.type.upper()}>"]
        pos = max(pos, min(s.end, end))
    return "".join(parts) + text[pos:end]


def _line_of(starts: list[int], pos: int) -> int:
    from bisect import bisect_right

    return bisect_right(starts, pos) - 1


def cost(texts: list[str], types=None) -> dict:
    kw = {} if types is None else {"types": types}
    t0 = time.process_time()
    for t in texts:
        redact(t, **kw)
    cpu = time.process_time() - t0
    return {"documents": len(texts), "cpu_s": round(cpu, 3), "docs_per_s": round(len(texts) / max(cpu, 1e-9))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", help="JSONL corpus (make-bench-corpus.py) for docs/s on mixed text")
    ap.add_argument("--man-every", type=int, default=10, help="take every n-th English man page")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pii.json"))
    args = ap.parse_args()

    import faker
    import phonenumbers

    from tasks.pydocs import iter_documents
    from tests.pii_labels import KINDS, recall

    result: dict = {
        "versions": {
            "python": platform.python_version(),
            "phonenumbers": phonenumbers.__version__,
            "faker": faker.VERSION,
        },
        "recall": {k: round(recall(k, redact), 3) for k in KINDS},
    }
    pydocs = [(loc, text) for loc, text, _ in iter_documents()]
    prose = {"pydocs": altered_lines(pydocs)}
    if Path("/usr/share/man").is_dir():
        prose["man"] = altered_lines(man_documents(args.man_every))
    result["cost"] = {
        "pydocs": cost([t for _, t in pydocs]),
        "pydocs_phone_only": cost([t for _, t in pydocs], ("phone",)),
    }
    if args.corpus:
        with open(args.corpus) as f:
            texts = [json.loads(line)["text"] for line in f]
        result["cost"]["corpus"] = {"path": args.corpus, **cost(texts)}
        prose["corpus"] = altered_lines([(f"{args.corpus}:{i}", t) for i, t in enumerate(texts)])
    result["prose"] = prose
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    print("recall  " + "  ".join(f"{k} {v:.3f}" for k, v in result["recall"].items()))
    for name, p in prose.items():
        print(
            f"prose {name}: {p['altered_lines']:,} of {p['lines']:,} lines altered "
            f"({p['altered_per_100_lines']:.3f} per 100) {p['altered_lines_by_type']}"
        )
    for name, c in result["cost"].items():
        print(f"cost {name}: {c['documents']:,} docs, {c['cpu_s']} CPU s, {c['docs_per_s']:,} docs/s")


if __name__ == "__main__":
    main()
