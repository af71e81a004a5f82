"""Offline toxicity scoring with a word list that ships inside a PyPI package.

The list is `better_profanity`'s ``profanity_wordlist.txt`` (~900 English profanities and slurs,
single words and a few phrases), read as data; llmflow keeps no word list of its own. Matching
is on lowercase ``[a-z]+`` words, so it is fast (one regex pass and set lookups) and
deterministic.

Contract: `toxicity_score(text) -> float` in [0, 1] is the share of words that are on the list
(a phrase counts for each of its words); 0.0 for text without words. Others import it to score
model generations. `ToxicityFilter(cfg)(text)` drops a document whose score exceeds
`cfg.max_score`, ignoring the dual-use words in `cfg.ignore` (``kill``, ``strip`` ... are everyday
words in technical text).
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

from llmflow.config import ToxicityConfig

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


@lru_cache(maxsize=1)
def wordlist() -> tuple[frozenset[str], tuple[str, ...]]:
    """(single words, multi-word phrases) of the shipped list."""
    try:
        raw = resources.files("better_profanity").joinpath("profanity_wordlist.txt").read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as e:  # pragma: no cover - declared dependency
        raise RuntimeError(
            "toxicity needs the 'better_profanity' package (pip install better_profanity)"
        ) from e
    entries = [w.strip().lower() for w in raw.splitlines() if w.strip()]
    return frozenset(w for w in entries if " " not in w), tuple(w for w in entries if " " in w)


@lru_cache(maxsize=16)
def _matcher(ignore: frozenset[str]) -> tuple[frozenset[str], re.Pattern | None]:
    words, phrases = wordlist()
    phrases = tuple(p for p in phrases if p not in ignore)
    pat = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in phrases) + r")\b") if phrases else None
    return words - ignore, pat


def toxicity_score(text: str, ignore: frozenset[str] | tuple[str, ...] = ()) -> float:
    lowered = text.lower()
    words = _WORD.findall(lowered)
    if not words:
        return 0.0
    single, phrase_re = _matcher(frozenset(ignore))
    hits = sum(1 for w in words if w in single)
    if phrase_re is not None:
        hits += sum(len(m.split()) for m in phrase_re.findall(lowered))
    return min(1.0, hits / len(words))


class ToxicityFilter:
    def __init__(self, cfg: ToxicityConfig):
        self.max_score = cfg.max_score
        self.ignore = frozenset(w.lower() for w in cfg.ignore)

    def __call__(self, text: str) -> tuple[bool, str | None, float | None, float]:
        score = toxicity_score(text, self.ignore)
        if score > self.max_score:
            return False, "filter:toxicity", score, score
        return True, None, None, score
