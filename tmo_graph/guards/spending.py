"""Each user's cloud spend per UTC day, shared by every dialogue, process and server worker.

A cloud request first *reserves* its worst-case cost: the reservation succeeds only while the
day's settled spend plus every open reservation plus this one stays within the cap, checked
and written in one SQLite transaction, so two dialogues of one user racing for the last cent
cannot both get it. When the request ends, the reservation is *settled* at what it really
cost (0 for a request that never reached the endpoint). The cap counts money paid to the
cloud; the device's energy is counted in each dialogue's own cost budget.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tmo_graph.errors import TmoGraphError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    day TEXT NOT NULL,
    usd REAL NOT NULL,
    settled INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS spend_user_day ON spend (user_id, day);
"""


def utc_day(now: float | None = None) -> str:
    """The UTC date (YYYY-MM-DD) of ``now`` (seconds since the epoch; default: now)."""
    return datetime.fromtimestamp(time.time() if now is None else now, UTC).date().isoformat()


class SpendLedger:
    """A user's daily spend in a SQLite file; ``today`` is injectable for tests."""

    def __init__(self, path: str | Path, today: Callable[[], str] = utc_day) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise TmoGraphError(
                f"spend ledger {self.path} is a folder", "set spending.ledger to a file path"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._today = today
        self._local = threading.local()
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below).
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            self._local.db = db
        return db

    def spent(self, user_id: str) -> float:
        """What ``user_id`` spent today, open reservations included."""
        row = (
            self._connect()
            .execute(
                "SELECT COALESCE(SUM(usd), 0) FROM spend WHERE user_id = ? AND day = ?",
                (user_id, self._today()),
            )
            .fetchone()
        )
        return float(row[0])

    def reserve(self, user_id: str, usd: float, cap_usd: float) -> int | None:
        """Hold ``usd`` of today's ``cap_usd`` for ``user_id``; the reservation's id, or None
        when it would not fit."""
        if not usd >= 0:
            raise TmoGraphError(f"a reservation must be >= 0 USD, got {usd}", "pass a cost")
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")  # one writer at a time: check and hold together
        try:
            day = self._today()
            (spent,) = db.execute(
                "SELECT COALESCE(SUM(usd), 0) FROM spend WHERE user_id = ? AND day = ?",
                (user_id, day),
            ).fetchone()
            if spent + usd > cap_usd:
                db.execute("ROLLBACK")
                return None
            cursor = db.execute(
                "INSERT INTO spend (user_id, day, usd) VALUES (?, ?, ?)", (user_id, day, usd)
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def settle(self, reservation: int, usd: float) -> None:
        """What the reserved request really cost (it replaces the reservation)."""
        if not usd >= 0:
            raise TmoGraphError(f"a cost must be >= 0 USD, got {usd}", "pass the measured cost")
        self._connect().execute(
            "UPDATE spend SET usd = ?, settled = 1 WHERE id = ?", (usd, reservation)
        )
