"""Who owns each dialogue thread the server holds, kept beside the threads themselves.

A thread belongs to the user who started it. The record lives in the thread store (a table
``tmo_thread_owners`` in the same SQLite file or PostgreSQL database as the checkpoints), so
a restarted server still knows every owner and workers sharing PostgreSQL share them too.
:meth:`ThreadOwners.claim` is one atomic insert-if-absent: two requests claiming one id at
once cannot both win.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TABLE = "tmo_thread_owners"


@dataclass(frozen=True)
class OwnedThread:
    """A thread, its owner and when it was claimed (seconds since the epoch)."""

    thread_id: str
    user_id: str
    created: float


class ThreadOwners(ABC):
    """The owner of each thread id."""

    @abstractmethod
    async def owner(self, thread_id: str) -> str | None:
        """The user who owns ``thread_id``, or None when no one does."""

    @abstractmethod
    async def claim(self, thread_id: str, user_id: str) -> str:
        """Make ``user_id`` the owner of ``thread_id`` unless someone already is; the owner
        afterwards (``user_id`` when the claim won)."""

    @abstractmethod
    async def threads(self, user_id: str | None = None) -> list[OwnedThread]:
        """The threads ``user_id`` owns (None: every user's), newest first (the console's
        list)."""

    async def aclose(self) -> None:  # noqa: B027 (stores without resources need no close)
        """Release the store's connections."""


class MemoryOwners(ThreadOwners):
    """Owners in this process only: for a graph on an in-memory checkpointer (tests)."""

    def __init__(self) -> None:
        self._owners: dict[str, OwnedThread] = {}

    async def owner(self, thread_id: str) -> str | None:
        owned = self._owners.get(thread_id)
        return None if owned is None else owned.user_id

    async def claim(self, thread_id: str, user_id: str) -> str:
        # No await: atomic in the loop.
        return self._owners.setdefault(
            thread_id, OwnedThread(thread_id, user_id, time.time())
        ).user_id

    async def threads(self, user_id: str | None = None) -> list[OwnedThread]:
        owned = [t for t in self._owners.values() if user_id is None or t.user_id == user_id]
        return sorted(owned, key=lambda t: t.created, reverse=True)


class SqliteOwners(ThreadOwners):
    """Owners in a table of the SQLite thread file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # One connection, used by one thread at a time (the lock), from asyncio.to_thread.
        self._db = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS {_TABLE} (thread_id TEXT PRIMARY KEY, "
            "user_id TEXT NOT NULL, created REAL NOT NULL)"
        )

    def _owner(self, thread_id: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT user_id FROM {_TABLE} WHERE thread_id = ?", (thread_id,)
            ).fetchone()
        return None if row is None else str(row[0])

    def _claim(self, thread_id: str, user_id: str) -> str:
        with self._lock:
            self._db.execute(
                f"INSERT OR IGNORE INTO {_TABLE} (thread_id, user_id, created) VALUES (?, ?, ?)",
                (thread_id, user_id, time.time()),
            )
            (owner,) = self._db.execute(
                f"SELECT user_id FROM {_TABLE} WHERE thread_id = ?", (thread_id,)
            ).fetchone()
        return str(owner)

    def _threads(self, user_id: str | None) -> list[OwnedThread]:
        query = f"SELECT thread_id, user_id, created FROM {_TABLE}"
        args: tuple[str, ...] = ()
        if user_id is not None:
            query, args = query + " WHERE user_id = ?", (user_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created DESC", args).fetchall()
        return [OwnedThread(str(t), str(u), float(c)) for t, u, c in rows]

    async def owner(self, thread_id: str) -> str | None:
        return await asyncio.to_thread(self._owner, thread_id)

    async def threads(self, user_id: str | None = None) -> list[OwnedThread]:
        return await asyncio.to_thread(self._threads, user_id)

    async def claim(self, thread_id: str, user_id: str) -> str:
        return await asyncio.to_thread(self._claim, thread_id, user_id)

    async def aclose(self) -> None:
        with self._lock:
            self._db.close()


class PostgresOwners(ThreadOwners):
    """Owners in a table of the PostgreSQL thread database (shared by every worker)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn  # a psycopg AsyncConnection in autocommit mode

    @classmethod
    async def connect(cls, conninfo: str) -> PostgresOwners:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_TABLE} (thread_id TEXT PRIMARY KEY, "
            "user_id TEXT NOT NULL, created DOUBLE PRECISION NOT NULL)"
        )
        return cls(conn)

    async def owner(self, thread_id: str) -> str | None:
        cursor = await self._conn.execute(
            f"SELECT user_id FROM {_TABLE} WHERE thread_id = %s", (thread_id,)
        )
        row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def claim(self, thread_id: str, user_id: str) -> str:
        await self._conn.execute(
            f"INSERT INTO {_TABLE} (thread_id, user_id, created) VALUES (%s, %s, %s) "
            "ON CONFLICT (thread_id) DO NOTHING",
            (thread_id, user_id, time.time()),
        )
        owner = await self.owner(thread_id)
        assert owner is not None  # the row exists: inserted now or before
        return owner

    async def threads(self, user_id: str | None = None) -> list[OwnedThread]:
        query = f"SELECT thread_id, user_id, created FROM {_TABLE}"
        args: tuple[str, ...] = ()
        if user_id is not None:
            query, args = query + " WHERE user_id = %s", (user_id,)
        cursor = await self._conn.execute(query + " ORDER BY created DESC", args)
        return [OwnedThread(str(t), str(u), float(c)) for t, u, c in await cursor.fetchall()]

    async def aclose(self) -> None:
        await self._conn.close()
