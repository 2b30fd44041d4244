"""One turn of the graph as a surface runs it (the chat model, the server): the final answer's
tokens as they come, never a draft that was replaced, then the turn record; one turn per
thread at a time.

The graph hides from a chat UI's ``messages`` stream the tokens that are not yet the final
answer (LangGraph's ``nostream`` tag); this surface asks for them
(``tmo_graph.state.STREAM_HIDDEN``) and handles them itself. A local draft that the
confidence check may still replace is tagged ``draft`` (``tmo_graph.state.DRAFT_TAG``);
everything else the answer nodes' models stream is the final answer. Draft tokens are held
back: when the check keeps the draft, they are released once the turn is decided, so a
caller sees only what stays.

A cloud answer streams with the placeholders of the personal data kept from the cloud
(``[EMAIL_1]``); the route node sends the turn's placeholder map as a ``custom`` stream event
and the tokens are shown with the values put back (:class:`tmo_graph.guards.privacy.StreamRestorer`:
a piece that may still become a placeholder is held back until it is complete).

A turn a crash cut short (killed mid-turn: its question is stored, its checkpoint still has
nodes to run) is completed first, before the next question, so it is answered and recorded
once and never sent again as a stray message of a later turn.

Two turns sent at once to one thread would race for the thread's state, so a turn waits for
the one before it (up to ``wait_s``) and is refused with :class:`ThreadBusy` after that: it
is never silently lost. The lock is per process; workers sharing a database need their own.

A surface that shows the turn as it happens (the terminal chat) asks for more: ``drafts=True``
gives the draft's tokens as they come, marked :attr:`Token.draft` (the final answer's first
token then replaces them: the cloud's, or the kept draft's released again), and
:func:`watch_turn` also a :class:`Step` as each node starts (from LangGraph's ``tasks``
stream), so it can say what is happening while the router decides.

Which of a caller's messages a turn sends is one rule for every surface: :func:`new_messages`.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.guards.privacy import PLACEHOLDERS_EVENT, StreamRestorer, is_private
from tmo_graph.prompts import message_text
from tmo_graph.state import DRAFT_TAG, STREAM_HIDDEN, TurnRecord

# Nodes whose model calls stream the answer; anything else (e.g. a summary) is not shown.
ANSWER_NODES = frozenset({"answer_local", "answer_cloud"})


class ThreadBusy(TmoGraphError):
    """Another turn of the same thread is still running."""


@dataclass(frozen=True)
class Token:
    """A piece of the final answer, as it streams; ``draft``: a piece of a local draft the
    confidence check may still replace (only to a caller that asked for drafts)."""

    text: str
    draft: bool = False


@dataclass(frozen=True)
class Step:
    """A node of the graph has started (:func:`watch_turn`): ``node`` is its name."""

    node: str


@dataclass(frozen=True)
class Done:
    """The turn is over: its record and the whole state; ``resumed`` is the record of an
    earlier turn a crash had cut short, completed before this one."""

    record: TurnRecord
    state: dict[str, Any]
    resumed: TurnRecord | None = None


class _ThreadLock:
    """One thread id's lock. The registry holds it weakly: a server makes a new thread id
    for every new chat, and a lock is needed only while a turn holds it or waits for it."""

    __slots__ = ("lock", "__weakref__")

    def __init__(self) -> None:
        self.lock = threading.Lock()


_locks: weakref.WeakValueDictionary[str, _ThreadLock] = weakref.WeakValueDictionary()
_locks_guard = threading.Lock()


def turn_summary(record: TurnRecord, thread_id: str) -> dict[str, Any]:
    """What a surface reports about a finished turn (the chat model's response_metadata, the
    server's ``tmo`` field)."""
    summary = {
        "thread_id": thread_id,
        "turn": record["turn"],
        "policy": record["policy"],
        "task": record["task"],
        "route": record["route"],
        "views_sent": list(record["views_sent"]),
        "confidence": record["confidence"],
        "escalated": record["escalated"],
        "fallback": record["fallback"],
        "latency_s": record["latency_s"],
        "cost_usd": record["cost_usd"],
        "budget_left": dict(record["budget_left"]),
    }
    if "audio_sent" in record:  # a turn with audio clips
        summary["audio_sent"] = list(record["audio_sent"])
        summary["transcripts"] = dict(record.get("transcripts", {}))
    return summary


def _text(message: BaseMessage) -> str:
    return message_text(cast(AnyMessage, message)).strip()


def _same(a: BaseMessage, b: BaseMessage) -> bool:
    """One message of the dialogue: the same id, or else the same role and text."""
    if a.id and b.id and a.id == b.id:
        return True
    return a.type == b.type and _text(a) == _text(b) and _calls(a) == _calls(b)


def _calls(message: BaseMessage) -> list[tuple[str, str]]:
    """What an answer's tool calls or a tool result name: an answer that called tools may
    have no text, so its calls tell it from another."""
    if isinstance(message, AIMessage):
        return [
            (c["name"], repr(sorted((c.get("args") or {}).items()))) for c in message.tool_calls
        ]
    if isinstance(message, ToolMessage):
        return [("result", message.tool_call_id)]
    return []


def _last_index(
    messages: Sequence[BaseMessage], found: Callable[[BaseMessage], bool]
) -> int | None:
    """The index of the last of ``messages`` for which ``found(message)`` holds, or None."""
    return next((i for i in range(len(messages) - 1, -1, -1) if found(messages[i])), None)


def new_messages(
    incoming: Sequence[BaseMessage], stored: Sequence[BaseMessage], *, strict: bool = True
) -> list[BaseMessage]:
    """The messages of a call the thread does not hold yet: the history rule of every surface.

    ``incoming`` is what the caller sends this turn (the whole chat, or only what is new),
    ``stored`` the thread's messages. The thread already holds the dialogue, so:

    1. an empty thread takes all of ``incoming``;
    2. otherwise the thread's *anchor* is looked up in ``incoming``, from the end, by id or
       else by role and text: only the messages after it are new. A caller passing the whole
       history sends just the new question; one passing only the new question sends it;
    3. ``incoming`` without the anchor but without AI answers either is all new (the caller
       sends only the new messages). With AI answers it is another history than the thread's:
       refused when ``strict``; otherwise the messages after its last answer are new;
    4. a system message whose text the thread already has is not sent again (a prompt
       template or an OpenAI client repeats the persona every call); a changed one is;
    5. something must be left to answer: ``incoming`` ends with the user's (human) message,
       or with the results (``ToolMessage``) of the tools the last answer called: an agent's
       next call. An answer that called tools is told from another by its calls.

    ``strict`` (the chat model, whose callers pass LangChain messages that keep their ids):
    the anchor is the thread's last message, and a foreign history is an error.
    ``strict=False`` (the server: OpenAI clients carry no message ids, may reformat an
    answer they show, and retry a question whose turn failed or is still running): the
    anchor is the thread's last *answer*, and a history without it is taken as the
    thread's own, as the client last saw it; nothing is refused that has a question last.

    Returns messages of ``incoming`` (the same objects), the new system messages first.
    Raises :class:`TmoGraphError` naming what is wrong and how to fix it.
    """
    if not incoming:
        raise TmoGraphError("no messages were given", "pass at least the user's question")
    if not isinstance(incoming[-1], HumanMessage | ToolMessage):
        raise TmoGraphError(
            f"the last message is a {incoming[-1].type!r} message, not the user's",
            "end the messages with a HumanMessage (the question this turn answers) or with "
            "the ToolMessages answering the last answer's tool calls",
        )
    for message in incoming:
        if message.type not in {"human", "ai", "system", "tool"}:
            raise TmoGraphError(
                f"a {message.type!r} message cannot be sent to the router",
                "send only system, human, AI and tool messages",
            )
    said = [m for m in stored if not isinstance(m, SystemMessage)]
    head: Sequence[BaseMessage] = []
    tail: Sequence[BaseMessage] = incoming
    if said:
        answers = [m for m in said if isinstance(m, AIMessage)]
        anchor = said[-1] if strict else (answers[-1] if answers else None)
        at = _last_index(incoming, lambda m: anchor is not None and _same(m, anchor))
        last_answer = _last_index(incoming, lambda m: isinstance(m, AIMessage))
        if at is None and last_answer is not None:
            if strict:
                raise TmoGraphError(
                    "the messages carry a history that is not this thread's (its last answer "
                    "is not among them)",
                    "pass the thread's history as it was answered, only the new messages, or "
                    "another thread_id",
                )
            at = last_answer
        if at is not None:
            head, tail = incoming[: at + 1], incoming[at + 1 :]
    # The thread keeps each persona once, however often the caller repeats it.
    known = {_text(m) for m in stored if isinstance(m, SystemMessage)}
    persona: list[BaseMessage] = []
    for message in [*head, *tail]:
        text = _text(message)
        if isinstance(message, SystemMessage) and text not in known:
            known.add(text)
            persona.append(message)
    rest = [m for m in tail if not isinstance(m, SystemMessage)]
    if not any(isinstance(m, HumanMessage | ToolMessage) for m in rest):
        raise TmoGraphError(
            "the thread already holds this question (nothing new to answer)",
            "add the new question, or use another thread_id",
        )
    return [*persona, *rest]


def _thread_lock(thread_id: str) -> _ThreadLock:
    with _locks_guard:
        entry = _locks.get(thread_id)
        if entry is None:
            entry = _locks[thread_id] = _ThreadLock()
        return entry


def _busy(thread_id: str, wait_s: float) -> ThreadBusy:
    return ThreadBusy(
        f"thread {thread_id!r} is still answering another turn (waited {wait_s:g} s)",
        "send one turn at a time per thread, or retry when the previous answer has arrived",
    )


class _Turn:
    """What one turn has streamed so far: tokens shown, draft tokens held back, the state."""

    def __init__(self, drafts: bool = False) -> None:
        self.show_drafts = drafts  # also yield draft tokens (marked), besides holding them
        self.shown: list[str] = []
        self.drafts: list[str] = []
        self.values: dict[str, Any] = {}
        self.restorer: StreamRestorer | None = None  # the cloud answer's placeholders

    def _show(self, text: str) -> Token | None:
        self.shown.append(text)
        return Token(text) if text else None

    def _flush(self) -> Token | None:
        """What the restorer still holds (the cloud call is over)."""
        return self._show(self.restorer.flush()) if self.restorer is not None else None

    def on(self, mode: str, payload: Any) -> Token | Step | None:
        """A streamed event (``messages``, ``values``, ``custom`` or ``tasks``); the token to
        show now or the node that started, if any."""
        if mode == "tasks":  # a task's start carries its input, its end its result
            is_start = isinstance(payload, dict) and "input" in payload
            return Step(str(payload["name"])) if is_start else None
        if mode == "custom":
            if isinstance(payload, dict) and PLACEHOLDERS_EVENT in payload:
                self.restorer = StreamRestorer(payload[PLACEHOLDERS_EVENT])
            return None
        if mode == "values":
            self.values = payload
            return self._flush()  # a step ended: no placeholder spans two steps
        chunk, meta = payload
        content = getattr(chunk, "content", "")
        node = meta.get("langgraph_node")
        if node not in ANSWER_NODES or not isinstance(content, str):
            return None
        if DRAFT_TAG in (meta.get("tags") or []):
            self.drafts.append(content)
            return Token(content, draft=True) if self.show_drafts and content else None
        if node == "answer_cloud" and self.restorer is not None:
            content = self.restorer.feed(content)
        return self._show(content)

    def end(self, resumed: TurnRecord | None = None) -> list[Token | Done]:
        """The tokens still to show when the turn ends (a kept draft), then :class:`Done`."""
        held = self._flush()
        turns = self.values.get("turns") or []
        if not turns:
            raise TmoGraphError("the graph ended without a turn record", "check the graph's nodes")
        record: TurnRecord = turns[-1]
        answer = record["answer"].strip()
        rest: list[str] = []
        if "".join(self.shown).strip() != answer:
            # The answer is a kept draft: release its tokens as they were generated.
            rest = self.drafts if "".join(self.drafts).strip() == answer else [answer]
        first = [held] if held is not None else []
        return [*first, *(Token(t) for t in rest if t), Done(record, self.values, resumed)]


STREAM_MODES = ["messages", "values", "custom"]


def _modes(steps: bool) -> list[str]:
    """The stream modes a turn asks for; ``tasks`` (each node's start) only when shown."""
    return [*STREAM_MODES, "tasks"] if steps else STREAM_MODES


# Each step's checkpoint is written before the next step runs: a crash mid-turn leaves the
# question (and what was done) on disk, so the turn is completed on resume, not lost
# (LangGraph's default writes checkpoints in the background, which a SIGKILL can outrun).
def _durable(graph: Any) -> dict[str, Any]:
    # Only with a checkpointer: LangGraph fails on "sync" without one (there is nothing to save).
    return {"durability": "sync"} if getattr(graph, "checkpointer", None) is not None else {}


def _interrupted(graph: Any, config: dict[str, Any]) -> bool:
    """Whether the thread's last turn was cut short: its checkpoint has nodes left to run."""
    return graph.checkpointer is not None and bool(graph.get_state(config).next)


def finish_interrupted(
    graph: Any, config: dict[str, Any], context: Context | None = None
) -> TurnRecord | None:
    """Complete a turn a crash cut short (LangGraph resumes it from its last checkpoint);
    its record, or None when the thread has no such turn."""
    if not _interrupted(graph, config):
        return None
    record: TurnRecord = graph.invoke(None, config, context=context)["turns"][-1]
    return record


async def afinish_interrupted(
    graph: Any, config: dict[str, Any], context: Context | None = None
) -> TurnRecord | None:
    """:func:`finish_interrupted` for async callers."""
    if graph.checkpointer is None or not (await graph.aget_state(config)).next:
        return None
    record: TurnRecord = (await graph.ainvoke(None, config, context=context))["turns"][-1]
    return record


def _config(thread_id: str, inputs: dict[str, Any]) -> dict[str, Any]:
    if not thread_id:
        raise TmoGraphError("thread_id is empty", "pass the id of the conversation's thread")
    # A malformed private flag fails here, before the thread stores the message.
    messages = inputs.get("messages") if isinstance(inputs, dict) else None
    for message in messages or []:
        if isinstance(message, BaseMessage):
            is_private(message)
    # This surface holds drafts back and puts placeholders back itself: it asks for the
    # tokens the graph hides from a chat UI's stream (tagged, see the module docstring).
    return {"configurable": {"thread_id": thread_id, STREAM_HIDDEN: True}}


def stream_turn(
    graph: Any,
    inputs: dict[str, Any],
    thread_id: str,
    context: Context | None = None,
    wait_s: float = 30.0,
    drafts: bool = False,
) -> Iterator[Token | Done]:
    """Run one turn: :class:`Token`s of the final answer as they come, then :class:`Done`
    (with ``drafts``, also the draft's tokens as they come)."""
    for event in watch_turn(graph, inputs, thread_id, context, wait_s, drafts=drafts, steps=False):
        if not isinstance(event, Step):
            yield event


def watch_turn(
    graph: Any,
    inputs: dict[str, Any],
    thread_id: str,
    context: Context | None = None,
    wait_s: float = 30.0,
    *,
    drafts: bool = True,
    steps: bool = True,
) -> Iterator[Token | Step | Done]:
    """:func:`stream_turn` for a surface that shows the turn as it happens: the draft's
    tokens as they come and a :class:`Step` as each node starts (each unless turned off)."""
    config = _config(thread_id, inputs)
    held = _thread_lock(thread_id)  # referenced until the turn ends, so the lock stays shared
    if not held.lock.acquire(timeout=wait_s):
        raise _busy(thread_id, wait_s)
    try:
        resumed = finish_interrupted(graph, config, context)
        turn = _Turn(drafts)
        for mode, payload in graph.stream(
            inputs, config, context=context, stream_mode=_modes(steps), **_durable(graph)
        ):
            if event := turn.on(mode, payload):
                yield event
        yield from turn.end(resumed)
    finally:
        held.lock.release()


async def astream_turn(
    graph: Any,
    inputs: dict[str, Any],
    thread_id: str,
    context: Context | None = None,
    wait_s: float = 30.0,
    drafts: bool = False,
) -> AsyncIterator[Token | Done]:
    """:func:`stream_turn` for async callers (the event loop is never blocked by the wait).
    ``drafts``: also yield a local draft's tokens as they come, marked ``draft`` (the final
    answer's tokens follow unmarked, a kept draft's again), for a UI that greys them."""
    config = _config(thread_id, inputs)
    held = _thread_lock(thread_id)
    if not await asyncio.to_thread(held.lock.acquire, True, wait_s):
        raise _busy(thread_id, wait_s)
    try:
        resumed = await afinish_interrupted(graph, config, context)
        turn = _Turn(drafts)
        events = graph.astream(
            inputs, config, context=context, stream_mode=STREAM_MODES, **_durable(graph)
        )
        async for mode, payload in events:
            if isinstance(token := turn.on(mode, payload), Token):
                yield token
        for event in turn.end(resumed):
            yield event
    finally:
        held.lock.release()
