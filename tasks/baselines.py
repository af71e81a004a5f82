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
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

BUILTIN = "builtin:pydocs-summary"
BUILTIN_CONSTANT = "Return the result."

_SIGNATURE = re.compile(r"^\s*(?:async\s+)?(?:def|class)\s+([\w.]+)\s*[(:]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


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


def baseline_answers(source: str, prompts: list[str], train_responses: Iterable[str]) -> dict[str, list[str]]:
    """{baseline name: one answer per prompt} for the baselines that apply to this task."""
    const = constant_answer(source, train_responses)
    out = {"constant": [const] * len(prompts), "first_sentence": [first_sentence(p) for p in prompts]}
    names = [name_words(p) for p in prompts]
    if all(n is not None for n in names):
        out["name_words"] = names  # type: ignore[assignment]
    return out
