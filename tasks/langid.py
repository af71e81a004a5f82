"""Offline language identification with py3langid (langid.py's model ships inside the wheel).

Contract: `identify(text, max_chars=1500) -> (lang, score)` with an ISO 639-1 code and the
probability of the top language (normalized over the 97 languages, length-calibrated by
py3langid). Text without letters (empty, digits, binary junk) is ``("und", 0.0)``. Only the leading
`max_chars` characters are classified: the language of a document is settled within the first 1,500 characters,
and it bounds the cost of huge documents. `LangFilter(cfg)(text)` answers
``(keep, reason, value, (lang, score))`` against the allow-list and minimum score.
"""

from __future__ import annotations

import re
from functools import lru_cache

from llmflow.config import LangIdConfig

_LETTER = re.compile(r"[^\W\d_]")


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify(text: str, max_chars: int = 1500) -> tuple[str, float]:
    head = text[:max_chars]
    if not _LETTER.search(head):
        return "und", 0.0
    lang, score = _identifier().classify(head)
    return str(lang), float(score)


class LangFilter:
    def __init__(self, cfg: LangIdConfig):
        self.allow = frozenset(cfg.allow)
        self.min_score = cfg.min_score
        self.max_chars = cfg.max_chars

    def __call__(self, text: str) -> tuple[bool, str | None, float | None, tuple[str, float]]:
        lang, score = identify(text, self.max_chars)
        if self.allow and lang not in self.allow:
            return False, "filter:lang", score, (lang, score)
        if score < self.min_score:
            return False, "filter:lang_score", score, (lang, score)
        return True, None, None, (lang, score)
