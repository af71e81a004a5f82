"""The measurements the quality rules read, defined as the reference implementation defines them
(datatrove 0.10.1's `GopherQualityFilter`, `GopherRepetitionFilter`, `C4QualityFilter` and
`FineWebQualityFilter`), with the choices named in docs/steps.md ("Quality filters"):

* a *word* is a whitespace-delimited string (`str.split`), where datatrove counts spaCy tokens
  (punctuation split off and counted as words) for Gopher and FineWeb's list ratio;
* stop words are matched case-insensitively on lowercase ``\\w+`` tokens (datatrove: exact,
  case-sensitive tokens, so "The" does not count);
* C4's sentence count is a regex approximation of spaCy's sentencizer;
* C4's line rules decide which lines count, but the document text is not rewritten.

`quality.words: spacy` undoes the first three: words, stop words and sentences as datatrove
counts them, with spaCy's English tokenizer (optional dependency, about four times slower).
`quality_signals(text, words)` is pure; `c4_signals(text, cfg)` also reads the C4 line options.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from llmflow.config import QualityConfig
from tasks.ngrams import iter_ngram_hashes, text_tokens, token_hashes

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "-")  # datatrove's; "*" would also count C comment blocks
# datatrove's PUNCTUATION (Apache-2.0): a word made only of these is a "symbol word" for Gopher.
PUNCTUATION = (
    "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»"
    + "".join(map(chr, (x for a, b in ((0, 9), (11, 13), (13, 32), (127, 160)) for x in range(a, b))))
)
# datatrove's TERMINAL_PUNCTUATION (Apache-2.0): sentence-final marks of many scripts, for FineWeb.
TERMINAL_PUNCTUATION = tuple(
    "!.?։؝؞؟۔܀܁܂߹࠷࠹࠽࠾।॥၊။።፧፨᙮᜵᜶។៕៖៙៚᠃᠉᥄᥅᪨᪩᪪᪫᭚᭛᭞᭟᭽᭾᰻᰼᱾᱿‼‽⁇⁈⁉⸮⸼⹓⹔。꓿꘎꘏꛳꛷꡶꡷꣎꣏꤯꧈꧉꩝꩞꩟꫰꫱꯫﹒﹖﹗！．？｡"
    "𐩖𐩗𐽕𐽖𐽗𐽘𐽙𐾆𐾇𐾈𐾉𑁇𑁈𑂾𑂿𑃀𑃁𑅁𑅂𑅃𑇅𑇆𑇍𑇞𑇟𑈸𑈹𑈻𑈼𑊩𑑋𑑌𑗂𑗃𑗉𑗊𑗋𑗌𑗍𑗎𑗏𑗐𑗑𑗒𑗓𑗔𑗕𑗖𑗗𑙁𑙂𑜼𑜽𑜾𑥄𑥆𑩂𑩃𑪛𑪜𑱁𑱂𑻷𑻸\U00011f43\U00011f44𖩮𖩯𖫵𖬷𖬸𖭄𖺘𛲟𝪈"
)
C4_END_PUNCTUATION = (".", "?", "!", '"', "'")
C4_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
C4_POLICY = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
_SYMBOLS = PUNCTUATION + "".join(TERMINAL_PUNCTUATION)  # a word of only these is a symbol word
_STOP_HASHES = token_hashes(sorted(STOP_WORDS))
_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
# A sentence ends at . ! ? (not an ellipsis, not inside "e.g." / "3.5") closing a word, before more text.
_SENT_END = re.compile(r"(?<![.\s])(?<!\.\w)(?!\.\.)[.!?]+[\"'”’)\]]*\s+(?=\S)")

TOP_NGRAMS = (2, 3, 4)
DUP_NGRAMS = tuple(range(5, 11))


def find_duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items equal to an earlier one, their characters): Gopher's duplicate count."""
    seen: set[str] = set()
    dup = dup_chars = 0
    for it in items:
        if it in seen:
            dup += 1
            dup_chars += len(it)
        else:
            seen.add(it)
    return dup, dup_chars


def _dup_scan(g: list[int], csum: np.ndarray, n: int) -> int:
    """Characters in repeated n-grams, by Gopher's (datatrove's) non-overlapping left-to-right
    scan: an n-gram seen before counts its characters and the scan jumps past it; otherwise it is
    remembered and the scan moves one word."""
    seen: set[int] = set()
    rep, i, last = 0, 0, len(g)
    while i < last:
        if g[i] in seen:
            rep += int(csum[i + n] - csum[i])
            i += n
        else:
            seen.add(g[i])
            i += 1
    return rep


def repetition_signals(text: str, words: list[str]) -> dict[str, float]:
    """Gopher repetition: duplicate paragraphs/lines and n-gram character fractions, each over
    the document's characters (datatrove's definitions: n-grams of words, the top n-gram counted
    with its separating spaces, repeated n-grams without)."""
    size = len(text) or 1
    paragraphs = _PARAGRAPHS.split(text.strip())
    p_dup, p_chars = find_duplicates(paragraphs)
    lines = _LINES.split(text)
    l_dup, l_chars = find_duplicates(lines)
    out = {
        "dup_paragraph_frac": p_dup / len(paragraphs),
        "dup_paragraph_char_frac": p_chars / size,
        "dup_line_frac": l_dup / len(lines),
        "dup_line_char_frac": l_chars / size,
    }
    out.update({f"top_{n}gram_char_frac": 0.0 for n in TOP_NGRAMS})
    out.update({f"dup_{n}gram_char_frac": 0.0 for n in DUP_NGRAMS})
    if not words:
        return out
    lens = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    csum = np.concatenate([[0], np.cumsum(lens)])
    for n, g in iter_ngram_hashes(token_hashes(words), TOP_NGRAMS + DUP_NGRAMS):
        if n in TOP_NGRAMS:  # the most frequent n-gram; ties go to the one seen first
            order = np.argsort(g, kind="stable")
            sg = g[order]
            starts = np.flatnonzero(np.concatenate(([True], sg[1:] != sg[:-1])))
            runs = np.diff(np.append(starts, len(sg)))
            at = int(order[starts[runs == runs.max()]].min())
            chars = int(csum[at + n] - csum[at]) + n - 1
            out[f"top_{n}gram_char_frac"] = float(runs.max() * chars / size)
        else:
            out[f"dup_{n}gram_char_frac"] = _dup_scan(g.tolist(), csum, n) / size
    return out


