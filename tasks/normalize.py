"""Text normalization: the first sub-step of `prepare`, so every later rule sees canonical text.

Contract: `normalize(text, fix_mojibake=True) -> str` is pure and total (any `str`, including lone
surrogates, control bytes and mojibake, comes back as valid, NFC-normalized Unicode). It

* replaces lone surrogates with U+FFFD (they cannot be written as UTF-8/Parquet);
* repairs mojibake (UTF-8 read as Latin-1/cp1252, e.g. ``cafÃ©``) with ftfy when installed; only
  the encoding fixes are enabled, so curly quotes, full-width forms and ligatures are left alone;
* applies Unicode NFC;
* unifies line ends to ``\\n``, removes control characters other than tab and newline, maps exotic
  spaces (NBSP, thin spaces, ...) to a plain space, strips trailing blanks on each line and
  collapses runs of 3+ newlines to one blank line. Leading indentation is kept: it is meaningful
  in code and reStructuredText.

Pure ASCII text skips the Unicode work entirely (the common case, and the fast path).
"""

from __future__ import annotations

import re
import unicodedata

try:  # optional: mojibake repair
    import ftfy

    _FTFY_CONFIG = ftfy.TextFixerConfig(
        unescape_html=False,
        fix_latin_ligatures=False,
        fix_character_width=False,
        uncurl_quotes=False,
        normalization="NFC",
        explain=False,
    )
except ImportError:  # pragma: no cover - ftfy is a declared dependency
    ftfy = None

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2028\u2029\ufeff]")
_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANKS = re.compile(r"\n{3,}")
# Cheap test for the byte patterns mojibake leaves behind (Ã©, â€™, Â ...): ftfy only runs then.
_MOJIBAKE_HINT = re.compile("[\u00c2\u00c3\u00c5\u00e2\u00ef\u00f0][\u0080-\u00bf\u0152-\u2122]")


def _drop_lone_surrogates(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        # Proper pairs are joined by the UTF-16 round trip; lone halves become U+FFFD.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def normalize(text: str, fix_mojibake: bool = True) -> str:
    if not isinstance(text, str):
        raise TypeError(f"normalize expects str, got {type(text).__name__}")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii():
        text = _drop_lone_surrogates(text)
        if fix_mojibake and ftfy is not None and _MOJIBAKE_HINT.search(text):
            text = ftfy.fix_text(text, _FTFY_CONFIG)
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        text = _SPACES.sub(" ", text)
    text = _CONTROL.sub("", text)
    if " \n" in text or "\t\n" in text:
        text = _TRAILING.sub("\n", text)
    if "\n\n\n" in text:
        text = _BLANKS.sub("\n\n", text)
    return text.strip()
