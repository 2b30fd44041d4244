"""Labels of past turns: what the router learns from its own traffic.

A label says how good one turn's answer was: a user's thumbs up or down (``feedback``), a
judge comparing the device's answer with the cloud's on a sampled turn (``shadow``), or the
same judge on an escalated turn's draft against the cloud's answer (``escalation``). Labels
live in a table ``tmo_turn_labels`` beside the threads (the SQLite file or the PostgreSQL
database of the checkpoints), keyed by thread and turn (the ``turn`` of the turn record), so
``tmo-graph fit`` reads them with the records they label. A turn may have several labels;
nothing is overwritten.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tmo_graph.errors import TmoGraphError

_TABLE = "tmo_turn_labels"
LabelSource = Literal["feedback", "shadow", "escalation"]
SOURCES: tuple[LabelSource, ...] = ("feedback", "shadow", "escalation")
MAX_COMMENT_CHARS = 2000
_COLUMNS = "thread_id, turn, user_id, source, score, comment, created"


@dataclass(frozen=True)
class TurnLabel:
    """One label of one turn.

    ``score``: for ``feedback`` the user's number (1 / -1 for thumbs up / down); for
    ``shadow`` and ``escalation`` the judge's score of the device's answer against the
    cloud's, in [0, 1] (1: as good). ``created``: seconds since the epoch.
    """

    thread_id: str
    turn: int
    user_id: str
    source: LabelSource
    score: float
    comment: str = ""
    created: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not self.thread_id:
            raise TmoGraphError("a label's thread_id is empty", "name the thread the turn is in")
        if isinstance(self.turn, bool) or not isinstance(self.turn, int) or self.turn < 0:
            raise TmoGraphError(
                f"a label's turn must be an integer >= 0, got {self.turn!r}",
                "pass the `turn` the turn record (the response's tmo field) reports",
            )
        if self.source not in SOURCES:
            raise TmoGraphError(
                f"a label's source must be one of {', '.join(SOURCES)}, got {self.source!r}",
                "use feedback for a user's score, shadow or escalation for a judge's",
            )
        if isinstance(self.score, bool) or not isinstance(self.score, int | float):
            raise TmoGraphError(
                f"a label's score must be a number, got {self.score!r}",
                "send e.g. 1 (thumbs up) or -1 (thumbs down)",
            )
        if not math.isfinite(self.score):
            raise TmoGraphError(f"a label's score must be finite, got {self.score}", "send 1 or -1")
        if self.source != "feedback" and not 0.0 <= self.score <= 1.0:
            raise TmoGraphError(
                f"a judge's score must be in [0, 1], got {self.score}",
                "scale the judge's grade to 0 (useless) .. 1 (as good as the cloud's)",
            )
        if len(self.comment) > MAX_COMMENT_CHARS:
            raise TmoGraphError(
                f"a label's comment has {len(self.comment)} characters; at most "
                f"{MAX_COMMENT_CHARS} are kept",
                "shorten the comment",
            )

    def row(self) -> tuple[Any, ...]:
        return (
            self.thread_id,
            self.turn,
            self.user_id,
            self.source,
            float(self.score),
            self.comment,
            self.created,
        )


def _label(row: tuple[Any, ...]) -> TurnLabel:
    thread_id, turn, user_id, source, score, comment, created = row
    return TurnLabel(
        str(thread_id), int(turn), str(user_id), source, float(score), str(comment), float(created)
    )


class TurnLabels(ABC):
    """The labels of the threads' turns."""

    @abstractmethod
    async def add(self, label: TurnLabel) -> None:
        """Keep ``label`` (beside any the turn has already)."""

    @abstractmethod
    async def of_thread(self, thread_id: str) -> list[TurnLabel]:
        """The thread's labels, oldest first."""

    @abstractmethod
    async def since(self, created: float = 0.0) -> list[TurnLabel]:
        """Every label made at or after ``created`` (seconds since the epoch), oldest first."""

    async def aclose(self) -> None:  # noqa: B027 (stores without resources need no close)
        """Release the store's connections."""


class MemoryLabels(TurnLabels):
    """Labels in this process only (tests, a graph on an in-memory checkpointer)."""

    def __init__(self) -> None:
        self._labels: list[TurnLabel] = []

    async def add(self, label: TurnLabel) -> None:
        self._labels.append(label)

    async def of_thread(self, thread_id: str) -> list[TurnLabel]:
        return [label for label in self._labels if label.thread_id == thread_id]

    async def since(self, created: float = 0.0) -> list[TurnLabel]:
        return sorted((x for x in self._labels if x.created >= created), key=lambda x: x.created)


class SqliteLabels(TurnLabels):
    """Labels in a table of the SQLite thread file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS {_TABLE} (thread_id TEXT NOT NULL, turn INTEGER NOT "
            "NULL, user_id TEXT NOT NULL, source TEXT NOT NULL, score REAL NOT NULL, comment "
            "TEXT NOT NULL, created REAL NOT NULL)"
        )
        self._db.execute(
            f"CREATE INDEX IF NOT EXISTS {_TABLE}_thread ON {_TABLE} (thread_id, turn)"
        )

    def _add(self, label: TurnLabel) -> None:
        with self._lock:
            self._db.execute(
                f"INSERT INTO {_TABLE} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", label.row()
            )

    def _select(self, where: str, args: tuple[Any, ...]) -> list[TurnLabel]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM {_TABLE} WHERE {where} ORDER BY created, rowid", args
            ).fetchall()
        return [_label(row) for row in rows]

    async def add(self, label: TurnLabel) -> None:
        await asyncio.to_thread(self._add, label)

    async def of_thread(self, thread_id: str) -> list[TurnLabel]:
        return await asyncio.to_thread(self._select, "thread_id = ?", (thread_id,))

    async def since(self, created: float = 0.0) -> list[TurnLabel]:
        return await asyncio.to_thread(self._select, "created >= ?", (created,))

    async def aclose(self) -> None:
        with self._lock:
            self._db.close()


class PostgresLabels(TurnLabels):
    """Labels in a table of the PostgreSQL thread database (shared by every worker)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn  # a psycopg AsyncConnection in autocommit mode

    @classmethod
    async def connect(cls, conninfo: str) -> PostgresLabels:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_TABLE} (id BIGSERIAL PRIMARY KEY, thread_id TEXT NOT "
            "NULL, turn INTEGER NOT NULL, user_id TEXT NOT NULL, source TEXT NOT NULL, score "
            "DOUBLE PRECISION NOT NULL, comment TEXT NOT NULL, created DOUBLE PRECISION NOT NULL)"
        )
        await conn.execute(
            f"CREATE INDEX IF NOT EXISTS {_TABLE}_thread ON {_TABLE} (thread_id, turn)"
        )
        return cls(conn)

    async def _select(self, where: str, args: tuple[Any, ...]) -> list[TurnLabel]:
        cursor = await self._conn.execute(
            f"SELECT {_COLUMNS} FROM {_TABLE} WHERE {where} ORDER BY created, id", args
        )
        return [_label(row) for row in await cursor.fetchall()]

    async def add(self, label: TurnLabel) -> None:
        await self._conn.execute(
            f"INSERT INTO {_TABLE} ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)", label.row()
        )

    async def of_thread(self, thread_id: str) -> list[TurnLabel]:
        return await self._select("thread_id = %s", (thread_id,))

    async def since(self, created: float = 0.0) -> list[TurnLabel]:
        return await self._select("created >= %s", (created,))

    async def aclose(self) -> None:
        await self._conn.close()
