"""Each quality rule on hand-built texts, labelled from the published rule definitions (Gopher:
Rae et al. 2021 Appendix A; C4: Raffel et al. 2020 / tfds c4_utils; FineWeb: Penedo et al. 2024;
as datatrove 0.10.1 implements them), not from this implementation's output."""

from __future__ import annotations

import pytest

from llmflow.config import QualityConfig
from tasks.filters import QualityFilter
from tasks.quality_signals import count_sentences
from tests.prereq import skip_missing

# 60 distinct 5-letter words, no stop word, no punctuation: passes every Gopher quality rule but
# the stop-word one, and repeats nothing.
FILL = " ".join(f"w{chr(97 + i // 26)}{chr(97 + i % 26)}xy" for i in range(60))


def failed(text: str, **cfg) -> set[str]:
    f = QualityFilter(QualityConfig(**cfg))
    return {rule for rule, ok in f.verdicts(f.signals(text)).items() if not ok}


def test_stop_words_must_be_two_distinct():
    # "the" twelve times is ONE distinct stop word: Gopher asks for two of the eight.
    text = FILL + " the" * 12
    assert "gopher_stop_words" in failed(text)
    assert "gopher_stop_words" not in failed(FILL + " the of")  # two distinct, once each
    assert "gopher_stop_words" not in failed(FILL + " The OF")  # case-insensitive (a named choice)


def test_word_count_bounds_count_non_symbol_words():
    words49 = " ".join(FILL.split()[:49]) + " the of"  # 51 words
    assert "gopher_min_words" not in failed(words49)
    assert "gopher_min_words" in failed(" ".join(FILL.split()[:47]) + " the of")  # 49 words
    # symbol-only words ("--", "|") do not count towards the 50
    assert "gopher_min_words" in failed(" ".join(FILL.split()[:47]) + " the of -- | ->")
    assert "gopher_max_words" in failed(FILL + " the of", max_words=60)


def test_mean_word_length_3_to_10():
    assert "gopher_mean_word_length" in failed(" ".join(["ab"] * 60) + " the of")  # mean ~2.0
    assert "gopher_mean_word_length" in failed(" ".join(["abcdefghijkl"] * 60) + " the of")  # ~11.7
    assert "gopher_mean_word_length" not in failed(FILL + " the of")  # 5.0


def test_hash_and_ellipsis_ratios_are_checked_separately():
    # 60 words + 4 '#' words + 4 '...' words = 68 words: each ratio 4/68 = 0.06 <= 0.1, passes;
    # one shared symbol ratio (8/68 = 0.12) would have failed.
    text = FILL + " #" * 4 + " ..." * 4
    assert not failed(text) & {"gopher_hash_ratio", "gopher_ellipsis_ratio"}
    assert failed(FILL + " #" * 8) >= {"gopher_hash_ratio"}  # 8/68 = 0.118 > 0.1
    assert "gopher_ellipsis_ratio" in failed(FILL + " wait…" * 8)  # '…' counts as an ellipsis
    assert "gopher_hash_ratio" not in failed(FILL + " wait…" * 8)


def test_bullet_and_ellipsis_lines():
    lines = FILL.split()
    bullets = "\n".join(f"- {w} {w}" for w in lines[:10])  # 10 of 10 lines start with a bullet
    assert "gopher_bullet_lines" in failed(bullets)
    nine = "\n".join([f"- {w}" for w in lines[:9]] + ["plain line"])  # 9/10 = 0.9, not > 0.9
    assert "gopher_bullet_lines" not in failed(nine)
    ell = "\n".join([f"{w} and so on..." for w in lines[:4]] + [f"{w} ends." for w in lines[4:10]])
    assert "gopher_ellipsis_lines" in failed(ell)  # 4 of 10 lines > 30%
    ell3 = "\n".join([f"{w} and so on..." for w in lines[:3]] + [f"{w} ends." for w in lines[3:10]])
    assert "gopher_ellipsis_lines" not in failed(ell3)  # 3 of 10 = 30%


def test_alphabetic_words_80_percent():
    # 60 alphabetic words + 16 numbers = 76 words, 60/76 = 0.79 < 0.8
    assert "gopher_alpha_words" in failed(FILL + " 1234" * 16)
    assert "gopher_alpha_words" not in failed(FILL + " 1234" * 15)  # 60/75 = 0.8


def test_duplicate_lines_and_paragraphs_over_document_characters():
    text = "one line here\nanother line\none line here"  # 1 of 3 lines repeats, 13 of 40 chars
    f = QualityFilter(QualityConfig())
    s = f.signals(text)
    assert s["dup_line_frac"] == pytest.approx(1 / 3) and s["dup_line_char_frac"] == pytest.approx(13 / 40)
    para = "first para text\n\nsecond one\n\nfirst para text"  # 15 of 44 characters (15 + 2 + 10 + 2 + 15)
    s = f.signals(para)
    assert s["dup_paragraph_frac"] == pytest.approx(1 / 3)
    assert s["dup_paragraph_char_frac"] == pytest.approx(15 / 44)


