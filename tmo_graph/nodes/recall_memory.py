"""recall_memory: store each turn that leaves the recent window in the memory store, once;
recall relevant old ones.

``messages`` keeps the whole dialogue (what a chat UI shows); the memory is what the models
are given of turns beyond the window. ``remembered_turns`` in the state counts the turns
already moved, so each is stored once however many later turns run. The store is the run's
(``runtime.store``: the compiled graph's, or a LangGraph server's), reached as
``services.memory``. A private turn (its user message marked
``additional_kwargs={"private": True}``) leaves the window like any other but is not
stored: it can never be recalled, into a cloud request or anywhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langgraph.config import get_config

from tmo_graph.context import Context
from tmo_graph.guards.privacy import find_personal
from tmo_graph.memory.recall import recall, remember
from tmo_graph.policy.confidence import degenerate_text
from tmo_graph.prompts import (
    LEFT_OUT_ANSWER,
    completed_turns,
    message_text,
    shared_messages,
    tool_call_text,
    tool_result_text,
)
from tmo_graph.services import Services
from tmo_graph.state import State


def turn_text(turn: Sequence[AnyMessage]) -> str:
    """A finished turn as stored for recall; a looping answer is stored as a placeholder, as
    the prompts show it (recalled text goes into later prompts too)."""
    lines = []
    for message in turn:
        if isinstance(message, HumanMessage):
            lines.append(f"User: {message_text(message)}")
        elif isinstance(message, ToolMessage):
            lines.append(tool_result_text(message))
        elif isinstance(message, AIMessage) and message.tool_calls:
            said = [message_text(message), *(tool_call_text(c) for c in message.tool_calls)]
            lines.append(f"Assistant: {' '.join(p for p in said if p)}")
        else:
            text = message_text(message)
            lines.append(f"Assistant: {LEFT_OUT_ANSWER if degenerate_text(text) else text}")
    return "\n".join(lines)


def recall_memory(state: State, context: Context, services: Services) -> dict[str, Any]:
    thread_id = str(get_config().get("configurable", {}).get("thread_id", "default"))
    turns = completed_turns(state.messages)
    # Turns are numbered from the dialogue's first; a history a caller sent whole into a new
    # thread numbers below 0 (its turns were not answered here).
    first_number = state.turn_count - len(turns)
    # The finished turns beyond the window not yet moved to memory (positions in ``turns``).
    start, stop = state.remembered_turns, len(turns) - context.recent_turns
    update: dict[str, Any] = {}
    if stop > start:
        leaving = turns[start:stop]
        # What may be stored: no private message, no answer to one.
        shared = [
            (first_number + start + i, shared_messages(turn)) for i, turn in enumerate(leaving)
        ]
        remember(
            services.memory,
            user_id=context.user_id,
            thread_id=thread_id,
            turns=[(number, turn_text(turn)) for number, turn in shared if turn],
        )
        update["remembered_turns"] = stop
        # What revealed a value leaves the window now: remember the value for redaction.
        kinds = services.settings.privacy.redact
        found = {
            f.value: f.kind
            for turn in leaving
            for message in turn
            for f in find_personal(message_text(message), kinds)
        }
        if found:
            update["personal"] = found
    update["recalled"] = recall(
        services.memory,
        user_id=context.user_id,
        query=state.prompt,
        k=context.recall_k,
        min_score=context.min_recall_score,
        # By default a dialogue recalls only itself: what a user said in one dialogue does not
        # reach another (and its cloud calls) unless recall_scope is "user".
        thread_id=thread_id if context.recall_scope == "thread" else None,
    )
    return update
