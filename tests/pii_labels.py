"""A labelled PII set from an independent generator (Faker, across locales), not from the
formats `tasks/pii.py` encodes: each value is placed in a short sentence and must be found as
one span of its type. Deterministic (seeded)."""

from __future__ import annotations

import random

LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "nl_NL", "nl_BE", "es_ES", "it_IT", "en_IN", "en_AU", "pt_BR")
TEMPLATES = (
    "Contact: {x}.",
    "Please reach {x} before Friday.",
    "{x} is on file",
    "my number/id is {x}, thanks",
)
KINDS = {
    "email": lambda f: f.email(),
    "phone": lambda f: f.phone_number(),
    "ipv4": lambda f: f.ipv4(),
    "ipv6": lambda f: f.ipv6(),
    "credit_card": lambda f: f.credit_card_number(),
    "iban": lambda f: f.iban(),
    "ssn": lambda f: f.ssn(),
}


def labelled(kind: str, n: int = 220, seed: int = 1234) -> list[tuple[str, int, int]]:
    """(sentence, start, end) of `n` values of `kind`, spread over the locales (SSN: en_US)."""
    from faker import Faker

    rng = random.Random(seed)
    locales = ("en_US",) if kind == "ssn" else LOCALES
    out = []
    for i in range(n):
        fake = Faker(locales[i % len(locales)])
        fake.seed_instance(seed + i)
        value = KINDS[kind](fake)
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
