"""A thread's stored size grows with its turns, not with their square (issue 23, item 2).

``messages`` and ``turns`` are LangGraph ``DeltaChannel``\\ s: a checkpoint stores a step's
writes, and every ``SNAPSHOT_EVERY`` updates the whole list. These tests run a 200-turn
thread through the real graph (fake models) on a real ``SqliteSaver`` as the surfaces run it
(``durability="sync"``: a checkpoint per step) and measure the bytes the saver stored; they
check that the thread reads back whole, that pixels sent inline are stored only as the
caller's input, and that forks (a copied checkpoint, a past checkpoint updated) still hold the
dialogue up to the fork.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from tests.unit_tests.fakes import FakeLocal, fake_services
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.server.turns import TurnRunner
from tmo_graph.state import append_turns

TURNS = 200
IMAGE_TURN = 120
# Measured: about 30 KB a text turn, all but 2-3 KB of it LangGraph's own bookkeeping in the
# 8 checkpoints a turn (channel versions, versions seen, metadata, the per-turn scratch). A
# snapshot of the whole dialogue every 100 updates adds about 1.5 KB a turn at 200 turns.
# Storing the whole dialogue at every step (before DeltaChannel) took 1.5 MB a turn there.
BYTES_PER_TURN = 40_000


def _noise_png(side: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def _stored(db: Path) -> int:
    """Bytes the saver stored: every checkpoint, its metadata and every write."""
    with sqlite3.connect(db) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'writes'").fetchone():
            return 0  # the saver makes its tables at its first write
        row = conn.execute(
            "SELECT (SELECT COALESCE(SUM(LENGTH(checkpoint) + LENGTH(metadata)), 0)"
            " FROM checkpoints) + (SELECT COALESCE(SUM(LENGTH(value)), 0) FROM writes)"
        ).fetchone()
    return int(row[0])


def _rows_holding(db: Path, needle: bytes) -> int:
    with sqlite3.connect(db) as conn:
        return sum(
            conn.execute(
                f"SELECT COUNT(*) FROM {table} WHERE INSTR({column}, ?) > 0", (needle,)
            ).fetchone()[0]  # fmt: skip
            for table, column in (("checkpoints", "checkpoint"), ("writes", "value"))
        )


def _question(i: int) -> str:
    return f"question number {i} about cooking pasta tonight"


def image_url() -> str:
    """A data URL of about 270 KB that no compression makes smaller."""
    return f"data:image/png;base64,{base64.b64encode(_noise_png(256)).decode()}"


def run_thread(
    saver: BaseCheckpointSaver[Any], tmp_path: Path, stored: Callable[[], int], url: str
) -> tuple[list[int], dict[str, Any]]:
    """Run a ``TURNS``-turn thread as the surfaces do (``durability="sync"``), turn
    ``IMAGE_TURN`` with the image ``url``; the bytes ``stored()`` grew by at each turn and
    the thread's final values."""
    local = FakeLocal(["a fine local answer of some words"], logprob=-0.05)
    graph = build_graph(fake_services(tmp_path, local, None), checkpointer=saver)
    context = Context(policy="always-local")
    config = {"configurable": {"thread_id": "long"}}
    sizes = [stored()]
    for i in range(TURNS):
        content: Any = _question(i)
        if i == IMAGE_TURN:
            content = [{"type": "text", "text": content}, {"type": "image_url", "image_url": url}]
        graph.invoke(
            {"messages": [HumanMessage(content=content)]}, config, context=context,
            durability="sync",
        )  # fmt: skip
        sizes.append(stored())
    per_turn = [b - a for a, b in zip(sizes, sizes[1:], strict=False)]
    return per_turn, graph.get_state(config).values


def check_growth(per_turn: list[int], values: dict[str, Any], url: str) -> None:
    """Linear growth, the image turn's pixels only as its input, the thread read back whole."""
    first, last = sum(per_turn[:50]) / 50, sum(per_turn[-50:]) / 50
    # Linear: the last 50 turns cost about what the first 50 did (storing the whole state at
    # every step cost 6 times as much a turn there, and ever more), and a bounded size.
    assert last <= BYTES_PER_TURN, (first, last)
    assert last <= 1.3 * first, (first, last)
    # The image turn: its pixels only as the caller's input, which LangGraph records twice
    # (the input checkpoint's ``__start__`` and that step's write to ``messages``); from
    # detect_modality on, the dialogue holds the media reference.
    assert per_turn[IMAGE_TURN] <= BYTES_PER_TURN + 2 * len(url), per_turn[IMAGE_TURN]
    asked = values["messages"][2 * IMAGE_TURN]
    assert "base64" not in str(asked.content) and _question(IMAGE_TURN) in str(asked.content)
    # The thread reads back whole: every question and answer in order, every turn record.
    assert len(values["messages"]) == 2 * TURNS
    assert [m.type for m in values["messages"][:4]] == ["human", "ai", "human", "ai"]
    assert values["messages"][-2].content == _question(TURNS - 1)
    assert [r["turn"] for r in values["turns"]] == list(range(TURNS))
    assert values["turn_count"] == TURNS


