"""The messages each model sees: system prompt, recalled memory, recent turns, this turn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage

from tmo_graph.state import Candidate, Recalled

SYSTEM_PROMPT = (
    "You are a helpful home and kitchen assistant running on the user's device. "
    "Answer briefly and directly."
)


def message_text(message: AnyMessage) -> str:
    """The text of a message; image parts become a short placeholder."""
    content = message.content
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict):
            parts.append("[image]")
    return " ".join(p for p in parts if p).strip()


def system_text(recalled: Sequence[Recalled]) -> str:
    if not recalled:
        return SYSTEM_PROMPT
    memory = "\n".join(f"- {item['text']}" for item in recalled)
    return f"{SYSTEM_PROMPT}\n\nRelevant earlier conversation:\n{memory}"


def text_dialogue(
    messages: Sequence[AnyMessage], recalled: Sequence[Recalled]
) -> list[dict[str, str]]:
    """The dialogue as plain role/content dicts (what the local model and its scorer see)."""
    out = [{"role": "system", "content": system_text(recalled)}]
    for message in messages:
        if isinstance(message, HumanMessage):
            out.append({"role": "user", "content": message_text(message)})
        elif isinstance(message, AIMessage):
            out.append({"role": "assistant", "content": message_text(message)})
    return out


def as_langchain(dialogue: Sequence[dict[str, str]]) -> list[AnyMessage]:
    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [kinds[m["role"]](content=m["content"]) for m in dialogue]


def cloud_messages(
    messages: Sequence[AnyMessage],
    recalled: Sequence[Recalled],
    prompt: str,
    views: Sequence[Candidate],
) -> list[AnyMessage]:
    """Text history, then this turn's prompt with only the chosen views as ``image_url`` parts."""
    history = as_langchain(text_dialogue(messages[:-1], recalled))
    content: list[Any] = [{"type": "text", "text": prompt}]
    for view in views:
        label = "Attached image" if view["kind"] == "inline" else f"Camera view '{view['name']}'"
        content.append({"type": "text", "text": f"{label}:"})
        content.append({"type": "image_url", "image_url": {"url": view["url"], "detail": "low"}})
    return [*history, HumanMessage(content=content)]
