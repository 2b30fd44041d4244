"""The audit log: one JSON line per cloud request, appended, never rewritten.

Each line says when, for which thread and user, to which model and endpoint host, which
views went (name and SHA-256, never pixels), how much personal data was replaced (counts by
kind, never the values), the tokens and cost reported, and the outcome ("ok" or the fault).
It never holds the API key, a prompt, an answer or a URL's credentials: what a request
carried can be checked without the log itself becoming a leak.

Writers in several processes may share one file: each line is written with one ``write``
under an exclusive ``flock``, so lines never interleave.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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

    def append(self, entry: AuditEntry | Mapping[str, Any]) -> None:
        line = (json.dumps(dict(entry), allow_nan=False, ensure_ascii=False) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
        finally:
            os.close(fd)  # closing releases the lock
