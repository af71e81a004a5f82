"""PII redaction: structured identifiers and secrets replaced by typed placeholders.

Contract: `redact(text, types=ALL_TYPES) -> Redaction` with the redacted `.text` and the `.spans`
found, each `Span(type, start, end)` in ORIGINAL-text offsets. Pure and usable on its own.

| type | placeholder | how it is found |
|---|---|---|
| email | ``<EMAIL>`` | local@domain.tld |
| phone | ``<PHONE>`` | `phonenumbers` (libphonenumber) over the regions in `PHONE_REGIONS`, on digit runs of 7+ digits only: ``+``/``00`` international forms of possible length; national forms with a trunk ``0`` (``020 7946 0958``, ``(0161) 496 0972``), North American ``(415) 555-0132`` / ``415.555.0132``, Brazilian ``11 91234-5678``, and ES/IT/IN numbers grouped exactly as those countries write them; any possible number, 7-digit local ones included, when a phone word (``call``, ``tel``, ``mobile``, ``contact``, ``my number``, ...) is near. Extensions (``x123``, ``ext. 45``) are part of the span |
| ipv4 | ``<IPV4>`` | four octets 0-255, not inside a longer dotted run (so ``1.2.3.4.5`` is left) |
| ipv6 | ``<IPV6>`` | validated by `ipaddress`; at least 3 non-empty groups, so slices like ``a[::2]`` and ``::1`` are left |
| credit_card | ``<CREDIT_CARD>`` | 13-19 digits (spaces/dashes allowed), a known issuer prefix and a valid Luhn checksum |
| ssn | ``<SSN>`` | US ``AAA-GG-SSSS`` (dash or space), excluding never-issued areas 000/666/9xx, group 00, serial 0000 |
| iban | ``<IBAN>`` | country code, check digits, 11-30 alphanumerics (grouped or not), ISO 13616 mod-97 == 1 |
| secret | ``<SECRET>`` | keys with known prefixes (AWS, GitHub, GitLab, Slack, Stripe, Google, OpenAI/Anthropic, Hugging Face, npm), JWTs, PEM private key blocks |

The checksums (Luhn, mod-97) and validation are what keep ordinary numbers in prose untouched;
see benchmarks/README.md for the labelled set and the measured recall and prose false-alteration
rate. Overlapping finds are resolved by type priority (the order of the table, secrets first).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

import phonenumbers
from phonenumbers import Leniency, PhoneNumberMatcher

ALL_TYPES = ("secret", "email", "iban", "credit_card", "ssn", "ipv6", "ipv4", "phone")
PLACEHOLDER = {t: f"<{t.upper()}>" for t in ALL_TYPES}
# Regions whose national formats are recognised (numbers with + or 00 are found for any country).
PHONE_REGIONS = ("US", "GB", "DE", "FR", "NL", "BE", "ES", "IT", "IN", "AU", "BR")


@dataclass(frozen=True)
class Span:
    type: str
    start: int
    end: int


@dataclass
class Redaction:
    text: str
    spans: list[Span] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.spans:
            out[s.type] = out.get(s.type, 0) + 1
        return out


_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
)
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_SECRET = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----"
    r"|\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{36,255}\b|\bgithub_pat_[A-Za-z0-9_]{22,255}\b"
    r"|\bglpat-[A-Za-z0-9_-]{20,}\b|\bxox[abposr]-[A-Za-z0-9-]{10,}\b"
    r"|\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}\b|\bAIza[0-9A-Za-z_-]{35}\b"
    r"|\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}\b|\bhf_[A-Za-z0-9]{30,}\b|\bnpm_[A-Za-z0-9]{36}\b"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
)
# Literal markers every secret pattern contains: a few C-speed substring tests skip the (slow,
# many-alternative) secret regex on the vast majority of documents.
_SECRET_MARKERS = (
    "-----BEGIN", "AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA", "ghp_", "gho_",
    "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "xox", "k_live_", "k_test_", "AIza", "sk-",
    "hf_", "npm_", "eyJ",
)  # fmt: skip
_CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|3[068]|6011|65|64[4-9]|35|62)")
_IBAN_LENGTHS = {  # ISO 13616 registry lengths for common countries; others: 15..34
    "AT": 20, "BE": 16, "CH": 21, "CZ": 24, "DE": 22, "DK": 18, "ES": 24, "FI": 18, "FR": 27,
    "GB": 22, "IE": 22, "IT": 27, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "SE": 24,
}  # fmt: skip


# Phones: a cheap digit-run prefilter, then libphonenumber's matcher on the run and its surroundings.
_PHONE_RUN = re.compile(r"\d[\d .()\-/\u00a0]{5,}\d")  # a leading + or ( is added after: 3x faster
_PHONE_CUE = re.compile(
    r"(?i)\b(?:phone|tel|telephone|call|mobile|cell|fax|whatsapp|sms|contact|reach|"
    r"(?:my|your|our|his|her|their)\s+(?:number|no)|telefon|handy|mobil|t[ée]l[ée]phone|"
    r"telefoon|mobiel|tel[ée]fono|m[óo]vil|cellulare|celular|contato|ligue)\b|\u260e|\U0001f4de"
)
_PHONE_EXT = re.compile(r"(?i)[\s,]*(?:e?xt(?:ension)?\.?|x|#|anexo)[\s:.]*\d+#?$")
_NANP = re.compile(r"(?:1[ .-]?)?(?:\(\d{3}\) ?\d{3}[ .-]|\d{3}([ .-])\d{3}\1)\d{4}")
_BR_NATIONAL = re.compile(r"\(?\d{2}\)? 9?\d{4}-\d{4}")
_GROUPED = re.compile(r"\d{2,5}(?:[ .-]\d{2,5}){1,4}")
_DATE = re.compile(
    r"\d{4}([-./])\d\d?\1\d\d?|\d\d?([-./])\d\d?\2\d{4}|(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
)
_SEPARATOR_PAIR = re.compile(r"[ .\-/][ .\-/]|\)\.")
_SEQUENCES = "01234567890123456789 98765432109876543210"
_DIGITS = re.compile(r"\d+")
_TRUNK_REGIONS = tuple(r for r in PHONE_REGIONS if r != "US")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    iban = iban.replace(" ", "")
    if not 15 <= len(iban) <= 34 or _IBAN_LENGTHS.get(iban[:2], len(iban)) != len(iban):
        return False
    moved = iban[4:] + iban[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


def _phone_regions(text: str, s: int, e: int) -> tuple[list[tuple[str, int]], bool]:
    """(region, leniency) pairs worth running the matcher with on this digit run ([] to skip it),
    and whether a phone word is near. Cheap tests first: most digit runs in prose end here."""
    run = text[s:e]
    digits = _DIGITS.findall(run)
    lead = run.lstrip("(")
    if (
        sum(map(len, digits)) < 7
        or len(set("".join(digits))) <= 2  # 00 00 00 00, 1111111
        or (len(digits[0]) == 1 and len(digits) > 1 and lead[0] not in "+1")  # 0.0100015, 0 2493
        or (len(digits) > 6 and lead[0] != "+")  # a hex dump or a row of a table
        or _glued_before(text, s, cued=True)
        or _DATE.fullmatch(run)
    ):
        return [], False
    if lead.startswith("+"):
        return [("ZZ", Leniency.POSSIBLE)], False  # the country code is written: no region needed
    if _PHONE_CUE.search(text, max(0, s - 40), s) or _PHONE_CUE.search(text, e, e + 25):
        return [(r, Leniency.POSSIBLE) for r in PHONE_REGIONS], True
    if text[s - 1 : s] == ":":
        return [], False  # 16:30:08 2008, tcp:20000-25000
    if lead.startswith("0"):
        return [(r, Leniency.POSSIBLE) for r in _TRUNK_REGIONS], False
    out = []
    if _NANP.search(run):
        out.append(("US", Leniency.POSSIBLE))
    if _BR_NATIONAL.search(run):
        out.append(("BR", Leniency.POSSIBLE))
    if not out and _GROUPED.fullmatch(run):
        n = sum(map(len, digits))  # national numbers without a trunk 0, written grouped exactly
        regions = ("ES",) if n == 9 else ("IT", "IN") if n == 10 else ()  # as the country does
        out = [(r, Leniency.EXACT_GROUPING) for r in regions]  # (EXACT_GROUPING: and valid)
    return out, False


def _glued_before(text: str, start: int, cued: bool) -> bool:
    """Part of a word, path, decimal, hex offset, id or time (``Tel:`` before a number is fine)."""
    before = text[start - 1] if start else " "
    return before.isalnum() or before in "_.\\/@#$%-" or (before == ":" and not cued)


def _glued_after(text: str, end: int) -> bool:
    after, after2 = text[end : end + 1], text[end + 1 : end + 2]
    return after.isalnum() or after in ("_", "@") or (after in (".", "-", "/") and after2.isalnum())


def _phone_ok(text: str, start: int, end: int, raw: str, number, region: str, cued: bool) -> bool:
    """The shape rules: what libphonenumber accepts as possible is not yet a phone in prose."""
    body = _PHONE_EXT.sub("", raw)
    groups = _DIGITS.findall(body)
    digits = "".join(groups)
    lead = body.lstrip("(")
    if (
        len(set(digits)) <= 2
        or (len(groups) == 1 and digits in _SEQUENCES)  # 0123456789
        or _SEPARATOR_PAIR.search(body)  # columns of a table, 2010 -0700, 0022). 0640
        or body.count("(") != body.count(")")
        or (len(groups) > 2 and all(int(b) - int(a) == 1 for a, b in zip(groups, groups[1:], strict=False)))
        or len(groups[-1]) < 2  # 1.2345E+12345680.6
        or _DATE.fullmatch(body)
        or _glued_before(text, start, cued)
        or _glued_after(text, end)  # 0.20.1.124-32, 02110-1335
    ):
        return False
    if lead.startswith("+"):
        return len(digits) >= 8 and phonenumbers.is_possible_number(number)
    if len(digits) < 7 or not phonenumbers.is_possible_number(number):
        return False
    if any(len(g) < 2 for g in groups[1:]) or (len(groups) > 1 and len(groups[0]) < 2 and groups[0] != "1"):
        return False
    if lead.startswith("00"):  # international prefix, then a country code
        return lead[2:3] in tuple("123456789") and (len(groups) >= 2 or phonenumbers.is_valid_number(number))
    if cued:
        return True
    if region == "US" and _NANP.fullmatch(body):
        return True
    if region == "BR" and _BR_NATIONAL.fullmatch(body):
        return True
    return (
        lead.startswith("0")
        and len(digits) >= 9
        and (len(groups) >= 2 or phonenumbers.is_valid_number(number))
        and not re.fullmatch(r"\d{5}-\d{4}", body)  # a US ZIP+4 code
    )


def _find_phones(text: str):
    for run in _PHONE_RUN.finditer(text):
        s, e = run.span()
        if s and text[s - 1] in "+(":
            s -= 2 if text[max(0, s - 2) : s] == "(+" else 1
        regions, cued = _phone_regions(text, s, e)
        s0, e0 = max(0, s - 1), min(len(text), e + 14)  # + room for an extension
        window = text[s0:e0]
        best = None
        for region, leniency in regions:
            for m in PhoneNumberMatcher(window, region, leniency):
                start, end, raw = s0 + m.start, s0 + m.end, m.raw_string
                if raw.startswith("(") and raw.count("(") > raw.count(")"):  # "(+49 30 1234567)"
                    start, raw = start + 1, raw[1:]
                if start >= e or (best and end - start <= best[1] - best[0]):
                    continue
                if (
                    not (_glued_before(text, start, cued) or _glued_after(text, end))
                    if leniency == Leniency.EXACT_GROUPING
                    else _phone_ok(text, start, end, raw, m.number, region, cued)
                ):
                    best = (start, end)
            if best and best[0] <= s + 1 and best[1] >= e:
                break  # the whole run is one number: other regions cannot do better
        if best:
            yield best


def _find(kind: str, text: str):
    """Yield (start, end) of validated matches of one type."""
    if kind == "email":
        if "@" in text:
            yield from (m.span() for m in _EMAIL.finditer(text))
    elif kind == "phone":
        yield from _find_phones(text)
    elif kind == "ipv4":
        if "." in text:
            yield from (m.span() for m in _IPV4.finditer(text))
    elif kind == "ipv6":
        if text.count(":") >= 2:
            for m in _IPV6.finditer(text):
                s = m.group()
                if sum(1 for g in re.split(r"[:.]", s) if g) < 3:
                    continue
                try:
                    ipaddress.IPv6Address(s)
                except ValueError:
                    continue
                yield m.span()
    elif kind == "credit_card":
        for m in _CARD.finditer(text):
            d = re.sub(r"[ -]", "", m.group())
            if 13 <= len(d) <= 19 and _CARD_PREFIX.match(d) and luhn_ok(d):
                yield m.span()
    elif kind == "ssn":
        yield from (m.span() for m in _SSN.finditer(text))
    elif kind == "iban":
        for m in _IBAN.finditer(text):
            s = m.group()
            # A trailing capitalized word can be glued on: try shorter candidates too.
            for end in range(len(s), 14, -1):
                if (end == len(s) or s[end] == " " or s[end - 1] != " ") and iban_ok(s[:end]):
                    yield m.start(), m.start() + len(s[:end].rstrip())
                    break
    elif kind == "secret":
        if any(m in text for m in _SECRET_MARKERS):
            yield from (m.span() for m in _SECRET.finditer(text))
    else:
        raise ValueError(f"unknown PII type {kind!r} (known: {', '.join(ALL_TYPES)})")


def redact(text: str, types: tuple[str, ...] | list[str] = ALL_TYPES) -> Redaction:
    wanted = [t for t in ALL_TYPES if t in set(types)]
    unknown = set(types) - set(ALL_TYPES)
    if unknown:
        raise ValueError(f"unknown PII type(s) {sorted(unknown)} (known: {', '.join(ALL_TYPES)})")
    taken: list[Span] = []
    for kind in wanted:  # priority order: earlier types win overlaps
        for start, end in _find(kind, text):
            if all(end <= s.start or start >= s.end for s in taken):
                taken.append(Span(kind, start, end))
    if not taken:
        return Redaction(text, [])
    taken.sort(key=lambda s: s.start)
    parts, pos = [], 0
    for s in taken:
        parts += [text[pos : s.start], PLACEHOLDER[s.type]]
        pos = s.end
    parts.append(text[pos:])
    return Redaction("".join(parts), taken)
