"""Quality filters after Gopher (Rae et al. 2021, "quality" and "repetition" rules), C4 (Raffel et
al. 2020) and FineWeb (Penedo et al. 2024), as datatrove 0.10.1 implements them.

`QualityFilter(cfg)(text)` answers ``(keep, reason, value, signals)``: ``reason`` is
``"filter:<rule>"`` for the first failed rule (``None`` when kept) and ``value`` is the
measurement that decided it; `QualityFilter.verdicts(signals)` gives every rule's pass/fail. The
measurements are in `tasks.quality_signals`. Published defaults (in `llmflow.config.QualityConfig`):

| rule | origin | default |
|---|---|---|
| `gopher_min_words` / `gopher_max_words` | Gopher quality | 50 / 100,000 non-symbol words |
| `gopher_mean_word_length` | Gopher quality | 3 to 10 characters per non-symbol word |
| `gopher_hash_ratio` | Gopher quality | ``#`` per word <= 0.1 |
| `gopher_ellipsis_ratio` | Gopher quality | ``...`` and ``…`` per word <= 0.1 |
| `gopher_bullet_lines` | Gopher quality | <= 90% of lines start with a bullet (• or -) |
| `gopher_ellipsis_lines` | Gopher quality | <= 30% of lines end with an ellipsis |
| `gopher_alpha_words` | Gopher quality | >= 80% of words contain a letter |
| `gopher_stop_words` | Gopher quality | >= 2 distinct of the, be, to, of, and, that, have, with |
| `gopher_dup_paragraphs` / `gopher_dup_lines` | Gopher repetition | <= 30% of paragraphs / lines are repeats |
| `gopher_dup_paragraph_chars` / `gopher_dup_line_chars` | Gopher repetition | repeats hold <= 20% of characters |
| `gopher_top_ngram` | Gopher repetition | most frequent 2/3/4-gram covers <= 20/18/16% of characters |
| `gopher_dup_ngram` | Gopher repetition | repeated 5..10-grams (non-overlapping scan) cover <= 15..10% |
| `c4_lorem_ipsum` / `c4_curly_bracket` | C4 | no "lorem ipsum" / "{" in a kept line |
| `c4_min_sentences` | C4 | >= 5 sentences in kept lines (lines ending in terminal punctuation, >= 3 words, no javascript / policy text) |
| `fineweb_line_punct` | FineWeb | >= 12% of lines end in terminal punctuation |
| `fineweb_short_lines` | FineWeb | <= 67% of lines have at most 30 characters |
| `fineweb_dup_line_chars` | FineWeb | <= 1% of characters in duplicated lines |
| `fineweb_list_ratio` | FineWeb | <= 0.3 newlines per word |

Where this differs from datatrove (whitespace words, case-insensitive stop words, C4 as a verdict
that does not rewrite the text, an approximate sentence count) is a choice named in docs/steps.md; the agreement
per rule is measured by `benchmarks/filters_agreement.py`.
"""

from __future__ import annotations

from llmflow.config import QualityConfig
from tasks.quality_signals import DUP_NGRAMS, TOP_NGRAMS, c4_signals, quality_signals

__all__ = ["FAMILIES", "QualityFilter", "quality_signals"]

# rule name prefix -> the reference filter it belongs to
FAMILIES = {
    "gopher_quality": (
        "gopher_min_words", "gopher_max_words", "gopher_mean_word_length", "gopher_hash_ratio",
        "gopher_ellipsis_ratio", "gopher_bullet_lines", "gopher_ellipsis_lines", "gopher_alpha_words",
        "gopher_stop_words",
    ),
    "gopher_repetition": (
        "gopher_dup_paragraphs", "gopher_dup_paragraph_chars", "gopher_dup_lines", "gopher_dup_line_chars",
        *(f"gopher_top_{n}gram" for n in TOP_NGRAMS), *(f"gopher_dup_{n}gram" for n in DUP_NGRAMS),
    ),
    "c4": ("c4_lorem_ipsum", "c4_curly_bracket", "c4_min_sentences"),
    "fineweb": ("fineweb_line_punct", "fineweb_short_lines", "fineweb_dup_line_chars", "fineweb_list_ratio"),
}  # fmt: skip


