"""A labelled PII set from an independent generator (Faker, across locales), not from the
formats `tasks/pii.py` encodes: each value is placed in a short sentence and must be found as
one span of its type. Deterministic (seeded).

Each kind cycles through its variants: what Faker offers for it (every card brand Faker knows,
mobile and landline numbers where a locale has both) and the ways people print the same value
(cards grouped as embossed, IBANs in groups of four as on paper, or typed in lower case)."""

from __future__ import annotations

import random

LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "nl_NL", "nl_BE", "es_ES", "it_IT", "en_IN", "en_AU", "pt_BR")
# Faker's en_IN bank provider inherits a "GB" IBAN one character short of the registry's 22 (India
# has no IBANs): not an IBAN, so not a label.
IBAN_LOCALES = tuple(loc for loc in LOCALES if loc != "en_IN")
TEMPLATES = (
    "Contact: {x}.",
    "Please reach {x} before Friday.",
    "{x} is on file",
    "my number/id is {x}, thanks",
)
CARD_TYPES = (
    "visa16",
    "visa13",
    "visa19",
    "mastercard",
    "amex",
    "discover",
    "diners",
    "jcb15",
    "jcb16",
    "maestro",
)


def _embossed(number: str, sep: str) -> str:
    """As printed on the card: 4-6-5 / 4-6-4 for 15 and 14 digits, otherwise groups of four."""
    cuts = (4, 10) if len(number) in (14, 15) else range(4, len(number), 4)
    bounds = [0, *cuts, len(number)]
    return sep.join(number[a:b] for a, b in zip(bounds, bounds[1:], strict=False))


def _in_fours(iban: str) -> str:
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


def _card(card_type: str, sep: str | None):
    def make(f):
        number = f.credit_card_number(card_type=card_type)
        return _embossed(number, sep) if sep else number

    return make


KINDS = {
    "email": (lambda f: f.email(),),
    "phone": (
        lambda f: f.phone_number(),
        lambda f: f.cellphone_number() if hasattr(f, "cellphone_number") else f.phone_number(),
    ),
    "ipv4": (lambda f: f.ipv4(), lambda f: f.ipv4_private(), lambda f: f.ipv4_public()),
    "ipv6": (lambda f: f.ipv6(),),
    "credit_card": tuple(_card(t, sep) for sep in (None, " ", "-") for t in CARD_TYPES),
    "iban": (
        lambda f: f.iban(),
        lambda f: _in_fours(f.iban()),
        lambda f: f.iban().lower(),
    ),
    "ssn": (lambda f: f.ssn(),),
}


def labelled(kind: str, n: int = 220, seed: int = 1234) -> list[tuple[str, int, int]]:
    """(sentence, start, end) of `n` values of `kind`, spread over the locales and variants
    (SSN: en_US)."""
    from faker import Faker

    rng = random.Random(seed)
    locales = ("en_US",) if kind == "ssn" else IBAN_LOCALES if kind == "iban" else LOCALES
    variants = KINDS[kind]
    out = []
    for i in range(n):
        fake = Faker(locales[i % len(locales)])
        fake.seed_instance(seed + i)
        value = variants[i % len(variants)](fake)
        sentence = rng.choice(TEMPLATES).format(x=value)
        start = sentence.index(value)
        out.append((sentence, start, start + len(value)))
    return out


def recall(kind: str, redact) -> float:
    """Share of the labelled values found as one span of `kind` covering the value."""
    items = labelled(kind)
    found = sum(
        any(s.type == kind and s.start <= start and s.end >= end for s in redact(text).spans)
        for text, start, end in items
    )
    return found / len(items)