def test_a_200_turn_threads_sqlite_database_grows_linearly_and_pixels_only_as_input(
    tmp_path: Path,
) -> None:
    db, url = tmp_path / "threads.sqlite", image_url()
    with SqliteSaver.from_conn_string(str(db)) as saver:
        per_turn, values = run_thread(saver, tmp_path, lambda: _stored(db), url)
    check_growth(per_turn, values, url)
    # No step after the input stored the pixels again (with the whole state at every step,
    # the step after the input stored a third copy).
    assert _rows_holding(db, url[-2000:].encode()) == 2


def _run_turns(graph: Any, config: dict[str, Any], questions: list[str]) -> None:
    for q in questions:
        graph.invoke({"messages": [("user", q)]}, config, context=Context(policy="always-local"))


def test_an_update_from_a_past_checkpoint_branches_with_the_dialogue_up_to_it(
    tmp_path: Path,
) -> None:
    """LangGraph's own fork (update_state on a past config): the branch replays the writes
    of its own ancestors only."""
    with SqliteSaver.from_conn_string(str(tmp_path / "t.sqlite")) as saver:
        graph = build_graph(fake_services(tmp_path, FakeLocal(["ok"]), None), checkpointer=saver)
        config = {"configurable": {"thread_id": "t"}}
        _run_turns(graph, config, ["one?", "two?", "three?"])
        past = next(
            s
            for s in graph.get_state_history(config)
            if not s.next and s.values.get("turn_count") == 1
        )
        branch = graph.update_state(past.config, {"messages": [("user", "edited two?")]})
        values = graph.get_state(branch).values
        assert [m.content for m in values["messages"]] == ["one?", "ok", "edited two?"]
        assert [r["turn"] for r in values["turns"]] == [0]
        latest = graph.get_state(config).values  # the branch is now the thread's head
        assert [m.content for m in latest["messages"]][-1] == "edited two?"
        original = graph.get_state(past.config).values
        assert [m.content for m in original["messages"]] == ["one?", "ok"]


def test_a_server_fork_stands_alone_after_its_source_is_deleted(tmp_path: Path) -> None:
    """The server's fork copies the checkpoint that ended a turn into a new thread; the
    DeltaChannels' values go with it, since the new thread has no earlier checkpoints."""

    async def run() -> None:
        async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "t.sqlite")) as saver:
            graph = build_graph(
                fake_services(tmp_path, FakeLocal(["ok"]), None), checkpointer=saver
            )
            source = {"configurable": {"thread_id": "source"}}
            context = Context(policy="always-local")
            for q in ["one?", "two?", "three?"]:
                await graph.ainvoke({"messages": [("user", q)]}, source, context=context)
            runner = TurnRunner(graph, 4, 5.0)
            assert await runner.fork("source", 2, "copy")
            await saver.adelete_thread("source")
            copy = {"configurable": {"thread_id": "copy"}}
            values = (await graph.aget_state(copy)).values
            assert [m.content for m in values["messages"]] == ["one?", "ok", "two?", "ok"]
            assert [r["turn"] for r in values["turns"]] == [0, 1]
            out = await graph.ainvoke({"messages": [("user", "3?")]}, copy, context=context)
            assert [m.content for m in out["messages"]][-2:] == ["3?", "ok"]
            assert [r["turn"] for r in out["turns"]] == [0, 1, 2]

    asyncio.run(run())


def test_the_growing_channels_are_delta_channels_with_batching_invariant_reducers(
    tmp_path: Path,
) -> None:
    graph = build_graph(fake_services(tmp_path, FakeLocal(["ok"]), None))
    assert isinstance(graph.channels["messages"], DeltaChannel)
    assert isinstance(graph.channels["turns"], DeltaChannel)
    a, b, c = ([{"turn": i}] for i in range(3))
    start: list[Any] = [{"turn": -1}]
    assert append_turns(append_turns(start, [a]), [b, c]) == append_turns(start, [a, b, c])
    assert append_turns(start, []) == start


def test_a_turn_record_written_without_its_list_is_a_clear_error() -> None:
    with pytest.raises(TmoGraphError, match="must be a list of turn records, not dict") as info:
        append_turns([], [{"turn": 0}])  # type: ignore[list-item]
    assert "return {'turns': [record]}" in str(info.value)
