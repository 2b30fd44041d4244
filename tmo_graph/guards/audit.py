"""The audit log: one JSON line per cloud request, appended, never rewritten.

Each line says when, for which thread, user and API key id, to which model and endpoint host, which
views went (name and SHA-256, never pixels), how much personal data was replaced (counts by
kind, never the values), the tokens and cost reported, and the outcome ("ok" or the fault).
It never holds the API key, a prompt, an answer or a URL's credentials: what a request
carried can be checked without the log itself becoming a leak. A request the graph made to
learn, not to answer (docs/learning.md) says so in ``purpose``: ``shadow`` (a device turn's
question asked of the cloud after the user had the answer) or ``judge`` (a grading request).

A user's feedback on a turn is a line of its own (:class:`FeedbackEntry`, ``"kind":
"feedback"``): thread, user, key id, turn, score and the comment's length, never its words.
:func:`read_audit` returns the cloud requests and :func:`read_feedback` the feedback lines.

Writers in several processes may share one file: each line is written with one ``write``
under an exclusive ``flock``, so lines never interleave.

:func:`read_audit` reads a log back, every line checked (a bad one is named by file and line
number), and :func:`summarize` totals it: what ``tmo-graph audit FILE`` prints.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal, NotRequired

from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict

from tmo_graph.errors import TmoGraphError


class SentView(TypedDict):
    name: str
    sha256: str


class AuditEntry(TypedDict):
    """One cloud request (one attempt of a cloud call)."""

    time: str  # ISO 8601, UTC
    thread_id: str
    user_id: str
    # The id of the server's API key the request came with (None outside the server; lines
    # written before keys existed have none). Never the key itself.
    key_id: NotRequired[str | None]
    model: str
    endpoint: str  # the host (and port) only
    attempt: int  # 1 for the first attempt of a call
    views: list[SentView]
    redactions: dict[str, int]
    input_tokens: int
    output_tokens: int
    max_tokens: int  # the answer's token limit sent with the request
    cost_usd: float
    seconds: float
    outcome: str  # "ok", or the fault ("timeout", "server error", "rate limited", ...)
    # Why a request not made to answer was made: "shadow" or "judge" (absent: an answer).
    purpose: NotRequired[str]


class FeedbackEntry(TypedDict):
    """A user's score of one turn (``POST /v1/feedback``): never the comment's words."""

    kind: Literal["feedback"]
    time: str  # ISO 8601, UTC
    thread_id: str
    user_id: str
    key_id: str | None
    turn: int
    score: float
    comment_chars: int  # the comment's length; its words stay in the labels table


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class AuditLog:
    """Appends :class:`AuditEntry` lines to ``path`` (created with its folder, mode 0600)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise TmoGraphError(
                f"audit log {self.path} is a folder", "set audit.path to a file, e.g. audit.jsonl"
            )

    def append(self, entry: AuditEntry | FeedbackEntry | Mapping[str, Any]) -> None:
        line = (json.dumps(dict(entry), allow_nan=False, ensure_ascii=False) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
        finally:
            os.close(fd)  # closing releases the lock


# --- reading a log back -----------------------------------------------------------------------

_FIX_LINE = "each line must be one JSON object as AuditLog.append writes it; remove or repair it"


@cache
def _entry_adapter() -> TypeAdapter[AuditEntry]:
    return TypeAdapter(AuditEntry)


@cache
def _feedback_adapter() -> TypeAdapter[FeedbackEntry]:
    return TypeAdapter(FeedbackEntry)


def _is_feedback(raw: bytes) -> bool:
    """Whether a line is a feedback line (cheap test first: most lines are requests)."""
    if b'"kind"' not in raw:
        return False
    try:
        return bool(json.loads(raw).get("kind") == "feedback")
    except (ValueError, AttributeError):
        return False


def _what_is_wrong(error: ValidationError) -> str:
    """One pydantic error as a short phrase: a missing field, a wrong type, bad JSON."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"])
    if first["type"] == "json_invalid":
        return f"not JSON ({message.removeprefix('Invalid JSON: ')})"
    if first["type"] == "missing":
        return f"field `{field}` is missing"
    message = f"{message[:1].lower()}{message[1:]} (got {first.get('input')!r:.60})"
    return f"field `{field}`: {message}" if field else message


def _lines(path: Path) -> list[tuple[int, bytes]]:
    """The log's non-blank lines with their numbers; a missing or unreadable file named."""
    if not path.exists():
        raise TmoGraphError(
            f"audit log {path} does not exist",
            "pass the file the graph writes (audit.path, default <cache>/audit.jsonl)",
        )
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise TmoGraphError(
            f"audit log {path} cannot be read ({exc.strerror or exc})",
            "pass a readable file",
        ) from None
    return [(n, raw) for n, raw in enumerate(raw_lines, start=1) if raw.strip()]


def _checked_time(path: Path, number: int, time: str) -> None:
    try:
        datetime.fromisoformat(time)
    except ValueError:
        raise TmoGraphError(
            f"audit log {path}:{number}: field `time` is not an ISO 8601 time (got {time!r:.60})",
            _FIX_LINE,
        ) from None


def read_audit(path: str | Path) -> list[AuditEntry]:
    """The cloud requests of the audit log at ``path``, each line checked (feedback lines,
    :func:`read_feedback`'s, are skipped).

    Raises :class:`TmoGraphError` naming the file and line for a line that is not a valid
    :class:`AuditEntry`, and for a missing, unreadable or empty file. Blank lines are skipped.
    """
    path = Path(path)
    adapter = _entry_adapter()
    entries: list[AuditEntry] = []
    for number, raw in _lines(path):
        if _is_feedback(raw):
            continue
        try:
            entry: AuditEntry = adapter.validate_json(raw)
        except ValidationError as exc:
            problem = f"audit log {path}:{number}: {_what_is_wrong(exc)}"
            raise TmoGraphError(problem, _FIX_LINE) from None
        _checked_time(path, number, entry["time"])
        entries.append(entry)
    if not entries:
        raise TmoGraphError(
            f"audit log {path} is empty", "it gets a line once the graph makes a cloud request"
        )
    return entries


def read_feedback(path: str | Path) -> list[FeedbackEntry]:
    """The feedback lines of the audit log at ``path``, each checked ([] when it has none)."""
    path = Path(path)
    adapter = _feedback_adapter()
    entries: list[FeedbackEntry] = []
    for number, raw in _lines(path):
        if not _is_feedback(raw):
            continue
        try:
            entry = adapter.validate_json(raw)
        except ValidationError as exc:
            problem = f"audit log {path}:{number}: {_what_is_wrong(exc)}"
            raise TmoGraphError(problem, _FIX_LINE) from None
        _checked_time(path, number, entry["time"])
        entries.append(entry)
    return entries


class ModelUse(TypedDict):
    model: str
    endpoint: str
    requests: int
    cost_usd: float


class AuditSummary(TypedDict):
    """What a log holds, in totals: what ``tmo-graph audit`` prints."""

    file: str
    requests: int
    first: str  # time of the earliest request
    last: str  # time of the latest request
    by_outcome: dict[str, int]
    by_model: list[ModelUse]  # one per (model, endpoint), most requests first
    threads: int  # distinct thread ids
    users: int  # distinct user ids
    input_tokens: int
    output_tokens: int
    cost_usd: float
    views: dict[str, int]  # view name -> requests that carried it
    redactions: dict[str, int]  # personal-data kind -> values replaced


def _most_first(counts: Mapping[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def summarize(entries: list[AuditEntry], file: str | Path = "") -> AuditSummary:
    """Totals over ``entries`` (at least one)."""
    if not entries:
        raise TmoGraphError("no audit entries to summarize", "read a log that has lines")
    outcomes: dict[str, int] = {}
    models: dict[tuple[str, str], ModelUse] = {}
    views: dict[str, int] = {}
    redactions: dict[str, int] = {}
    for e in entries:
        outcomes[e["outcome"]] = outcomes.get(e["outcome"], 0) + 1
        use = models.setdefault(
            (e["model"], e["endpoint"]),
            ModelUse(model=e["model"], endpoint=e["endpoint"], requests=0, cost_usd=0.0),
        )
        use["requests"] += 1
        use["cost_usd"] += e["cost_usd"]
        for view in e["views"]:
            views[view["name"]] = views.get(view["name"], 0) + 1
        for kind, count in e["redactions"].items():
            redactions[kind] = redactions.get(kind, 0) + count
    for use in models.values():
        use["cost_usd"] = round(use["cost_usd"], 10)
    times = sorted(entries, key=lambda e: datetime.fromisoformat(e["time"]))
    return AuditSummary(
        file=str(file),
        requests=len(entries),
        first=times[0]["time"],
        last=times[-1]["time"],
        by_outcome=_most_first(outcomes),
        by_model=sorted(models.values(), key=lambda u: (-u["requests"], u["model"], u["endpoint"])),
        threads=len({e["thread_id"] for e in entries}),
        users=len({e["user_id"] for e in entries}),
        input_tokens=sum(e["input_tokens"] for e in entries),
        output_tokens=sum(e["output_tokens"] for e in entries),
        cost_usd=round(sum(e["cost_usd"] for e in entries), 10),
        views=_most_first(views),
        redactions=_most_first(redactions),
    )


def format_summary(summary: AuditSummary) -> str:
    """The summary as plain-text tables: totals, outcomes, models, views, redactions."""
    from rich import box
    from rich.table import Table

    from tmo_graph.plain_text import plain_text

    def table(*columns: str) -> Table:
        out = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for i, name in enumerate(columns):
            out.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
        return out

    totals = table("total", "value")
    for name, value in (
        ("requests", str(summary["requests"])),
        ("threads", str(summary["threads"])),
        ("users", str(summary["users"])),
        ("input tokens", str(summary["input_tokens"])),
        ("output tokens", str(summary["output_tokens"])),
        ("cost USD", f"{summary['cost_usd']:.6f}"),
        ("first request", summary["first"]),
        ("last request", summary["last"]),
    ):
        totals.add_row(name, value)
    outcomes = table("outcome", "requests")
    for outcome, count in summary["by_outcome"].items():
        outcomes.add_row(outcome, str(count))
    models = table("model", "endpoint", "requests", "cost USD")
    models.columns[1].justify = "left"
    for use in summary["by_model"]:
        models.add_row(
            use["model"], use["endpoint"], str(use["requests"]), f"{use['cost_usd']:.6f}"
        )
    items: list[Any] = [
        totals,
        "",
        outcomes,
        "",
        models,
        "",
    ]
    views = table("view sent", "requests")
    for name, count in summary["views"].items():
        views.add_row(name, str(count))
    items += [views if summary["views"] else "no views sent", ""]
    redactions = table("personal data replaced", "values")
    for kind, count in summary["redactions"].items():
        redactions.add_row(kind, str(count))
    items.append(redactions if summary["redactions"] else "no personal data replaced")
    # The title is not rendered by rich: a long path stays on one line.
    title = f"{summary['file'] or 'audit log'}: {summary['requests']} cloud request(s)"
    return f"{title}\n\n{plain_text(*items, width=120)}"