class QualityFilter:
    """The rules of `QualityConfig`, evaluated in the reference's order; the first failure decides."""

    def __init__(self, cfg: QualityConfig):
        c = self.cfg = cfg
        self.rules: list[tuple[str, str, str, float]] = [  # (name, signal, op, bound)
            ("gopher_min_words", "words", ">=", c.min_words),
            ("gopher_max_words", "words", "<=", c.max_words),
            ("gopher_mean_word_length", "mean_word_length", ">=", c.min_mean_word_length),
            ("gopher_mean_word_length", "mean_word_length", "<=", c.max_mean_word_length),
            ("gopher_hash_ratio", "hash_word_ratio", "<=", c.max_symbol_word_ratio),
            ("gopher_ellipsis_ratio", "ellipsis_word_ratio", "<=", c.max_symbol_word_ratio),
            ("gopher_bullet_lines", "bullet_lines_ratio", "<=", c.max_bullet_lines_ratio),
            ("gopher_ellipsis_lines", "ellipsis_lines_ratio", "<=", c.max_ellipsis_lines_ratio),
            ("gopher_alpha_words", "alpha_words_ratio", ">=", c.min_alpha_words_ratio),
            ("gopher_stop_words", "stop_words", ">=", c.min_stop_words),
            ("gopher_dup_paragraphs", "dup_paragraph_frac", "<=", c.max_duplicate_paragraph_fraction),
            (
                "gopher_dup_paragraph_chars",
                "dup_paragraph_char_frac",
                "<=",
                c.max_duplicate_paragraph_char_fraction,
            ),
            ("gopher_dup_lines", "dup_line_frac", "<=", c.max_duplicate_line_fraction),
            ("gopher_dup_line_chars", "dup_line_char_frac", "<=", c.max_duplicate_line_char_fraction),
        ]
        for n, bound in sorted(c.max_top_ngram_char_fraction.items()):
            self.rules.append((f"gopher_top_{n}gram", f"top_{n}gram_char_frac", "<=", bound))
        for n, bound in sorted(c.max_dup_ngram_char_fraction.items()):
            self.rules.append((f"gopher_dup_{n}gram", f"dup_{n}gram_char_frac", "<=", bound))
        self.c4 = c.c4_lorem_ipsum or c.c4_curly_bracket or c.c4_min_sentences > 0
        if c.c4_lorem_ipsum:
            self.rules.append(("c4_lorem_ipsum", "lorem_ipsum", "<=", 0.0))
        if c.c4_curly_bracket:
            self.rules.append(("c4_curly_bracket", "curly_bracket", "<=", 0.0))
        if c.c4_min_sentences > 0:
            self.rules.append(("c4_min_sentences", "c4_sentences", ">=", c.c4_min_sentences))
        self.rules += [
            ("fineweb_line_punct", "line_punct_ratio", ">=", c.min_line_punct_ratio),
            ("fineweb_short_lines", "short_line_ratio", "<=", c.max_short_line_ratio),
            (
                "fineweb_dup_line_chars",
                "fineweb_dup_line_char_frac",
                "<=",
                c.max_fineweb_dup_line_char_fraction,
            ),
            ("fineweb_list_ratio", "list_ratio", "<=", c.max_fineweb_list_ratio),
        ]

    def signals(self, text: str) -> dict[str, float]:
        sig = quality_signals(text, self.cfg.words)
        if self.c4:
            sig.update(c4_signals(text, self.cfg))
        return sig

    def verdicts(self, sig: dict[str, float]) -> dict[str, bool]:
        """rule name -> passed, for every configured rule (not only the first failure)."""
        out: dict[str, bool] = {}
        for name, key, op, bound in self.rules:
            v = sig.get(key, 0.0)
            ok = not ((op == ">=" and v < bound) or (op == "<=" and v > bound))
            out[name] = out.get(name, True) and ok
        return out

    def __call__(self, text: str) -> tuple[bool, str | None, float | None, dict[str, float]]:
        sig = self.signals(text)
        for name, key, op, bound in self.rules:
            v = sig.get(key, 0.0)
            if (op == ">=" and v < bound) or (op == "<=" and v > bound):
                return False, f"filter:{name}", v, sig
        return True, None, None, sig
