"""A turn as a surface runs it: final tokens only, the record at the end, one turn per thread;
and the one rule of which messages a turn sends (:func:`new_messages`)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeLocal, fake_services
from tests.unit_tests.test_graph_core import StreamingLocal
from tmo_graph.context import Context
from tmo_graph.conversation import (
    Done,
    Step,
    ThreadBusy,
    Token,
    astream_turn,
    new_messages,
    stream_turn,
    watch_turn,
)
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


def test_watching_an_escalated_turn_shows_the_draft_the_nodes_then_the_clouds_answer(
    tmp_path: Path,
) -> None:
    graph = _graph(tmp_path, StreamingLocal("meh dunno", -3.0))
    events = list(watch_turn(graph, QUESTION, "w1", Context(policy="cascade")))
    steps = [e.node for e in events if isinstance(e, Step)]
    assert steps == [
        "detect_modality",
        "recall_memory",
        "route",
        "answer_local",
        "check_confidence",
        "answer_cloud",
        "account",
    ]
    tokens = [e for e in events if isinstance(e, Token)]
    drafts = [t.text for t in tokens if t.draft]
    final = [t.text for t in tokens if not t.draft]
    assert "".join(drafts) == "meh dunno" and len(drafts) > 1  # word by word, as made
    assert "".join(final) == "the pan heats itself"
    # The draft streams while the device answers, before the cloud is asked.
    order = [("step", e.node) if isinstance(e, Step) else ("draft", e.draft) for e in events[:-1]]
    assert order.index(("draft", True)) < order.index(("step", "check_confidence"))
    assert order.index(("step", "answer_cloud")) < order.index(("draft", False))
    assert isinstance(events[-1], Done) and events[-1].record["escalated"]


def test_a_kept_draft_is_given_again_as_the_final_answer(tmp_path: Path) -> None:
    graph = _graph(tmp_path, StreamingLocal("sure thing", -0.05))
    events = list(watch_turn(graph, QUESTION, "w2", Context(policy="cascade"), steps=False))
    assert not any(isinstance(e, Step) for e in events)
    tokens = [e for e in events if isinstance(e, Token)]
    assert "".join(t.text for t in tokens if t.draft) == "sure thing"
    assert "".join(t.text for t in tokens if not t.draft) == "sure thing"
    assert tokens[-1].draft is False  # the final tokens come after the draft's
    assert isinstance(events[-1], Done) and events[-1].record["route"] == "local"


def test_other_surfaces_never_get_drafts_or_steps(tmp_path: Path) -> None:
    graph = _graph(tmp_path, StreamingLocal("meh dunno", -3.0))
    events = list(stream_turn(graph, QUESTION, "w3", Context(policy="cascade")))
    assert all(isinstance(e, Done) or (isinstance(e, Token) and not e.draft) for e in events)


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


# --- the history rule: strict (the chat model) ----------------------------------------------------


def test_new_messages_are_those_after_the_threads_last_message() -> None:
    stored: list[BaseMessage] = [
        SystemMessage("be brief", id="s"),
        HumanMessage("hi", id="1"),
        AIMessage("hello", id="2"),
    ]
    full = [SystemMessage("be brief"), HumanMessage("hi"), AIMessage("hello"), HumanMessage("hi")]
    assert [m.content for m in new_messages(full, stored)] == ["hi"]
    # Matched by id even when the text differs (e.g. a reply the caller reformatted).
    by_id = [HumanMessage("hi"), AIMessage("Hello!", id="2"), HumanMessage("bye")]
    assert [m.content for m in new_messages(by_id, stored)] == ["bye"]
    # Only the new question, as a chat UI relying on the thread sends it.
    assert [m.content for m in new_messages([HumanMessage("bye")], stored)] == ["bye"]
    # A changed persona is sent; an unchanged one is not.
    changed = [SystemMessage("be funny"), *full]
    assert [m.content for m in new_messages(changed, stored)] == ["be funny", "hi"]
    # An empty thread takes everything.
    assert len(new_messages(full, [])) == 4


def test_a_history_that_is_not_the_threads_is_refused() -> None:
    stored: list[BaseMessage] = [HumanMessage("hi", id="1"), AIMessage("hello", id="2")]
    other = [HumanMessage("hi"), AIMessage("something else"), HumanMessage("and?")]
    with pytest.raises(TmoGraphError, match="not this thread's"):
        new_messages(other, stored)


def test_a_question_the_thread_already_holds_is_refused() -> None:
    stored: list[BaseMessage] = [HumanMessage("hi", id="1")]
    with pytest.raises(TmoGraphError, match="already holds this question"):
        new_messages([HumanMessage("hi", id="1")], stored)


# --- the history rule: lenient (the server: OpenAI clients resend the chat without ids) ------


def _texts(messages: list[BaseMessage]) -> list[tuple[str, object]]:
    return [(m.type, m.content) for m in messages]


def test_lenient_a_resent_chat_sends_what_follows_the_threads_last_answer() -> None:
    stored: list[BaseMessage] = [
        SystemMessage("be brief", id="tmo-system"),
        HumanMessage("hi", id="1"),
        AIMessage("hello", id="2"),
    ]
    chat = [SystemMessage("be brief"), HumanMessage("hi"), AIMessage("hello"), HumanMessage("so?")]
    assert _texts(new_messages(chat, stored, strict=False)) == [("human", "so?")]
    # Only the new question, as a client relying on the thread sends it.
    assert _texts(new_messages([HumanMessage("so?")], stored, strict=False)) == [("human", "so?")]
    # An empty thread takes the whole chat.
    assert len(new_messages(chat, [], strict=False)) == 4


def test_lenient_an_answer_the_client_reformatted_is_not_an_error() -> None:
    """The thread's last answer is not in the chat (the client showed it trimmed, rendered or
    edited): the user messages after the chat's last answer are new, as the server always did."""
    stored: list[BaseMessage] = [HumanMessage("hi", id="1"), AIMessage("**hello**", id="2")]
    chat = [HumanMessage("hi"), AIMessage("hello"), HumanMessage("two"), HumanMessage("three")]
    with pytest.raises(TmoGraphError, match="not this thread's"):
        new_messages(chat, stored)
    assert _texts(new_messages(chat, stored, strict=False)) == [
        ("human", "two"),
        ("human", "three"),
    ]