def test_repeated_ngrams_use_gophers_non_overlapping_scan():
    # abcd efgh abcd efgh ... (11 words, 54 chars). The scan records the 5-grams at 0 and 1, meets
    # the 5-gram at 2 again, counts its 5 words (20 chars) and jumps to 7, past the last 5-gram (6):
    # 20/54. Marking every word inside any repeated 5-gram would count words 2..10 (36 chars).
    text = " ".join(["abcd", "efgh"] * 5 + ["abcd"])
    s = QualityFilter(QualityConfig()).signals(text)
    assert s["dup_5gram_char_frac"] == pytest.approx(20 / 54)
    # most frequent 2-gram: "abcd efgh" (5 times, 9 chars with its space; ties go to the first)
    assert s["top_2gram_char_frac"] == pytest.approx(45 / 54)


def test_c4_line_and_page_rules():
    ok = "\n".join(f"This is sentence number {i} of the page." for i in range(5))
    assert not failed(ok) & {"c4_min_sentences", "c4_curly_bracket", "c4_lorem_ipsum"}
    four = "\n".join(f"This is sentence number {i} of the page." for i in range(4))
    assert "c4_min_sentences" in failed(four)
    # lines that do not count: no terminal punctuation, an ellipsis, under 3 words, javascript, policy
    noise = "\n".join(
        ["int main() { return 0; }", "and then it goes on...", "Too short.",
         "Please enable JavaScript to see {this}.", "Read our privacy policy before you start."]
    )  # fmt: skip
    assert "c4_min_sentences" in failed(four + "\n" + noise)
    assert "c4_curly_bracket" not in failed(four + "\n" + noise)  # '{' only in skipped lines
    assert "c4_curly_bracket" in failed(ok + "\nThe object {a: 1} is a mapping.")
    assert "c4_lorem_ipsum" in failed(ok + "\nLorem ipsum dolor sit amet.")
    assert "c4_lorem_ipsum" not in failed(ok + "\nlorem ipsum dolor")  # not a kept line
    # one line with five sentences is enough
    assert "c4_min_sentences" not in failed("One here. Two there! Three? Four now. Five at last.")
    # each rule is an option
    assert not failed(four + "\n" + noise, c4_min_sentences=0) & {"c4_min_sentences"}
    assert "c4_curly_bracket" not in failed(ok + "\nThe object {a: 1} is a mapping.", c4_curly_bracket=False)
    assert "c4_min_sentences" not in failed(four + "\nPlease enable JavaScript now.", c4_javascript=False)


def test_sentence_count():
    assert count_sentences("One. Two! Three? Four.") == 4
    assert count_sentences("See e.g. the manual, version 3.5 of it.") == 1  # abbreviation, decimal
    assert count_sentences("Wait... then go.") == 1  # an ellipsis does not end a sentence


def test_fineweb_rules():
    # list ratio: 10 lines of 2 words: 9 newlines / 20 words = 0.45 > 0.3
    assert "fineweb_list_ratio" in failed("\n".join(["two words."] * 10))
    assert "fineweb_list_ratio" not in failed(
        "\n".join(["four words in line."] * 10), max_fineweb_dup_line_char_fraction=1
    )
    # short lines: at most 30 characters (inclusive)
    line30 = "a" * 29 + "."
    assert len(line30) == 30
    assert "fineweb_short_lines" in failed("\n".join(f"{line30[:-2]}{i}." for i in range(10)))
    long31 = "\n".join(f"{'b' * 29}{i}." for i in range(10))  # 31 chars each
    assert "fineweb_short_lines" not in failed(long31)
    # terminal punctuation: a closing quote is not one (FineWeb), under 12% of lines fails
    quoted = "\n".join([f'He said "line {i} of text"' for i in range(9)] + ["The end of it."])
    assert "fineweb_line_punct" in failed(quoted)  # 1/10 = 0.1 < 0.12
    # duplicated lines: 1% of characters
    dup = "\n".join(
        [f"unique line number {i} of this text." for i in range(60)] + ["unique line number 0 of this text."]
    )
    assert "fineweb_dup_line_chars" in failed(dup)  # 34 / ~2,100 chars = 1.6%


def test_spacy_words_count_punctuation_as_datatrove_does():
    try:
        import spacy  # noqa: F401
    except ImportError:
        skip_missing("spaCy (quality.words: spacy)", "pip install 'llmflow[spacy]'")
    # datatrove's English words are spaCy tokens: "Hello, world." is Hello , world . (4 words,
    # 2 with a letter); whitespace words: "Hello," "world." (2 words, both with a letter).
    text = "Hello, world. " * 30
    f = QualityFilter(QualityConfig(words="spacy"))
    s = f.signals(text)
    assert s["alpha_words_ratio"] == 0.5 and s["words"] == 60  # symbol-only tokens do not count
    assert QualityFilter(QualityConfig()).signals(text)["alpha_words_ratio"] == 1.0
    # stop words: exact tokens, as datatrove ("The" is not "the")
    assert f.signals(FILL + " The OF")["stop_words"] == 0
    assert f.signals(FILL + " the of.")["stop_words"] == 2  # spaCy splits the full stop off
