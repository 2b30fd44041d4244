"""recall_memory: move turns beyond the recent window to memory; recall relevant old ones.

A private turn (its user message marked ``additional_kwargs={"private": True}``) leaves the
window like any other but is not stored: it can never be recalled, into a cloud request or
anywhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, RemoveMessage, ToolMessage
from langgraph.config import get_config

from tmo_graph.context import Context
from tmo_graph.guards.privacy import find_personal
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
    update: dict[str, Any] = {}
    overflow = len(turns) - context.recent_turns
    if overflow > 0:
        old = turns[:overflow]
        first_index = state.turn_count - len(turns)
        # What may be stored: no private message, no answer to one.
        shared = [(first_index + i, shared_messages(turn)) for i, turn in enumerate(old)]
        kept = [(index, turn) for index, turn in shared if turn]
        texts = [turn_text(turn) for _, turn in kept]
        if texts:
            services.memory.add(
                user_id=context.user_id,
                thread_id=thread_id,
                turns=[index for index, _ in kept],
                texts=texts,
                vectors=services.embeddings.embed_documents(texts),
            )
        update["messages"] = [RemoveMessage(id=m.id) for turn in old for m in turn if m.id]
        # What revealed a value leaves the window now: remember the value for redaction.
        kinds = services.settings.privacy.redact
        found = {
            f.value: f.kind
            for turn in old
            for message in turn
            for f in find_personal(message_text(message), kinds)
        }
        if found:
            update["personal"] = found
    update["recalled"] = services.memory.search(
        user_id=context.user_id,
        vector=services.embed(state.prompt),
        k=context.recall_k,
        min_score=context.min_recall_score,
        # By default a dialogue recalls only itself: what a user said in one dialogue does not
        # reach another (and its cloud calls) unless recall_scope is "user".
        thread_id=thread_id if context.recall_scope == "thread" else None,
    )
    return update
