"""The finished turns of a thread store with their labels, as `tmo-graph fit` reads them.

Each thread's turn records come from its latest checkpoint through the graph's own state
(the records are a delta channel: only the graph reads them whole); the labels from the
table beside the threads (:func:`tmo_graph.threads.store.open_async_labels`). A dialogue's
time is its latest checkpoint's, so the time order puts later dialogues later.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.refit import Example
from tmo_graph.settings import Settings
from tmo_graph.threads.labels import TurnLabel
from tmo_graph.threads.store import open_async_labels, open_checkpointer


def _thread_ids(saver: Any) -> list[str]:
    conn = getattr(saver, "conn", None)
    if conn is not None and hasattr(conn, "execute"):
        try:  # SQLite, PostgreSQL: one query instead of reading every checkpoint
            rows = conn.execute("SELECT DISTINCT thread_id FROM checkpoints").fetchall()
            return sorted(str(r["thread_id"] if isinstance(r, dict) else r[0]) for r in rows)
        except Exception:  # noqa: BLE001 (another saver: fall back to listing)
            pass
    return sorted({c.config["configurable"]["thread_id"] for c in saver.list(None)})


async def _labels(settings: Settings, db: Path | None) -> list[TurnLabel]:
    async with open_async_labels(settings, db) as table:
        return await table.since(0.0)


def _quality(labels: list[TurnLabel], record: dict[str, Any]) -> float | None:
    """The judged quality of the turn's local draft: the judges' mean; else, for a local
    answer kept as it was, the user's thumbs (up 1, down 0); None: unknown."""
    judged = [x.score for x in labels if x.source in ("shadow", "escalation")]
    if judged:
        return sum(judged) / len(judged)
    thumbs = [x.score for x in labels if x.source == "feedback"]
    if thumbs and record["route"] == "local" and not record["escalated"]:
        return 1.0 if sum(thumbs) > 0 else 0.0
    return None


def read_examples(
    settings: Settings, db: Path | None, since: datetime | None = None
) -> tuple[list[Example], int]:
    """Every finished turn (of dialogues active at or after ``since``) with its label, and
    the number of turns that went over their dialogue's budget."""
    if db is not None and settings.threads.url is None and not Path(db).is_file():
        raise TmoGraphError(
            f"thread database {db} does not exist",
            "pass the SQLite file `tmo-graph serve --db` or the graph wrote",
        )
    try:
        return _read(settings, db, since)
    except sqlite3.DatabaseError as exc:
        raise TmoGraphError(
            f"{db} is not a thread database ({exc})",
            "pass the SQLite file `tmo-graph serve --db` or the graph wrote",
        ) from None


def _read(settings: Settings, db: Path | None, since: datetime | None) -> tuple[list[Example], int]:
    from tmo_graph.graph import build_graph

    labels_by_turn: dict[tuple[str, int], list[TurnLabel]] = defaultdict(list)
    for label in asyncio.run(_labels(settings, db)):
        labels_by_turn[(label.thread_id, label.turn)].append(label)
    examples: list[Example] = []
    over = 0
    with open_checkpointer(settings, db) as saver:
        graph = build_graph(settings=settings, checkpointer=saver)
        for thread_id in _thread_ids(saver):
            snapshot = graph.get_state({"configurable": {"thread_id": thread_id}})
            when = datetime.fromisoformat(snapshot.created_at) if snapshot.created_at else None
            if since is not None and when is not None and when < since:
                continue
            stamp = when.timestamp() if when is not None else 0.0
            for record in snapshot.values.get("turns", []):
                left = record.get("budget_left") or {}
                over += any(v < 0 for v in left.values())
                examples.append(
                    Example(
                        thread_id=thread_id,
                        turn=int(record["turn"]),
                        task=str(record["task"]),
                        route=record["route"],
                        escalated=bool(record["escalated"]),
                        confidence=record.get("confidence"),
                        quality=_quality(labels_by_turn[(thread_id, record["turn"])], record),
                        when=stamp,
                    )
                )
    return examples, over