def test_lenient_a_question_whose_turn_never_ended_can_be_sent_again() -> None:
    """The thread ends with a question (its turn failed, or still runs): a client retrying it,
    or asking the same words again, is answered, not refused."""
    stored: list[BaseMessage] = [
        HumanMessage("hi", id="1"),
        AIMessage("hello", id="2"),
        HumanMessage("two", id="3"),
    ]
    retry = [HumanMessage("hi"), AIMessage("hello"), HumanMessage("two")]
    with pytest.raises(TmoGraphError, match="already holds this question"):
        new_messages(retry, stored)
    assert _texts(new_messages(retry, stored, strict=False)) == [("human", "two")]
    assert _texts(new_messages([HumanMessage("two")], stored[2:], strict=False)) == [
        ("human", "two")
    ]


def test_lenient_a_persona_is_sent_once_and_again_when_changed() -> None:
    stored: list[BaseMessage] = [
        SystemMessage("be brief", id="tmo-system"),
        HumanMessage("hi", id="1"),
        AIMessage("hello", id="2"),
    ]
    same = [SystemMessage("be brief", id="tmo-system"), HumanMessage("so?")]
    assert _texts(new_messages(same, stored, strict=False)) == [("human", "so?")]
    changed = [SystemMessage("be funny", id="tmo-system"), HumanMessage("so?")]
    sent = new_messages(changed, stored, strict=False)
    assert _texts(sent) == [("system", "be funny"), ("human", "so?")]
    assert sent[0].id == "tmo-system"  # replaces the thread's persona (add_messages, by id)


@pytest.mark.parametrize("strict", [True, False])
def test_both_rules_refuse_what_is_no_question(strict: bool) -> None:
    with pytest.raises(TmoGraphError, match="no messages were given"):
        new_messages([], [], strict=strict)
    with pytest.raises(TmoGraphError, match="not the user's"):
        new_messages([HumanMessage("hi"), AIMessage("hello")], [], strict=strict)
