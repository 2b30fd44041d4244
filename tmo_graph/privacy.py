"""What may leave the device: personal data in text is found and replaced by placeholders
before a cloud call, and put back into the cloud's answer on the device.

Found offline by tested patterns (no model download): email addresses, phone numbers,
payment card numbers (Luhn-checked), IBANs (mod-97-checked), secrets written after words
such as "password", "PIN" or "api key", and street addresses ("12 Baker Street").
A placeholder names its kind and number (``[EMAIL_1]``); the same value gets the same
placeholder everywhere in one request, so the cloud model can still refer to it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import get_args

from tmo_graph.errors import TmoGraphError
from tmo_graph.settings import PersonalKind

KINDS: tuple[str, ...] = get_args(PersonalKind)
# When two finds overlap, the more specific kind wins (an IBAN's digits are no card number,
# a card number is no phone number).
_PRIORITY = ("email", "iban", "card", "secret", "address", "phone")


def _luhn(digits: str) -> bool:
    total, double = 0, False
    for ch in reversed(digits):
        d = int(ch) * (2 if double else 1)
        total += d - 9 if d > 9 else d
        double = not double
    return total % 10 == 0


def _iban_ok(raw: str) -> bool:
    code = re.sub(r"\s", "", raw).upper()
    if not 15 <= len(code) <= 34:
        return False
    moved = code[4:] + code[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
# +CC or a leading 0 / (area): at least 8 digits in all, separators allowed.
_PHONE = re.compile(
    r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d(?:[ .-]?\d){6,12}\b"
    r"(?![ .-]?\d)"  # not the start of a longer number (a card, an account)
)
_SECRET = re.compile(
    r"\b(?:password|passwd|passcode|pass code|pin|pin code|api[ _-]?key|token|secret)"
    r"(?:\s+(?:is|was)\s+|\s*[:=]\s*)[\"']?(?P<value>[^\s\"',;]{3,})",
    re.IGNORECASE,
)
_ADDRESS = re.compile(
    r"\b\d{1,5}\s+(?:[A-Z][a-z]+\s){1,3}"
    r"(?:Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|Dr|Boulevard|Blvd|Way|Court|Ct|Place|Pl)\b"
)


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int
    value: str


def _matches(kind: str, text: str) -> Iterable[Finding]:
    if kind == "email":
        yield from (Finding(kind, m.start(), m.end(), m.group()) for m in _EMAIL.finditer(text))
    elif kind == "card":
        for m in _CARD.finditer(text):
            digits = re.sub(r"\D", "", m.group())
            if 13 <= len(digits) <= 19 and _luhn(digits):
                yield Finding(kind, m.start(), m.end(), m.group())
    elif kind == "iban":
        for m in _IBAN.finditer(text):
            if _iban_ok(m.group()):
                yield Finding(kind, m.start(), m.end(), m.group())
    elif kind == "phone":
        for m in _PHONE.finditer(text):
            if len(re.sub(r"\D", "", m.group())) >= 8:
                yield Finding(kind, m.start(), m.end(), m.group())
    elif kind == "secret":
        for m in _SECRET.finditer(text):
            yield Finding(kind, m.start("value"), m.end("value"), m.group("value"))
    elif kind == "address":
        yield from (Finding(kind, m.start(), m.end(), m.group()) for m in _ADDRESS.finditer(text))


def find_personal(text: str, kinds: Iterable[str] = KINDS) -> list[Finding]:
    """Personal data in ``text``, left to right; overlapping finds go to the more specific
    kind (:data:`_PRIORITY`)."""
    kinds = list(kinds)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise TmoGraphError(
            f"unknown personal-data kind(s) {sorted(unknown)}", f"use some of: {', '.join(KINDS)}"
        )
    found: list[Finding] = []
    for kind in sorted(kinds, key=_PRIORITY.index):
        for f in _matches(kind, text):
            if all(f.end <= g.start or f.start >= g.end for g in found):
                found.append(f)
    return sorted(found, key=lambda f: f.start)


@dataclass
class Redactor:
    """Replaces personal data by placeholders across one request."""

    kinds: tuple[str, ...] = KINDS
    placeholders: dict[str, str] = field(default_factory=dict)  # value -> placeholder
    counts: dict[str, int] = field(default_factory=dict)  # kind -> values replaced

    def redact(self, text: str) -> str:
        out, last = [], 0
        for f in find_personal(text, self.kinds):
            if f.value not in self.placeholders:
                self.counts[f.kind] = self.counts.get(f.kind, 0) + 1
                self.placeholders[f.value] = f"[{f.kind.upper()}_{self.counts[f.kind]}]"
            out += [text[last : f.start], self.placeholders[f.value]]
            last = f.end
        return "".join(out) + text[last:]

    def restore(self, text: str) -> str:
        """``text`` with this request's placeholders put back (the answer, on the device)."""
        for value, placeholder in self.placeholders.items():
            text = text.replace(placeholder, value)
        return text
