"""Which thread a resent dialogue belongs to, by its content: a hash chain kept with the threads.

OpenAI-style clients (Open WebUI, most SDK apps) resend the whole chat on every request and
name no thread. Each message of a dialogue extends a SHA-256 chain over its role, its text
(whitespace collapsed: clients reformat what they show) and the hashes of its media; after
each turn the chain of the dialogue as the client will resend it (the answer included) is
recorded beside the thread's owner, under the user. A later request whose history hashes to
a recorded chain of the same user continues that thread: two users sending identical
messages never meet, since the lookup is by (user, chain).

The records live in the thread store (a table ``tmo_thread_chains`` in the same SQLite file or
PostgreSQL database as the checkpoints), or in this process for an in-memory graph.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TABLE = "tmo_thread_chains"
START = ""  # the chain of an empty dialogue


def media_hash(data: str) -> str:
    """The content hash of a media part's data (a data URL, base64 or a URL)."""
    return hashlib.sha256(data.strip().encode()).hexdigest()


def extend(chain: str, role: str, text: str, media: Sequence[str] = ()) -> str:
    """``chain`` followed by one message: its role, its text with whitespace collapsed and
    its media hashes (in order)."""
    digest = hashlib.sha256()
    for piece in (chain, role, " ".join(text.split()), *media):
        data = piece.encode()
        digest.update(b"%d:" % len(data) + data)  # length-prefixed: no two splits hash alike
    return digest.hexdigest()


def chain_of(messages: Iterable[tuple[str, str, Sequence[str]]], start: str = START) -> list[str]:
    """The chain after each of ``messages`` (role, text, media hashes), oldest first."""
    out: list[str] = []
    chain = start
    for role, text, media in messages:
        chain = extend(chain, role, text, media)
        out.append(chain)
    return out


@dataclass(frozen=True)
class Link:
    """A recorded chain: the thread that holds that dialogue and the turn it ends with."""

    thread_id: str
    turn: int


class ThreadChains(ABC):
    """The recorded chains of each user's threads."""

    @abstractmethod
    async def find(self, user_id: str, chains: Sequence[str]) -> dict[str, Link]:
        """Which of ``chains`` ``user_id`` has recorded, and where."""

    @abstractmethod
    async def add(self, user_id: str, chain: str, thread_id: str, turn: int) -> None:
        """Record that ``user_id``'s ``thread_id`` holds the dialogue ``chain`` after ``turn``;
        a chain already recorded keeps its first thread (a fork shares its history with the
        thread it came from, which keeps it)."""

    async def aclose(self) -> None:  # noqa: B027 (stores without resources need no close)
        """Release the store's connections."""


class MemoryChains(ThreadChains):
    """Chains in this process only: for a graph on an in-memory checkpointer (tests)."""

    def __init__(self) -> None:
        self._links: dict[tuple[str, str], Link] = {}

    async def find(self, user_id: str, chains: Sequence[str]) -> dict[str, Link]:
        found = {c: self._links.get((user_id, c)) for c in chains}
        return {c: link for c, link in found.items() if link is not None}

    async def add(self, user_id: str, chain: str, thread_id: str, turn: int) -> None:
        self._links.setdefault((user_id, chain), Link(thread_id, turn))


_CREATE = (
    f"CREATE TABLE IF NOT EXISTS {_TABLE} (user_id TEXT NOT NULL, chain TEXT NOT NULL, "
    "thread_id TEXT NOT NULL, turn INTEGER NOT NULL, created {real} NOT NULL, "
    "PRIMARY KEY (user_id, chain))"
)


class SqliteChains(ThreadChains):
    """Chains in a table of the SQLite thread file."""

    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()
        # One connection, used by one thread at a time (the lock), from asyncio.to_thread.
        self._db = sqlite3.connect(
            Path(path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.execute(_CREATE.format(real="REAL"))

    def _find(self, user_id: str, chains: Sequence[str]) -> dict[str, Link]:
        if not chains:
            return {}
        marks = ",".join("?" * len(chains))
        with self._lock:
            rows = self._db.execute(
                f"SELECT chain, thread_id, turn FROM {_TABLE} "
                f"WHERE user_id = ? AND chain IN ({marks})",
                (user_id, *chains),
            ).fetchall()
        return {str(c): Link(str(t), int(n)) for c, t, n in rows}

    def _add(self, user_id: str, chain: str, thread_id: str, turn: int) -> None:
        with self._lock:
            self._db.execute(
                f"INSERT OR IGNORE INTO {_TABLE} (user_id, chain, thread_id, turn, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (user_id, chain, thread_id, turn, time.time()),
            )

    async def find(self, user_id: str, chains: Sequence[str]) -> dict[str, Link]:
        return await asyncio.to_thread(self._find, user_id, list(chains))

    async def add(self, user_id: str, chain: str, thread_id: str, turn: int) -> None:
        await asyncio.to_thread(self._add, user_id, chain, thread_id, turn)

    async def aclose(self) -> None:
        with self._lock:
            self._db.close()


class PostgresChains(ThreadChains):
    """Chains in a table of the PostgreSQL thread database (shared by every worker)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn  # a psycopg AsyncConnection in autocommit mode

    @classmethod
    async def connect(cls, conninfo: str) -> PostgresChains:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        await conn.execute(_CREATE.format(real="DOUBLE PRECISION"))
        return cls(conn)

    async def find(self, user_id: str, chains: Sequence[str]) -> dict[str, Link]:
        if not chains:
            return {}
        cursor = await self._conn.execute(
            f"SELECT chain, thread_id, turn FROM {_TABLE} WHERE user_id = %s AND chain = ANY(%s)",
            (user_id, list(chains)),
        )
        return {str(c): Link(str(t), int(n)) for c, t, n in await cursor.fetchall()}

    async def add(self, user_id: str, chain: str, thread_id: str, turn: int) -> None:
        await self._conn.execute(
            f"INSERT INTO {_TABLE} (user_id, chain, thread_id, turn, created) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (user_id, chain) DO NOTHING",
            (user_id, chain, thread_id, turn, time.time()),
        )

    async def aclose(self) -> None:
        await self._conn.close()
