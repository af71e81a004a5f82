"""PII redaction: structured identifiers and secrets replaced by typed placeholders.

Contract: `redact(text, types=ALL_TYPES) -> Redaction` with the redacted `.text` and the `.spans`
found, each `Span(type, start, end)` in ORIGINAL-text offsets. Pure and usable on its own.

| type | placeholder | how it is found |
|---|---|---|
| secret | ``<SECRET>`` | keys with known prefixes (AWS, GitHub, GitLab, Slack tokens and webhooks, Stripe, Google, OpenAI/Anthropic, Hugging Face, npm, PyPI, SendGrid, DigitalOcean, Docker Hub, Shopify), JWTs, PEM private key blocks, and the value of ``api_key=`` / ``token: `` / ``password=``-like pairs when it is long, mixes letters and digits and has high entropy |
| email | ``<EMAIL>`` | local@domain.tld: plus-addressing, subdomains, Unicode letters, ``"quoted"`` local parts without newlines, ``user@[IPv4]`` |
| iban | ``<IBAN>`` | any case, grouped by 4 or not: a registry country code, its registry length, ISO 13616 mod-97 == 1 |
| credit_card | ``<CREDIT_CARD>`` | 12-19 digits (one kind of separator, spaces or dashes), an issuer range with a length it issues (Visa, Mastercard incl. 2-series, Amex, Discover, JCB 15/16+, Diners, Maestro, UnionPay, Mir) and a valid Luhn checksum |
| ssn | ``<SSN>`` | US ``AAA-GG-SSSS`` (dash or space), excluding never-issued areas 000/666/9xx, group 00, serial 0000 |
| ipv6 | ``<IPV6>`` | validated by `ipaddress` (compressed, IPv4-mapped, zone ids); at least 3 non-empty groups, so slices like ``a[::2]`` and ``::1`` are left; so are addresses that are nobody's: documentation (``2001:db8::/32``), loopback, unspecified, masks |
| ipv4 | ``<IPV4>`` | four octets 0-255, not inside a longer dotted run (``1.2.3.4.5``), not after a version word (``version``, ``v``, ``since``, ``<=``); documentation (``192.0.2.0/24``, ...), loopback, unspecified addresses, netmasks and host masks (``255.255.255.252``, ``0.0.0.255``) are left |
| phone | ``<PHONE>`` | `phonenumbers` (libphonenumber) over the regions in `PHONE_REGIONS`, on digit runs of 7+ digits only: ``+``/``00`` international forms of possible length; national forms with a trunk ``0`` (``020 7946 0958``, ``(0161) 496 0972``), North American ``(415) 555-0132`` / ``415.555.0132``, Brazilian ``11 91234-5678``, and ES/IT/IN numbers grouped exactly as those countries write them; any possible number, 7-digit local ones included, when a phone word (``call``, ``tel``, ``mobile``, ``contact``, ``my number``, ...) is near. Extensions (``x123``, ``ext. 45``) are part of the span |

Checksums (Luhn, mod-97), issuer and registry tables, libphonenumber's numbering plans and the
phone-shape / context rules are what keep the numbers of technical prose (versions, dates, ports,
line numbers, hex ids, timestamps) untouched; benchmarks/pii.py measures recall on an independent
labelled set and the share of prose lines altered. Overlapping finds are resolved by type
priority (the order of the table, secrets first).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
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


# Where it pays, a regex opens with a character class rather than a look-behind, so `re` can skip
# ahead quickly, and `_find` checks the character before a match (`_glued`). Emails are grown
# from each "@" outwards.
_EMAIL_LOCAL = re.compile(r"(?:\w[\w.%+-]*|\"[^\"\\\r\n@]{1,62}\")\Z")
_EMAIL_DOMAIN = re.compile(
    r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+(?:[^\W\d_]{2,24}|xn--[a-z0-9-]{1,59})\b|\[(?:\d{1,3}\.){3}\d{1,3}\]"
)
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}(?!\w|\.\d)")  # octets (0-255, no leading 0): in `_find`
_VERSION_BEFORE = re.compile(
    r"(?i)(?:\bv|\bver|version|release|build|rev|since|section|§|[<>=~]=|<<|>>)\.?\s*$"
)
# Reserved for documentation (RFC 5737, RFC 3849): examples, never anybody's address.
_DOC_NETS = tuple(
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?:%[\w.]+)?(?![\w:]|\.\d)"
)
_IPV6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:")  # in every address below; absent from most text
_CARD = re.compile(r"\d(?:[ -]?\d){11,18}(?![\w-]|\.\d)")
_CARD_BRANDS = tuple(  # issuer ranges (IIN prefixes) and the lengths each issues
    (re.compile(prefix), lengths)
    for prefix, lengths in (
        (r"4", (13, 16, 19)),  # Visa
        (r"5[1-5]|222[1-9]|22[3-9]\d|2[3-6]\d\d|27[01]\d|2720", (16,)),  # Mastercard
        (r"3[47]", (15,)),  # American Express
        (r"6011|64[4-9]|65", range(16, 20)),  # Discover
        # JCB: its range is 3528-3589; the whole 35 block is taken (Luhn and length still apply)
        (r"35", range(16, 20)),
        (r"1800|2131", (15,)),  # JCB, 15 digits
        (r"30[0-5]|3095|3[689]", range(14, 20)),  # Diners Club
        (r"50|5[6-8]|6\d|0604", range(12, 20)),  # Maestro (6x includes UnionPay's 62; 0604 legacy)
        (r"62|81", range(16, 20)),  # UnionPay
        (r"220[0-4]", range(16, 20)),  # Mir
    )
)
_SSN = re.compile(r"\d{3}([- ])\d\d\1\d{4}(?![\d-])")
_IBAN = re.compile(r"(?<![\w-])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,4})?\b")
_IBAN_LENGTHS = {  # the ISO 13616 registry (SWIFT), country code -> IBAN length
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
_SECRET = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[A-Za-z0-9+/=\s:,-]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----"
    r"|\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{36,255}\b|\bgithub_pat_[A-Za-z0-9_]{22,255}\b"
    r"|\bglpat-[A-Za-z0-9_-]{20,}\b|\bxox[abposr]-[A-Za-z0-9-]{10,}\b"
    r"|https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+"
    r"|\b(?:[sr]k_(?:live|test)_|whsec_)[A-Za-z0-9]{16,}\b|\bAIza[0-9A-Za-z_-]{35}\b"
    r"|\bya29\.[0-9A-Za-z_-]{20,}|\bGOCSPX-[0-9A-Za-z_-]{20,}"
    r"|\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}\b|\bhf_[A-Za-z0-9]{30,}\b|\bnpm_[A-Za-z0-9]{36}\b"
    r"|\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}|\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}\b"
    r"|\bdop_v1_[a-f0-9]{64}\b|\bdckr_pat_[A-Za-z0-9_-]{27,}|\bshp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}\b"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
)
# Literal markers every secret pattern contains: a few C-speed substring tests skip the (slow,
# many-alternative) secret regex on the vast majority of documents.
_SECRET_MARKERS = (
    "-----BEGIN", "AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA", "ghp_", "gho_",
    "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "xox", "hooks.slack.com", "k_live_", "k_test_",
    "whsec_", "AIza", "ya29.", "GOCSPX-", "sk-", "hf_", "npm_", "pypi-AgEI", "SG.", "dop_v1_",
    "dckr_pat_", "shpat_", "shpss_", "shpca_", "shppa_", "eyJ",
)  # fmt: skip
# `api_key = "..."`, `"client_secret": "..."`, `PASSWORD=...`: the value is the secret. Values are
# found first (a cheap character class), then the 40 characters before them are checked for a key.
_SECRET_VALUE = re.compile(
    r"[:=][ \t]*[\"']?([A-Za-z0-9+/_~-][A-Za-z0-9+/_.~=-]{15,255})(?![A-Za-z0-9+/_.~=-])"
)
_SECRET_KEY = re.compile(
    r"(?i)(?:api[_-]?key|secret|token|passw(?:or)?d|pwd|access[_-]?key|private[_-]?key|auth)[\w.-]*[\"']?[ \t]*$"
)
_WORD_SEPARATORS = re.compile(r"[_./~+-]+")

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


def card_ok(digits: str) -> bool:
    """A length an issuer issues for its range, and the Luhn checksum."""
    n = len(digits)
    return any(p.match(digits) and n in lengths for p, lengths in _CARD_BRANDS) and luhn_ok(digits)


def iban_ok(iban: str) -> bool:
    iban = iban.replace(" ", "").upper()
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban[2:4].isdigit():
        return False
    moved = iban[4:] + iban[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


def _glued(text: str, start: int, chars: str, word: bool = True) -> bool:
    """The match continues something before it: a word character (a digit with word=False) or one of chars."""
    before = text[start - 1 : start]
    return bool(before) and (
        before.isdigit() or (word and (before.isalnum() or before == "_")) or before in chars
    )


def _nobodys(address: str) -> bool:
    """Documentation, loopback and unspecified addresses, netmasks (255.255.255.252) and host
    masks (0.0.0.255)."""
    ip = ipaddress.ip_address(address)
    bits, host_bits = int(ip), ~int(ip) & (2**ip.max_prefixlen - 1)
    return (
        ip.is_loopback
        or host_bits & (host_bits + 1) == 0
        or bits & (bits + 1) == 0
        or any(ip.version == n.version and ip in n for n in _DOC_NETS)
    )


def _entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _secret_value_ok(value: str) -> bool:
    """Looks generated: letters and digits, >= 3.5 bits per character, and not words joined by
    separators (`OAUTH2_CLIENT_SECRET`, `projects/p/secrets/s/versions/1`, `os.environ.get`)."""
    value = value.rstrip("=")
    parts = _WORD_SEPARATORS.split(value)
    return (
        len(value) >= 16
        and any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
        and not (len(parts) > 1 and all(sum(c.isdigit() for c in p) <= 1 for p in parts))
        and _entropy(value) >= 3.5
    )


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
        at = text.find("@")
        while at >= 0:
            domain = _EMAIL_DOMAIN.match(text, at + 1)
            local = domain and _EMAIL_LOCAL.search(text, max(0, at - 64), at)
            if local and not _glued(text, local.start(), '"' if local.group()[0] == '"' else ".+%-"):
                yield local.start(), domain.end()
            at = text.find("@", at + 1)
    elif kind == "phone":
        yield from _find_phones(text)
    elif kind == "ipv4":
        if "." in text:
            for m in _IPV4.finditer(text):
                if (
                    not _glued(text, m.start(), ".")
                    and all(o == "0" or (o[0] != "0" and int(o) < 256) for o in m.group().split("."))
                    and not _VERSION_BEFORE.search(text, max(0, m.start() - 12), m.start())
                    and not _nobodys(m.group())
                ):
                    yield m.span()
    elif kind == "ipv6":
        if _IPV6_HINT.search(text):
            for m in _IPV6.finditer(text):
                s = m.group()
                if sum(1 for g in re.split(r"[:.]", s.split("%")[0]) if g) < 3:
                    continue
                try:
                    ipaddress.IPv6Address(s)
                except ValueError:
                    continue
                if not _nobodys(s.split("%")[0]):
                    yield m.span()
    elif kind == "credit_card":
        for m in _CARD.finditer(text):
            s = m.group()
            if not (" " in s and "-" in s or _glued(text, m.start(), ".+-/:")) and card_ok(
                s.replace(" ", "").replace("-", "")
            ):
                yield m.span()
    elif kind == "ssn":
        for m in _SSN.finditer(text):
            area, group, serial = m.group()[:3], m.group()[4:6], m.group()[7:]
            never_issued = area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000"
            if not (never_issued or _glued(text, m.start(), "-", word=False)):
                yield m.span()
    elif kind == "iban":
        for m in _IBAN.finditer(text):
            s = m.group()
            # A trailing word or number can be glued on: try shorter candidates too.
            for end in range(len(s), 14, -1):
                if (end == len(s) or s[end] == " " or s[end - 1] != " ") and iban_ok(s[:end]):
                    yield m.start(), m.start() + len(s[:end].rstrip())
                    break
    elif kind == "secret":
        if any(m in text for m in _SECRET_MARKERS):
            yield from (m.span() for m in _SECRET.finditer(text))
        for m in _SECRET_VALUE.finditer(text):
            if _SECRET_KEY.search(text, max(0, m.start() - 40), m.start()) and _secret_value_ok(m.group(1)):
                yield m.span(1)
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
