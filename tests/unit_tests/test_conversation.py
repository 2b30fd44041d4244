"""A turn as a surface runs it: final tokens only, the record at the end, one turn per thread."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeLocal, fake_services
from tests.unit_tests.test_graph_core import StreamingLocal
from tmo_graph.context import Context
from tmo_graph.conversation import Done, ThreadBusy, Token, astream_turn, stream_turn
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph

QUESTION = {"messages": [("user", "Explain how induction hobs work.")]}


def _graph(tmp_path: Path, local: Any, answer: str = "the pan heats itself") -> Any:
    cloud = GenericFakeChatModel(messages=iter([AIMessage(content=answer)]))
    return build_graph(fake_services(tmp_path, local, cloud), checkpointer=InMemorySaver())


def test_only_the_final_answer_streams_then_the_record(tmp_path: Path) -> None:
    graph = _graph(tmp_path, StreamingLocal("meh dunno", -3.0))
    events = list(stream_turn(graph, QUESTION, "t1", Context(policy="cascade")))
    tokens = [e.text for e in events if isinstance(e, Token)]
    done = events[-1]
    assert isinstance(done, Done) and done.record["escalated"]
    assert "".join(tokens) == "the pan heats itself" == done.record["answer"]
    assert len(tokens) > 1


def test_the_async_stream_matches(tmp_path: Path) -> None:
    graph = _graph(tmp_path, StreamingLocal("sure thing", -0.05))

    async def run() -> list[Token | Done]:
        return [e async for e in astream_turn(graph, QUESTION, "a1", Context(policy="cascade"))]

    events = asyncio.run(run())
    assert "".join(e.text for e in events if isinstance(e, Token)) == "sure thing"
    assert isinstance(events[-1], Done) and events[-1].record["route"] == "local"


class SlowLocal(FakeLocal):
    def answer(
        self, messages: Any, max_new_tokens: Any = None, tags: Any = None, max_time_s: Any = None
    ) -> Any:
        time.sleep(0.3)
        return super().answer(messages, max_new_tokens, tags)


def test_two_turns_at_once_on_one_thread_are_both_kept_in_order(tmp_path: Path) -> None:
    graph = _graph(tmp_path, SlowLocal(["ok"]))
    context = Context(policy="always-local")
    errors: list[Exception] = []

    def turn(text: str) -> None:
        try:
            list(stream_turn(graph, {"messages": [("user", text)]}, "same", context))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=turn, args=(f"question {i}",)) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors
    state = graph.get_state({"configurable": {"thread_id": "same"}}).values
    assert [r["turn"] for r in state["turns"]] == [0, 1]
    assert len(state["messages"]) == 4  # both questions and both answers


def test_a_turn_that_waits_too_long_is_refused_not_lost(tmp_path: Path) -> None:
    graph = _graph(tmp_path, SlowLocal(["ok"]))
    context = Context(policy="always-local")
    first = threading.Thread(
        target=lambda: list(stream_turn(graph, {"messages": [("user", "one")]}, "busy", context))
    )
    first.start()
    time.sleep(0.05)
    with pytest.raises(ThreadBusy, match="still answering"):
        list(stream_turn(graph, {"messages": [("user", "two")]}, "busy", context, wait_s=0.01))
    first.join()
    assert len(graph.get_state({"configurable": {"thread_id": "busy"}}).values["turns"]) == 1


def test_an_empty_thread_id_is_refused(tmp_path: Path) -> None:
    graph = _graph(tmp_path, FakeLocal(["ok"]))
    with pytest.raises(TmoGraphError, match="thread_id is empty"):
        list(stream_turn(graph, QUESTION, ""))


class FailingOnceLocal(FakeLocal):
    """Fails its first answer, as a turn cut short does; answers after that."""

    def answer(
        self, messages: Any, max_new_tokens: Any = None, tags: Any = None, max_time_s: Any = None
    ) -> Any:
        if self.calls == 0:
            self.calls += 1
            raise RuntimeError("the process died here")
        return super().answer(messages, max_new_tokens, tags)


def test_a_turn_cut_short_is_completed_before_the_next_one(tmp_path: Path) -> None:
    local = FailingOnceLocal(["x", "first answer", "second answer"])
    graph = _graph(tmp_path, local)
    context = Context(policy="always-local")
    with pytest.raises(RuntimeError, match="died"):
        list(stream_turn(graph, {"messages": [("user", "First?")]}, "c", context))
    events = list(stream_turn(graph, {"messages": [("user", "Second?")]}, "c", context))
    done = events[-1]
    assert isinstance(done, Done) and done.resumed is not None
    assert (done.resumed["turn"], done.record["turn"]) == (0, 1)
    messages = graph.get_state({"configurable": {"thread_id": "c"}}).values["messages"]
    assert [m.type for m in messages] == ["human", "ai", "human", "ai"]
    assert [seen[-1]["content"] for seen in local.seen] == ["First?", "Second?"]


def test_the_async_stream_also_completes_a_turn_cut_short(tmp_path: Path) -> None:
    local = FailingOnceLocal(["x", "first answer", "second answer"])
    graph = _graph(tmp_path, local)
    context = Context(policy="always-local")

    async def turn(text: str) -> list[Token | Done]:
        inputs = {"messages": [("user", text)]}
        return [e async for e in astream_turn(graph, inputs, "ac", context)]

    with pytest.raises(RuntimeError, match="died"):
        asyncio.run(turn("First?"))
    done = asyncio.run(turn("Second?"))[-1]
    assert isinstance(done, Done) and done.resumed is not None
    assert done.resumed["answer"] == "first answer" and done.record["answer"] == "second answer"


def test_thread_locks_are_kept_only_while_a_turn_needs_them(tmp_path: Path) -> None:
    import gc

    from tmo_graph import conversation

    graph = _graph(tmp_path, StreamingLocal("sure thing", -0.05))
    running = stream_turn(graph, QUESTION, "held", Context(policy="always-local"))
    next(running)  # a turn in progress holds its thread's lock
    assert "held" in conversation._locks
    with pytest.raises(ThreadBusy):
        list(stream_turn(graph, QUESTION, "held", Context(policy="always-local"), wait_s=0.1))
    list(running)
    for n in range(200):  # a server makes a new thread id for every new chat
        list(stream_turn(graph, QUESTION, f"chat-{n}", Context(policy="always-local")))
    gc.collect()
    assert len(conversation._locks) == 0
