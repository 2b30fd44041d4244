"""What may leave the device: personal data in text is found and replaced by placeholders
before a cloud call, and put back into the cloud's answer on the device; some turns never
leave it at all.

Found offline by tested patterns (no model download):

- email addresses;
- phone numbers, also with the "(0)" trunk prefix after a country code ("+44 (0)20 7946 0958");
- payment card numbers (Luhn-checked);
- IBANs (mod-97-checked), in any letter case ("gb82 west 1234 5698 7654 32");
- secrets written after "password", "passwd", "pw", "pwd", "passphrase", "passcode",
  "api key", "token" or "secret" and "is", "was", ":" or "=" ("my pw is hunter2"): a quoted
  value is the whole quoted text ('password is "correct horse battery staple"'), an unquoted
  one ends at a space and leaves out the punctuation that ends its clause ("my password is
  hunter2." gives "hunter2"; "!" and "?" stay when the sentence goes on in lowercase: "hunter2!
  and ..." gives "hunter2!", as passwords often end with them);
- PINs: digits after "PIN" or "PIN code", with "is", ":" or nothing between ("PIN 4821";
  "my pin code is wrong" holds none);
- street addresses with a capitalized street name ("12 Baker Street", "221B Baker Street"). A
  lowercase one ("12 baker street") is not found: "at 3 the drive" would be found too.

A placeholder names its kind and number (``[EMAIL_1]``); the same value gets the same
placeholder everywhere in one request, so the cloud model can still refer to it.

A turn is answered on the device, with no cloud call and no escalation, when
(:func:`kept_on_device`):

- its message is marked private: ``HumanMessage(content=..., additional_kwargs={"private":
  True})``. Such a message and the answers that follow it are also left out of every later
  cloud request, and the turn is never stored in long-term memory (so never recalled);
- or what a cloud request would carry (the message, the history, the recalled memory, the
  persona) holds a kind of personal data listed in ``privacy.keep_local``.

A streamed cloud answer shows placeholders; :class:`StreamRestorer` puts the values back as
the tokens come, holding back a piece such as ``"[EMA"`` until it is complete. The cloud node
sends the turn's placeholder map as a ``custom`` stream event (:data:`PLACEHOLDERS_EVENT`):
the user's own values, streamed to the device-side caller only, never stored in the state.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, get_args

from tmo_graph.errors import TmoGraphError
from tmo_graph.prompts import PRIVATE, cloud_texts, is_private
from tmo_graph.sections import PersonalKind

if TYPE_CHECKING:
    from tmo_graph.state import State

__all__ = [
    "KINDS",
    "PLACEHOLDERS_EVENT",
    "PRIVATE",
    "Finding",
    "Redactor",
    "StreamRestorer",
    "find_personal",
    "is_private",
    "kept_on_device",
    "kinds_in",
]

KINDS: tuple[str, ...] = get_args(PersonalKind)
# Any placeholder a Redactor writes. A cloud model may also write one it was never sent (it
# saw [EMAIL_1] and answers with [EMAIL_2]): no value stands behind that, so the user sees
# "(unknown email)" instead of a bracket code.
_ANY_PLACEHOLDER = re.compile(r"\[(" + "|".join(k.upper() for k in KINDS) + r")_\d+\]")
_PLACEHOLDER_START = re.compile(r"\[[A-Z]{0,8}(?:_\d{0,6})?\Z")  # "[", "[EMA", "[EMAIL_1"


def put_back(text: str, values: Mapping[str, str]) -> str:
    """``text`` with each placeholder in ``values`` (placeholder -> value) replaced by its
    value, and any other placeholder-shaped code by "(unknown KIND)"."""
    for placeholder in sorted(values, key=len, reverse=True):
        if not _ANY_PLACEHOLDER.fullmatch(placeholder):  # a hand-made map's odd key
            text = text.replace(placeholder, values[placeholder])
    return _ANY_PLACEHOLDER.sub(
        lambda m: values.get(m.group(), f"(unknown {m.group(1).lower()})"), text
    )


# The key of the custom stream event that carries a turn's {placeholder: value} map.
PLACEHOLDERS_EVENT = "tmo_placeholders"
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
# Any letter case: the mod-97 check keeps ordinary words out.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b", re.IGNORECASE)
# +CC (and a trunk "(0)" after it) or a leading 0 / (area): at least 8 digits in all,
# separators allowed.
_PHONE = re.compile(
    r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?(?:\(0\)[ .-]?)?)?(?:\(\d{2,4}\)[ .-]?)?"
    r"\d(?:[ .-]?\d){6,12}\b"
    r"(?![ .-]?\d)"  # not the start of a longer number (a card, an account)
)
# A quoted value is the whole quoted text (spaces too); an unquoted one ends at a space.
_SECRET = re.compile(
    r"\b(?:password|passwd|passphrase|pass phrase|passcode|pass code|pw|pwd|api[ _-]?key|token"
    r"|secret)(?:\s+(?:is|was)\s+|\s*[:=]\s*)"
    r"(?:\"(?P<dq>[^\"\s](?:[^\"\n]{0,198}[^\"\s])?)\"|'(?P<sq>[^'\s](?:[^'\n]{0,198}[^'\s])?)'"
    r"|[\"']?(?P<value>[^\s\"',;]{3,}))",
    re.IGNORECASE,
)
# A PIN is digits: after "PIN (code)" and "is" / ":", or after a space alone ("PIN 4821").
_PIN = re.compile(
    r"\bpin(?:\s+code)?(?:(?:\s+(?:is|was)\s+|\s*[:=]\s*)(?P<pin>\d{3,})|\s+(?P<bare>\d{4,8}))"
    r"(?!\w|[.,]\d)",
    re.IGNORECASE,
)
# Punctuation that can end the clause an unquoted secret is written in.
_CLAUSE_END = ".!?:)"
_ADDRESS = re.compile(
    r"\b\d{1,5}[A-Za-z]?\s+(?:[A-Z][a-z]+\s){1,3}"
    r"(?:Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|Dr|Boulevard|Blvd|Way|Court|Ct|Place|Pl)\b"
)


def _value_end(text: str, start: int, end: int) -> int:
    """Where the unquoted secret ``text[start:end]`` ends without the punctuation that ends
    its clause: ".", ":" and ")" (one that closes a "(" of the value stays) always; "!" and
    "?" at a sentence end only, not when the text goes on in lowercase ("hunter2! and I")."""
    rest = text[end:].lstrip("\"'")
    after = rest.lstrip()
    sentence_end = not after or (rest[:1].isspace() and not after[0].islower())
    while end > start and text[end - 1] in _CLAUSE_END:
        mark = text[end - 1]
        if mark in "!?" and not sentence_end:
            break
        if mark == ")" and text.count("(", start, end) >= text.count(")", start, end):
            break
        end -= 1
    return end


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
            # A word after the number can look like one more group ("... 1332 for"): the
            # IBAN is the longest mod-97-valid part that ends at a space.
            value = m.group()
            while not _iban_ok(value) and " " in value[4:]:
                value = value[: value.rindex(" ")]
            if _iban_ok(value):
                yield Finding(kind, m.start(), m.start() + len(value), value)
    elif kind == "phone":
        for m in _PHONE.finditer(text):
            if len(re.sub(r"\D", "", m.group())) >= 8:
                yield Finding(kind, m.start(), m.end(), m.group())
    elif kind == "secret":
        for m in _SECRET.finditer(text):
            group = next(g for g in ("dq", "sq", "value") if m.group(g) is not None)
            start, end = m.span(group)
            if group == "value":
                end = _value_end(text, start, end)
            if end - start >= 3:
                yield Finding(kind, start, end, text[start:end])
        for m in _PIN.finditer(text):
            group = "pin" if m.group("pin") is not None else "bare"
            yield Finding(kind, m.start(group), m.end(group), m.group(group))
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


def revealed(texts: Iterable[str], kinds: Iterable[str] = KINDS) -> dict[str, str]:
    """The personal values (value -> kind) the patterns find in ``texts``: given to a
    :class:`Redactor` as ``known`` before a request's texts are redacted in order, so a value
    is replaced also where it stands before the words that reveal it (an answer that held
    "PIN-4711", then "my password is PIN-4711")."""
    kinds = list(kinds)
    return {f.value: f.kind for text in texts for f in find_personal(text, kinds)}


@dataclass
class Redactor:
    """Replaces personal data by placeholders across one request."""

    kinds: tuple[str, ...] = KINDS
    placeholders: dict[str, str] = field(default_factory=dict)  # value -> placeholder
    counts: dict[str, int] = field(default_factory=dict)  # kind -> values replaced
    # Values the thread revealed in turns no longer in the request (value -> kind): a repeat
    # of one is replaced even without the words that revealed it.
    known: Mapping[str, str] = field(default_factory=dict)

    def _placeholder(self, value: str, kind: str) -> str:
        if value not in self.placeholders:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.placeholders[value] = f"[{kind.upper()}_{self.counts[kind]}]"
        return self.placeholders[value]

    def redact(self, text: str) -> str:
        """``text`` with what the patterns find replaced, and every value found earlier in
        this request or thread wherever it appears again: a secret is found only after its
        "password is", but an answer that repeats it ("Noted: hunter2!") must not carry it."""
        spans: list[tuple[int, int, str]] = []  # start, end, placeholder
        for f in find_personal(text, self.kinds):
            spans.append((f.start, f.end, self._placeholder(f.value, f.kind)))
        known = {v: k for v, k in self.known.items() if k in self.kinds and v.strip()}
        for value in sorted(set(self.placeholders) | set(known), key=len, reverse=True):
            # a whole value only: "4821" is not replaced inside "48210"
            left = r"(?<!\w)" if re.match(r"\w", value[0]) else ""
            right = r"(?!\w)" if re.match(r"\w", value[-1]) else ""
            for m in re.finditer(left + re.escape(value) + right, text):
                if all(m.end() <= start or m.start() >= end for start, end, _ in spans):
                    kind = known.get(value, "")
                    spans.append((m.start(), m.end(), self._placeholder(value, kind)))
        out, last = [], 0
        for start, end, placeholder in sorted(spans):
            out += [text[last:start], placeholder]
            last = end
        return "".join(out) + text[last:]

    def restore(self, text: str) -> str:
        """``text`` with this request's placeholders put back (the answer, on the device),
        and any placeholder the cloud made up shown as "(unknown KIND)"."""
        return put_back(text, {p: v for v, p in self.placeholders.items()})

    def restorer(self) -> StreamRestorer:
        """A :class:`StreamRestorer` for an answer to this request."""
        return StreamRestorer({p: v for v, p in self.placeholders.items()})


def _checked_kinds(kinds: Iterable[str], what: str) -> list[str]:
    if isinstance(kinds, str):
        raise TmoGraphError(
            f"{what} must be a list of kinds, not the string {kinds!r}",
            f"write [{kinds!r}]; kinds are {', '.join(KINDS)}",
        )
    kinds = list(kinds)
    unknown = sorted({str(k) for k in kinds} - set(KINDS))
    if unknown:
        raise TmoGraphError(
            f"{what} names unknown personal-data kind(s) {unknown}",
            f"use some of: {', '.join(KINDS)}",
        )
    return kinds


def _checked_texts(texts: Iterable[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise TmoGraphError(f"{what} must be a list of texts, not one string", "pass [text]")
    texts = list(texts)
    for bad in texts:
        if isinstance(bad, str):
            continue
        raise TmoGraphError(
            f"{what} must hold only strings (got {type(bad).__name__} {bad!r:.60})",
            "pass the message texts, e.g. with tmo_graph.prompts.message_text",
        )
    return texts


def kinds_in(texts: Iterable[str], kinds: Iterable[str]) -> list[str]:
    """The kinds of ``kinds`` that occur in any of ``texts`` (in :data:`KINDS` order)."""
    wanted = _checked_kinds(kinds, "kinds")
    texts = _checked_texts(texts, "texts")
    found: set[str] = set()
    for text in texts:
        if len(found) == len(set(wanted)):
            break
        found.update(f.kind for f in find_personal(text, wanted))
    return [k for k in KINDS if k in found]


def kept_on_device(state: State, persona: str, keep_local: Sequence[str]) -> list[str]:
    """Why this turn must be answered on the device ([] when it may go to the cloud): its
    message is private, or a cloud request would carry personal data of a ``keep_local``
    kind (in the message, the history, the recalled memory or the persona).

    ``persona`` is the run's ``Context.system_prompt``; ``keep_local`` is
    ``settings.privacy.keep_local``. Each reason reads well after "kept on the device: ".
    """
    reasons = []
    if state.messages and is_private(state.messages[-1]):
        reasons.append("private message")
    if _checked_kinds(keep_local, "privacy.keep_local"):
        kinds = kinds_in(
            cloud_texts(state.messages, state.recalled, persona, state.prompt), keep_local
        )
        if kinds:
            reasons.append(f"personal data ({', '.join(kinds)})")
    return reasons


class StreamRestorer:
    """Puts placeholders back into an answer as it streams.

    ``feed`` returns what can be shown now: every complete placeholder replaced by its value,
    and a trailing piece that may still become a placeholder (``"[EMA"``) held back until it
    is complete or cannot be one; ``flush`` returns what is held back at the end.
    """

    def __init__(self, placeholders: Mapping[str, str]) -> None:
        """``placeholders`` maps each placeholder (``"[EMAIL_1]"``) to its value."""
        if not isinstance(placeholders, Mapping):
            raise TmoGraphError(
                f"placeholders must be a mapping, not {type(placeholders).__name__}",
                'pass {"[EMAIL_1]": "anna@example.org", ...} (Redactor.restorer() makes it)',
            )
        for key, value in placeholders.items():
            if not (isinstance(key, str) and isinstance(value, str) and key.startswith("[")):
                raise TmoGraphError(
                    f"placeholders must map '[KIND_n]' strings to strings (got {key!r:.40}: "
                    f"{value!r:.40})",
                    'pass {"[EMAIL_1]": "anna@example.org", ...} (Redactor.restorer() makes it)',
                )
        self.placeholders = dict(placeholders)
        self._held = ""  # raw text that may still become a placeholder

    def _restore(self, text: str) -> str:
        return put_back(text, self.placeholders)

    def feed(self, text: str) -> str:
        """The restored text that can be shown after this piece of the stream."""
        if not isinstance(text, str):
            raise TmoGraphError(
                f"a streamed piece must be a string (got {type(text).__name__})",
                "feed the chunks' text content",
            )
        raw = self._held + text
        start = raw.rfind("[")
        # A placeholder holds one "[", at its start: only the text from the last "[" on can
        # be an unfinished one.
        tail = raw[start:]
        if start != -1 and (
            _PLACEHOLDER_START.match(tail)
            or any(p.startswith(tail) and p != tail for p in self.placeholders)
        ):
            raw, self._held = raw[:start], raw[start:]
        else:
            self._held = ""
        return self._restore(raw)

    def flush(self) -> str:
        """The text still held back (an unfinished placeholder stays as the cloud wrote it)."""
        held, self._held = self._held, ""
        return self._restore(held)
