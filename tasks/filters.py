"""Quality filters after Gopher (Rae et al. 2021, "quality" and "repetition" rules), C4 (Raffel et
al. 2020) and FineWeb (Penedo et al. 2024), datatrove style.

`quality_signals(text)` measures a document once (vectorized where it matters) and returns the
numbers every rule reads; `QualityFilter(cfg)(text)` answers ``(keep, reason, value, signals)``:
``reason`` is ``"filter:<rule>"`` for the first failed rule (``None`` when kept) and ``value`` is
the measurement that decided it. The published defaults (in `llmflow.config.QualityConfig`):

| rule | origin | default |
|---|---|---|
| `gopher_min_words` / `gopher_max_words` | Gopher quality | 50 / 100,000 non-symbol words |
| `gopher_mean_word_length` | Gopher quality | 3 to 10 characters |
| `gopher_symbol_word_ratio` | Gopher quality | ``#`` and ``...``/``…`` per word <= 0.1 |
| `gopher_bullet_lines` | Gopher quality | <= 90% of lines start with a bullet |
| `gopher_ellipsis_lines` | Gopher quality | <= 30% of lines end with an ellipsis |
| `gopher_alpha_words` | Gopher quality | >= 80% of words contain a letter |
| `gopher_stop_words` | Gopher quality | >= 2 of the, be, to, of, and, that, have, with |
| `gopher_dup_lines` / `gopher_dup_paragraphs` | Gopher repetition | <= 30% of lines / paragraphs are repeats |
| `gopher_dup_line_chars` / `gopher_dup_paragraph_chars` | Gopher repetition | <= 20% of characters in repeats |
| `gopher_top_ngram` | Gopher repetition | most frequent 2/3/4-gram covers <= 20/18/16% of characters |
| `gopher_dup_ngram` | Gopher repetition | repeated 5..10-grams cover <= 15..10% of characters |
| `c4_lorem_ipsum` | C4 | no "lorem ipsum" |
| `fineweb_line_punct` | FineWeb | >= 12% of lines end in terminal punctuation |
| `fineweb_short_lines` | FineWeb | <= 67% of lines shorter than 30 characters |
| `fineweb_dup_line_chars` | FineWeb | <= 1% of characters in duplicated lines |

Words for the Gopher quality rules are whitespace-split; n-gram rules use lowercase ``\\w+``
tokens (`tasks.ngrams.tokens`). The repeated n-gram coverage marks every word inside an n-gram seen
earlier in the document (a vectorized form of datatrove's non-overlapping scan).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from llmflow.config import QualityConfig
from tasks.ngrams import iter_ngram_hashes, text_tokens, token_hashes

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "●", "◦", "‣", "-", "*", "–", "—", "▪")
TERMINAL = (".", "!", "?", '"', "'", "”", "’")
_ALPHA_WORD = re.compile(r"\S*?[^\W\d_]\S*")  # a whitespace-delimited word holding a letter
_PUNCT_WORD = re.compile(r"(?<!\S)(?:[^\w\s]|_)+(?!\S)")  # a word of punctuation/symbols only
_STOP_HASHES = token_hashes(sorted(STOP_WORDS))
_PARAGRAPH = re.compile(r"\n\s*\n")
_LOREM = re.compile(r"lorem ipsum", re.IGNORECASE)


def _dup_fractions(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of characters in those repeats)."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup = dup_chars = total_chars = 0
    for it in items:
        total_chars += len(it)
        if it in seen:
            dup += 1
            dup_chars += len(it)
        else:
            seen.add(it)
    return dup / len(items), (dup_chars / total_chars if total_chars else 0.0)


def _ngram_signals(toks: list[str], h: np.ndarray) -> dict[str, float]:
    out = {f"top_{n}gram_char_frac": 0.0 for n in (2, 3, 4)}
    out.update({f"dup_{n}gram_char_frac": 0.0 for n in range(5, 11)})
    if not toks:
        return out
    lens = np.fromiter(map(len, toks), dtype=np.int64, count=len(toks))
    total = float(lens.sum()) or 1.0
    csum = np.concatenate([[0], np.cumsum(lens)])
    for n, g in iter_ngram_hashes(h, tuple(range(2, 11))):
        if n <= 4:  # most frequent n-gram: run lengths of the sorted hashes
            sg = np.sort(g)
            starts = np.flatnonzero(np.concatenate(([True], sg[1:] != sg[:-1])))
            runs = np.diff(np.append(starts, len(sg)))
            i = int(np.argmax(runs))
            if runs[i] > 1:
                at = int(np.flatnonzero(g == sg[starts[i]])[0])
                out[f"top_{n}gram_char_frac"] = float(runs[i] * (csum[at + n] - csum[at]) / total)
            continue
        order = np.argsort(g, kind="stable")  # equal hashes keep position order: later = repeat
        sg = g[order]
        dup_starts = order[1:][sg[1:] == sg[:-1]]
        if len(dup_starts) == 0:
            continue
        cover = np.zeros(len(toks) + 1, dtype=np.int64)
        cover[dup_starts] += 1  # starts are distinct, so fancy-index += is exact
        cover[dup_starts + n] -= 1
        covered = np.cumsum(cover[:-1]) > 0
        out[f"dup_{n}gram_char_frac"] = float(lens[covered].sum() / total)
    return out


def quality_signals(text: str) -> dict[str, float]:
    """Every number the rules read. Pure; cost is linear in the text."""
    words = text.split()
    punct = _PUNCT_WORD.findall(text)
    n_real = len(words) - len(punct)
    lines = [ln for ln in (x.strip() for x in text.split("\n")) if ln]
    n_lines = len(lines) or 1
    paragraphs = (
        [p.strip() for p in _PARAGRAPH.split(text) if p.strip()] if "\n\n" in text else [text.strip()]
    )
    symbols = text.count("#") + text.count("...") + text.count("…")
    dup_lines, dup_line_chars = _dup_fractions(lines)
    dup_paras, dup_para_chars = _dup_fractions(paragraphs)
    line_counts = Counter(lines)
    fw_dup_chars = sum(len(ln) * (c - 1) for ln, c in line_counts.items() if c > 1)
    toks, h = text_tokens(text)
    sig = {
        "words": float(n_real),
        "mean_word_length": (sum(map(len, words)) - sum(map(len, punct))) / n_real if n_real > 0 else 0.0,
        "symbol_word_ratio": symbols / n_real if n_real > 0 else 0.0,
        "bullet_lines_ratio": sum(1 for ln in lines if ln.startswith(BULLETS)) / n_lines,
        "ellipsis_lines_ratio": sum(1 for ln in lines if ln.endswith(("...", "…"))) / n_lines,
        "alpha_words_ratio": len(_ALPHA_WORD.findall(text)) / len(words) if words else 0.0,
        "stop_words": float(np.count_nonzero(np.isin(h, _STOP_HASHES))) if len(h) else 0.0,
        "dup_line_frac": dup_lines,
        "dup_line_char_frac": dup_line_chars,
        "dup_paragraph_frac": dup_paras,
        "dup_paragraph_char_frac": dup_para_chars,
        "line_punct_ratio": sum(1 for ln in lines if ln.endswith(TERMINAL)) / n_lines,
        "short_line_ratio": sum(1 for ln in lines if len(ln) < 30) / n_lines,
        "fineweb_dup_line_char_frac": fw_dup_chars / max(len(text.replace("\n", "")), 1),
        "lorem_ipsum": 1.0 if _LOREM.search(text) else 0.0,
    }
    sig.update(_ngram_signals(toks, h))
    return sig


class QualityFilter:
    """The rules of `QualityConfig`, evaluated in order; the first failure decides."""

    def __init__(self, cfg: QualityConfig):
        c = cfg
        self.rules: list[tuple[str, str, str, float]] = [  # (name, signal, op, bound)
            ("gopher_min_words", "words", ">=", c.min_words),
            ("gopher_max_words", "words", "<=", c.max_words),
            ("gopher_mean_word_length", "mean_word_length", ">=", c.min_mean_word_length),
            ("gopher_mean_word_length", "mean_word_length", "<=", c.max_mean_word_length),
            ("gopher_symbol_word_ratio", "symbol_word_ratio", "<=", c.max_symbol_word_ratio),
            ("gopher_bullet_lines", "bullet_lines_ratio", "<=", c.max_bullet_lines_ratio),
            ("gopher_ellipsis_lines", "ellipsis_lines_ratio", "<=", c.max_ellipsis_lines_ratio),
            ("gopher_alpha_words", "alpha_words_ratio", ">=", c.min_alpha_words_ratio),
            ("gopher_stop_words", "stop_words", ">=", c.min_stop_words),
            ("gopher_dup_lines", "dup_line_frac", "<=", c.max_duplicate_line_fraction),
            ("gopher_dup_paragraphs", "dup_paragraph_frac", "<=", c.max_duplicate_paragraph_fraction),
            ("gopher_dup_line_chars", "dup_line_char_frac", "<=", c.max_duplicate_line_char_fraction),
            (
                "gopher_dup_paragraph_chars",
                "dup_paragraph_char_frac",
                "<=",
                c.max_duplicate_paragraph_char_fraction,
            ),
        ]
        for n, bound in sorted(c.max_top_ngram_char_fraction.items()):
            self.rules.append(("gopher_top_ngram", f"top_{n}gram_char_frac", "<=", bound))
        for n, bound in sorted(c.max_dup_ngram_char_fraction.items()):
            self.rules.append(("gopher_dup_ngram", f"dup_{n}gram_char_frac", "<=", bound))
        if c.c4_lorem_ipsum:
            self.rules.append(("c4_lorem_ipsum", "lorem_ipsum", "<=", 0.0))
        self.rules += [
            ("fineweb_line_punct", "line_punct_ratio", ">=", c.min_line_punct_ratio),
            ("fineweb_short_lines", "short_line_ratio", "<=", c.max_short_line_ratio),
            (
                "fineweb_dup_line_chars",
                "fineweb_dup_line_char_frac",
                "<=",
                c.max_fineweb_dup_line_char_fraction,
            ),
        ]

    def __call__(self, text: str) -> tuple[bool, str | None, float | None, dict[str, float]]:
        sig = quality_signals(text)
        for name, key, op, bound in self.rules:
            v = sig.get(key, 0.0)
            if (op == ">=" and v < bound) or (op == "<=" and v > bound):
                return False, f"filter:{name}", v, sig
        return True, None, None, sig
