"""Trivial baselines of a prompt -> response task: answers that need no model and no tuning.

A fine-tuned model is worth promoting only when it beats these on the same held-out items (the
gate's reference points, tasks/gate.py). Every task gets:

- `constant`: one answer for every prompt: "Return the result." for `builtin:pydocs-summary`
  (the most common shape of a Python docstring summary), otherwise the most frequent response
  of the train split (ties: the shortest, then the first in sort order);
- `first_sentence`: the first sentence of the prompt's text (without its signature line).

A prompt that opens or ends with a Python signature line (`def name(...)`, `class Name(...)`, as
in the built-in task) also gets:

- `name_words`: the function's name split into words, `read_file` -> "Read file.",
  `json.JSONDecoder.raw_decode` -> "Raw decode.".

On request (`evaluate.retrieval_baseline`), a retrieval answer that needs no model either:

- `nearest_train`: the response of the train item whose prompt is most similar (TF-IDF cosine
  over the prompts' words of ASCII letters, lowercased, with sublinear term frequency and smoothed
  idf as in scikit-learn's `TfidfVectorizer(sublinear_tf=True, token_pattern="[A-Za-z]+")`); a
  prompt sharing no word with any train prompt gets the `constant` answer. On the built-in task
  it ties the demo's champion (benchmarks/RESULTS.md, demo levers, tenth round).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

BUILTIN = "builtin:pydocs-summary"
BUILTIN_CONSTANT = "Return the result."

_SIGNATURE = re.compile(r"^\s*(?:async\s+)?(?:def|class)\s+([\w.]+)\s*[(:]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_WORD = re.compile(r"[a-z]+")


def constant_answer(source: str, train_responses: Iterable[str]) -> str:
    """The `constant` baseline's one answer for this task."""
    if source == BUILTIN:
        return BUILTIN_CONSTANT
    counts = Counter(r.strip() for r in train_responses if r.strip())
    if not counts:
        return ""
    return min(counts.items(), key=lambda kv: (-kv[1], len(kv[0]), kv[0]))[0]


def _signature_line(prompt: str) -> tuple[int, re.Match[str]] | None:
    """(index, match) of the prompt's signature line, else None: an unindented first line, else an
    unindented last line (the built-in task indents every body line, so an example `def` inside
    the docstring is never taken for the signature), else a first line indented or not."""
    lines = prompt.split("\n")
    for i, unindented in ((0, True), (len(lines) - 1, True), (0, False)):
        m = _SIGNATURE.match(lines[i])
        if m and (not unindented or not lines[i][:1].isspace()):
            return i, m
    return None


def signature_name(prompt: str) -> str | None:
    """The function or class name of a prompt that opens or ends with a Python signature, else None."""
    found = _signature_line(prompt)
    return found[1].group(1).rsplit(".", 1)[-1] if found else None


def identifier_words(name: str) -> str:
    """`read_file` / `readFile` / `ReadFile` -> "read file": an identifier's subtokens, lowercase."""
    words = [w for part in name.split("_") for w in _CAMEL.split(part) if w]
    return " ".join(w.lower() for w in words)


def name_words(prompt: str) -> str | None:
    """`def os.path.read_file(...)` -> "Read file."; None when the prompt has no signature."""
    name = signature_name(prompt)
    if name is None:
        return None
    text = identifier_words(name)
    if not text:
        return None
    return text[0].upper() + text[1:] + "."


def _drop_name_line(lines: list[str], found: tuple[int, re.Match[str]] | None) -> list[str]:
    """Without a last line that repeats the signature's name as words (the task's
    `signature_first_name_words` layout): it is a hint, not text of the docstring."""
    if found and found[0] == 0 and len(lines) > 2:
        name = found[1].group(1).rsplit(".", 1)[-1]
        if lines[-1] == identifier_words(name):
            return lines[:-1]
    return lines


def first_sentence(prompt: str) -> str:
    """The first sentence of the prompt's text, without its signature line (first or last)."""
    found = _signature_line(prompt)
    lines = _drop_name_line(prompt.split("\n"), found)
    text = "\n".join(lines[: found[0]] + lines[found[0] + 1 :]) if found and len(lines) > 1 else prompt
    text = " ".join(text.split())
    return _SENTENCE_END.split(text, 1)[0] if text else ""


def _tfidf(counts: Counter[str], idf: dict[str, float]) -> dict[str, float]:
    """L2-normalised TF-IDF weights (sublinear tf) of the words in `idf`'s vocabulary."""
    w = {t: (1.0 + math.log(c)) * idf[t] for t, c in counts.items() if t in idf}
    norm = math.sqrt(sum(v * v for v in w.values()))
    return {t: v / norm for t, v in w.items()} if norm else {}


class TfidfIndex:
    """TF-IDF cosine over prompts' words (as scikit-learn's `TfidfVectorizer(sublinear_tf=True,
    token_pattern="[A-Za-z]+")` scores them), built once over the train prompts."""

    def __init__(self, train_prompts: list[str]):
        docs = [Counter(_WORD.findall(p.lower())) for p in train_prompts]
        df = Counter(t for d in docs for t in d)
        n = len(docs)
        self._idf = {t: math.log((1 + n) / (1 + k)) + 1.0 for t, k in df.items()}
        self._index: defaultdict[str, list[tuple[int, float]]] = defaultdict(list)
        for i, d in enumerate(docs):
            for t, v in _tfidf(d, self._idf).items():
                self._index[t].append((i, v))

    def top(self, prompt: str, k: int) -> list[int]:
        """The indices of the `k` train prompts most similar to `prompt`, best first (ties: the
        first), only those sharing a word with it."""
        scores: defaultdict[int, float] = defaultdict(float)
        for t, q in _tfidf(Counter(_WORD.findall(prompt.lower())), self._idf).items():
            for i, v in self._index[t]:
                scores[i] += q * v
        ranked = sorted((kv for kv in scores.items() if kv[1] > 0), key=lambda kv: (-kv[1], kv[0]))
        return [i for i, _ in ranked[:k]]


def nearest_train(
    prompts: list[str], train_prompts: list[str], train_responses: list[str], fallback: str
) -> list[str]:
    """Per prompt, the response of the most TF-IDF-similar train prompt (the first on a tie);
    `fallback` for a prompt that shares no word with any train prompt."""
    index = TfidfIndex(train_prompts)
    out = []
    for p in prompts:
        best = index.top(p, 1)
        out.append(train_responses[best[0]] if best else fallback)
    return out


def baseline_answers(
    source: str,
    prompts: list[str],
    train_responses: Iterable[str],
    train_prompts: list[str] | None = None,
) -> dict[str, list[str]]:
    """{baseline name: one answer per prompt} for the baselines that apply to this task; with
    `train_prompts` (the prompts of `train_responses`, in order) also `nearest_train`."""
    train_responses = list(train_responses)
    const = constant_answer(source, train_responses)
    out = {"constant": [const] * len(prompts), "first_sentence": [first_sentence(p) for p in prompts]}
    names = [name_words(p) for p in prompts]
    if all(n is not None for n in names):
        out["name_words"] = names  # type: ignore[assignment]
    if train_prompts:
        if len(train_prompts) != len(train_responses):
            raise ValueError("train_prompts and train_responses must pair up")
        out["nearest_train"] = nearest_train(prompts, train_prompts, train_responses, const)
    return out
