"""Normalization, quality rules, language ID and toxicity on small synthetic texts."""

from __future__ import annotations

from llmflow.config import LangIdConfig, QualityConfig, ToxicityConfig
from tasks.filters import QualityFilter, quality_signals
from tasks.langid import LangFilter, identify
from tasks.normalize import normalize
from tasks.toxicity import ToxicityFilter, toxicity_score

GOOD = (
    "The configuration parser reads the file and returns a mapping of names to values. "
    "When a key is missing, the default is used so that every option has a value. "
    "Errors in the file are reported with the line number where they occur, and the parser "
    "stops at the first error to keep the messages short. Comments start with a hash sign "
    "and are ignored, as are blank lines between the sections of the file. The result is a "
    "plain dictionary."
)


def test_normalize_repairs_text():
    assert normalize("caf\u00c3\u00a9 ok") == "café ok"  # mojibake
    assert normalize("e\u0301") == "\u00e9"  # NFC
    assert normalize("a\x00b\x07c\r\nd  \n\n\n\ne\u00a0f") == "abc\nd\n\ne f"
    assert normalize("x\ud800y") == "x\ufffdy"  # lone surrogate
    assert normalize("    indented code\n        kept") == "indented code\n        kept"  # only ends stripped
    assert normalize("") == ""


def test_good_prose_passes_all_rules():
    keep, reason, value, sig = QualityFilter(QualityConfig(min_words=20))(GOOD)
    assert keep and reason is None and value is None
    assert sig["stop_words"] >= 2 and 3 <= sig["mean_word_length"] <= 10


def test_each_rule_reports_its_value():
    f = QualityFilter(QualityConfig())
    keep, reason, value, _ = f("too short")
    assert (keep, reason, value) == (False, "filter:gopher_min_words", 2.0)
    keep, reason, value, _ = f(("# " * 10 + GOOD + "\n") * 1)
    assert reason == "filter:gopher_hash_ratio" and value > 0.1
    keep, reason, _, _ = f("\n".join(["the same line repeated here and that is bad"] * 30))
    assert reason in ("filter:gopher_dup_lines", "filter:gopher_dup_line_chars")
    keep, reason, _, _ = f(" ".join(["1234 5678 9012 ++ --"] * 40) + " the and")
    assert reason in ("filter:gopher_mean_word_length", "filter:gopher_alpha_words")
    keep, reason, _, _ = f(GOOD + " Lorem ipsum dolor sit amet.")
    assert reason == "filter:c4_lorem_ipsum"
    assert f(GOOD)[0]


def test_repetition_signals():
    rep = " ".join(["alpha beta gamma delta epsilon"] * 20)
    s = quality_signals(rep)
    # 19 repeats of the 26 letters of a 5-gram, over the 619 characters of the text
    assert s["dup_5gram_char_frac"] == 19 * 26 / 619 and s["top_2gram_char_frac"] > 0.3
    s = quality_signals(GOOD)
    # no 4-gram repeats, so the "top" one is the first, seen once (datatrove's Counter.most_common)
    assert s["dup_10gram_char_frac"] == 0.0
    assert s["top_4gram_char_frac"] == len("The configuration parser reads") / len(GOOD)


def test_language_id_and_allow_list():
    assert identify(GOOD)[0] == "en" and identify(GOOD)[1] > 0.9
    assert identify("Le chat dort sur le canapé pendant que les enfants jouent dans le jardin.")[0] == "fr"
    assert identify("") == ("und", 0.0) and identify("1234 5678")[0] == "und"
    keep, reason, _, (lang, _) = LangFilter(LangIdConfig(allow=["en"]))(
        "Der Hund schläft im Garten und die Katze auch."
    )
    assert not keep and reason == "filter:lang" and lang == "de"
    assert LangFilter(LangIdConfig(allow=[]))("Der Hund schläft im Garten.")[0]  # empty allow-list = all


def test_toxicity_score_and_filter():
    assert toxicity_score(GOOD) == 0.0 and toxicity_score("") == 0.0
    assert toxicity_score("you stupid fucking asshole") >= 0.5
    f = ToxicityFilter(ToxicityConfig())
    assert f("kill the process and strip the whitespace with len of the string")[0]  # dual-use ignored
    keep, reason, value, _ = f(GOOD + " fuck this shit, asshole, fuck it")
    assert not keep and reason == "filter:toxicity" and value > 0.02