@lru_cache(maxsize=1)
def _spacy_english():
    import spacy  # optional: only for `quality.words: spacy`

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    return nlp


def spacy_words(text: str) -> list[str]:
    """spaCy's English tokens, stripped, blanks dropped: datatrove's English `split_into_words`."""
    nlp = _spacy_english()
    nlp.max_length = len(text) + 10
    with nlp.memory_zone():
        return [w for w in (t.text.strip() for t in nlp.tokenizer(text)) if w]


def spacy_sentences(line: str) -> int:
    """Sentences of spaCy's sentencizer: datatrove's English `split_into_sentences`."""
    nlp = _spacy_english()
    nlp.max_length = len(line) + 10
    with nlp.memory_zone():
        return max(len(list(nlp(line).sents)), 1)


def split_words(text: str, words: str = "whitespace") -> list[str]:
    return spacy_words(text) if words == "spacy" else text.split()


def quality_signals(text: str, words: str = "whitespace") -> dict[str, float]:
    """Every number the Gopher and FineWeb rules read. Pure; cost is linear in the text.
    `words`: "whitespace" (`str.split`) or "spacy" (datatrove's English tokens)."""
    ws = split_words(text, words)
    n_words = len(ws)
    symbols = [w for w in ws if not w.strip(_SYMBOLS)]
    n_real = n_words - len(symbols)
    lines = text.splitlines() or [""]
    if words == "spacy":  # datatrove: exact, case-sensitive tokens
        n_stop = len(STOP_WORDS.intersection(ws))
    else:  # lowercase \w+ tokens (shared with dedup): "The" and "the," count
        _, h = text_tokens(text)
        n_stop = len(np.unique(h[np.isin(h, _STOP_HASHES)])) if len(h) else 0
    hashes = text.count("#") / n_words if n_words else 0.0
    ellipses = (text.count("...") + text.count("…")) / n_words if n_words else 0.0
    fw_lines = [ln for ln in text.split("\n") if ln.strip()] or [""]
    sig = {
        "words": float(n_real),
        "mean_word_length": (sum(map(len, ws)) - sum(map(len, symbols))) / n_real if n_real > 0 else 0.0,
        "hash_word_ratio": hashes,
        "ellipsis_word_ratio": ellipses,
        "symbol_word_ratio": max(hashes, ellipses),
        "bullet_lines_ratio": sum(1 for ln in lines if ln.lstrip().startswith(BULLETS)) / len(lines),
        "ellipsis_lines_ratio": sum(1 for ln in lines if ln.rstrip().endswith(("...", "…"))) / len(lines),
        "alpha_words_ratio": sum(1 for w in ws if any(map(str.isalpha, w))) / n_words if n_words else 0.0,
        "stop_words": float(n_stop),
        # FineWeb: non-blank lines as written (not stripped)
        "line_punct_ratio": sum(1 for ln in fw_lines if ln.endswith(TERMINAL_PUNCTUATION)) / len(fw_lines),
        "short_line_ratio": sum(1 for ln in fw_lines if len(ln) <= 30) / len(fw_lines),
        "fineweb_dup_line_char_frac": find_duplicates(fw_lines)[1] / max(len(text.replace("\n", "")), 1),
        "list_ratio": text.count("\n") / max(n_words, 1),
    }
    sig.update(repetition_signals(text, ws))
    return sig


def count_sentences(line: str) -> int:
    return 1 + len(_SENT_END.findall(line))


def c4_signals(text: str, c: QualityConfig) -> dict[str, float]:
    """C4's page rules after its line rules (the order of tfds' `c4_utils.clean_page`): lines
    with an over-long word, without terminal punctuation (or ending in '...'), or under
    `c4_min_words_per_line` words are skipped; in the rest, 'lorem ipsum' and '{' are flagged
    ('{' only in lines not skipped for 'javascript'), and sentences are counted in lines that
    are neither javascript nor policy lines."""
    lorem = curly = 0.0
    sentences = 0
    for raw in text.splitlines():
        line = raw.strip()
        words = line.split()
        if c.c4_max_word_length and any(len(w) > c.c4_max_word_length for w in words):
            continue
        if c.c4_remove_citations:
            line = C4_CITATION.sub("", line)
        if c.c4_terminal_punct and (not line.endswith(C4_END_PUNCTUATION) or line.endswith("...")):
            continue
        if len(words) < c.c4_min_words_per_line:
            continue
        low = line.lower()
        if "lorem ipsum" in low:
            lorem = 1.0
        if c.c4_javascript and "javascript" in low:
            continue
        if "{" in line:
            curly = 1.0
        if c.c4_policy and any(p in low for p in C4_POLICY):
            continue
        sentences += spacy_sentences(line) if c.words == "spacy" else count_sentences(line)
    return {"lorem_ipsum": lorem, "curly_bracket": curly, "c4_sentences": float(sentences)}
