"""Labels of past turns (feedback, judges' scores) beside the threads: kept, read back by
thread and by date, never overwritten; bad labels refused with the fix; the same on SQLite
(and PostgreSQL in tests/integration_tests/test_turn_labels_postgres.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tmo_graph.errors import TmoGraphError
from tmo_graph.settings import Settings
from tmo_graph.threads.labels import MemoryLabels, SqliteLabels, TurnLabel, TurnLabels
from tmo_graph.threads.store import open_async_labels


async def exercise(labels: TurnLabels) -> None:
    up = TurnLabel("t1", 0, "alice", "feedback", 1, "spot on", created=100.0)
    judged = TurnLabel("t1", 0, "alice", "shadow", 0.25, created=200.0)
    other = TurnLabel("t2", 3, "bob", "escalation", 1.0, created=300.0)
    for label in (up, judged, other):
        await labels.add(label)
    assert await labels.of_thread("t1") == [up, judged]  # both kept, oldest first
    assert await labels.of_thread("t3") == []
    assert await labels.since(150.0) == [judged, other]
    assert await labels.since() == [up, judged, other]


def test_labels_in_memory_are_kept_and_read_by_thread_and_date() -> None:
    asyncio.run(exercise(MemoryLabels()))


def test_labels_in_the_sqlite_thread_file_outlive_the_connection(tmp_path: Path) -> None:
    async def run() -> None:
        async with open_async_labels(Settings(), tmp_path / "threads.sqlite") as labels:
            assert isinstance(labels, SqliteLabels)
            await exercise(labels)
        again = SqliteLabels(tmp_path / "threads.sqlite")
        assert [x.source for x in await again.since()] == ["feedback", "shadow", "escalation"]
        await again.aclose()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"thread_id": ""}, "thread_id is empty"),
        ({"turn": -1}, "turn must be an integer >= 0"),
        ({"turn": True}, "turn must be an integer >= 0"),
        ({"source": "vibes"}, "source must be one of feedback, shadow, escalation"),
        ({"score": "good"}, "score must be a number"),
        ({"score": float("nan")}, "must be finite"),
        ({"source": "shadow", "score": 3.0}, r"judge's score must be in \[0, 1\]"),
        ({"comment": "x" * 2001}, "at most 2000 are kept"),
    ],
)
def test_a_bad_label_is_refused_saying_what_to_fix(fields: dict[str, object], message: str) -> None:
    values: dict[str, object] = {
        "thread_id": "t1",
        "turn": 0,
        "user_id": "alice",
        "source": "feedback",
        "score": -1,
    }
    with pytest.raises(TmoGraphError, match=message):
        TurnLabel(**{**values, **fields})  # type: ignore[arg-type]
