"""The messages each model sees: system prompt, recalled memory, recent turns, this turn."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage

from tmo_graph.state import Recalled


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


def system_prompt(messages: Sequence[AnyMessage], default: str) -> str:
    """The caller's own system message(s), if the dialogue has any, else ``default``."""
    own = [message_text(m) for m in messages if isinstance(m, SystemMessage)]
    own = [text for text in own if text]
    return "\n\n".join(own) if own else default


def system_text(persona: str, recalled: Sequence[Recalled]) -> str:
    if not recalled:
        return persona
    memory = "\n".join(f"- {item['text']}" for item in recalled)
    return f"{persona}\n\nRelevant earlier conversation:\n{memory}"


def text_dialogue(
    messages: Sequence[AnyMessage], recalled: Sequence[Recalled], persona: str
) -> list[dict[str, str]]:
    """The dialogue as plain role/content dicts (what the local model and its scorer see).

    ``persona`` is the system prompt unless the messages carry their own system message.
    """
    out = [{"role": "system", "content": system_text(system_prompt(messages, persona), recalled)}]
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
    persona: str,
    prompt: str,
    images: Sequence[tuple[str, str]],
    detail: str = "low",
    scrub: Callable[[str], str] = str,
) -> list[AnyMessage]:
    """Text history, then this turn's prompt with only the chosen images as ``image_url``
    parts; ``images`` are (label, URL) pairs, the URL already made for sending. Every text
    (persona, recalled memory, history, prompt) goes through ``scrub`` first (redaction)."""
    dialogue = text_dialogue(messages[:-1], recalled, system_prompt(messages, persona))
    history = as_langchain([{**m, "content": scrub(m["content"])} for m in dialogue])
    content: list[Any] = [{"type": "text", "text": scrub(prompt)}]
    for label, url in images:
        content.append({"type": "text", "text": f"{label}:"})
        content.append({"type": "image_url", "image_url": {"url": url, "detail": detail}})
    return [*history, HumanMessage(content=content)]
