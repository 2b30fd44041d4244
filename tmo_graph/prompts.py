"""The messages each model sees: system prompt, recalled memory, recent turns, this turn.

The thread keeps the whole dialogue (what a chat UI shows); a model reads only its recent
window (:func:`recent_window`: the last ``recent_turns`` finished turns, the current question
with its tool calls and results, and the caller's system messages), and older turns only as
recalled memory. The device model sees the whole window; a cloud request leaves out every
private message (``additional_kwargs={"private": True}``) and the answers that followed it.

Tool calling: an answer that called tools and the tools' results (``ToolMessage``) go to the
cloud in OpenAI's shape (an assistant message with ``tool_calls``, ``tool`` messages), every
text redacted like the rest; the device model, which cannot call tools, reads them as text
(the calls in the assistant's turn, the results as the user's next message).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langgraph.config import get_config
from langgraph.constants import TAG_NOSTREAM

from tmo_graph.errors import TmoGraphError

# LEFT_OUT_ANSWER lives in confidence.py, whose echo guard also knows it; used here too.
from tmo_graph.policy.confidence import LEFT_OUT_ANSWER, degenerate_text
from tmo_graph.state import STREAM_HIDDEN, Recalled, State

# The ``additional_kwargs`` key that marks a message private: it never goes to the cloud.
PRIVATE = "private"


# Content blocks that carry an audio clip (LangChain's, OpenAI's).
AUDIO_BLOCKS = ("audio", "input_audio")
# Where the graph keeps a stored clip's device transcript in its content block.
TRANSCRIPT_KEY = "transcript"


def voice_note_text(block: dict[str, Any]) -> str:
    """How a voice note reads as text: its device transcript, quoted, when it has one."""
    extras = block.get("extras")
    words = extras.get(TRANSCRIPT_KEY) if isinstance(extras, dict) else None
    return f'[voice note: "{words}"]' if words else "[voice note]"


def message_text(message: AnyMessage, voice_notes: bool = True) -> str:
    """The text of a message; image parts become a short placeholder, voice notes their
    transcript (:func:`voice_note_text`; left out with ``voice_notes=False``)."""
    content = message.content
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") in AUDIO_BLOCKS:
            if voice_notes:
                parts.append(voice_note_text(block))
        elif isinstance(block, dict):
            parts.append("[image]")
    return " ".join(p for p in parts if p).strip()


def is_private(message: BaseMessage) -> bool:
    """Whether ``message`` is marked private (``additional_kwargs={"private": True}``)."""
    if not isinstance(message, BaseMessage):
        raise TmoGraphError(
            f"expected a LangChain message, got {type(message).__name__}",
            "pass a HumanMessage / AIMessage (e.g. from the thread's messages)",
        )
    flag = message.additional_kwargs.get(PRIVATE, False)
    if not isinstance(flag, bool):
        raise TmoGraphError(
            f"a message's additional_kwargs['private'] must be True or False (got {flag!r:.60})",
            'mark a private message with HumanMessage(content=..., additional_kwargs={"private": '
            "True}), a Python bool, not a string",
        )
    return flag


def shared_messages(messages: Sequence[AnyMessage]) -> list[AnyMessage]:
    """``messages`` without the private ones and the answers that followed a private user
    message (up to the next user message): what a cloud request may carry. System messages
    (the persona) belong to no turn and are kept."""
    out: list[AnyMessage] = []
    hidden_turn = False
    for message in messages:
        if isinstance(message, SystemMessage):
            out.append(message)
        elif isinstance(message, HumanMessage):
            hidden_turn = is_private(message)
            if not hidden_turn:
                out.append(message)
        elif not hidden_turn and not is_private(message):
            out.append(message)
    return out


def completed_turns(messages: Sequence[AnyMessage]) -> list[list[AnyMessage]]:
    """Messages grouped into finished turns (a human message and its answers), oldest first.

    The current question (the last human message) and what follows it (this turn's tool
    calls and results) are not part of any finished turn, and system messages (the caller's
    persona) belong to no turn: they stay in the dialogue. Tool results go with the answer
    that called the tools, so a turn leaves the window whole (a result without its call is
    a request no endpoint takes).
    """
    asked = max(
        (i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=len(messages)
    )
    turns: list[list[AnyMessage]] = []
    for message in messages[:asked]:
        if not isinstance(message, HumanMessage | AIMessage | ToolMessage):
            continue
        if isinstance(message, HumanMessage) or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return turns


def recent_window(messages: Sequence[AnyMessage], recent_turns: int) -> list[AnyMessage]:
    """What a model reads of the dialogue: the last ``recent_turns`` finished turns (grouped
    as :func:`completed_turns` groups them), the current question with what follows it, and
    every system message, in their order. Older turns reach a model only as recalled memory.

    The thread keeps every message; only the model's input is cut. A dialogue already within
    the window comes back as it is.
    """
    if isinstance(recent_turns, bool) or not isinstance(recent_turns, int) or recent_turns < 0:
        raise TmoGraphError(
            f"recent_turns must be a whole number >= 0, got {recent_turns!r}",
            "set Context(recent_turns=...) to how many finished turns a model reads, e.g. 4",
        )
    turns = completed_turns(messages)
    older = turns[: max(len(turns) - recent_turns, 0)]
    if not older:
        return list(messages)
    left_out = {id(m) for turn in older for m in turn}
    return [m for m in messages if id(m) not in left_out]


def windowed(state: State, recent_turns: int) -> State:
    """``state`` with ``messages`` cut to the models' :func:`recent_window`: what every
    node that builds a model's input (or prices, scores or guards one) reads. Never written
    back: the thread keeps the whole dialogue."""
    window = recent_window(state.messages, recent_turns)
    return state if len(window) == len(state.messages) else replace(state, messages=window)


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


def tool_call_text(call: Any) -> str:
    """How a tool call reads as text (for the device model)."""
    args = json.dumps(call.get("args") or {}, ensure_ascii=False, sort_keys=True)
    return f"[called tool {call.get('name', '?')} with {args}]"


def tool_result_text(message: ToolMessage) -> str:
    """How a tool's result reads as text (for the device model)."""
    name = f" {message.name}" if message.name else ""
    return f"[result of tool{name}: {message_text(message)}]"


def text_dialogue(
    messages: Sequence[AnyMessage],
    recalled: Sequence[Recalled],
    persona: str,
    tool_shape: bool = False,
) -> list[dict[str, Any]]:
    """The dialogue as plain role/content dicts (what the local model, its scorer and the
    cloud see).

    ``persona`` is the system prompt unless the messages carry their own system message.
    An earlier answer that loops or echoes an answer before it (the confidence check's
    guards) is replaced by :data:`LEFT_OUT_ANSWER`: a small model that reads its own loop
    loops again.

    Tool calls and results: with ``tool_shape`` (the cloud) an answer keeps its
    ``tool_calls`` and a result is a ``tool`` entry with its ``tool_call_id``; without it
    (the device model) both are text, the results of one answer's calls joined into one
    user message so that the roles still alternate.
    """
    out: list[dict[str, Any]] = [
        {"role": "system", "content": system_text(system_prompt(messages, persona), recalled)}
    ]
    answers: list[str] = []
    for message in messages:
        if isinstance(message, HumanMessage):
            out.append({"role": "user", "content": message_text(message)})
        elif isinstance(message, AIMessage):
            text = message_text(message)
            calls = list(message.tool_calls)
            if calls and tool_shape:
                out.append({"role": "assistant", "content": text, "tool_calls": calls})
                continue
            if calls:
                text = "\n".join([text, *(tool_call_text(c) for c in calls)]).strip()
            shown = text if calls else (LEFT_OUT_ANSWER if degenerate_text(text, answers) else text)
            answers.append(text)
            out.append({"role": "assistant", "content": shown})
        elif isinstance(message, ToolMessage):
            if tool_shape:
                entry = {"role": "tool", "content": message_text(message)}
                out.append({**entry, "tool_call_id": message.tool_call_id})
            elif out[-1]["role"] == "user" and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + tool_result_text(message)
            else:
                out.append({"role": "user", "content": tool_result_text(message)})
                out[-1]["tool_results"] = True
    return [{k: v for k, v in m.items() if k != "tool_results"} for m in out]


def as_langchain(dialogue: Sequence[dict[str, Any]]) -> list[AnyMessage]:
    out: list[AnyMessage] = []
    for m in dialogue:
        role, content = m["role"], m["content"]
        if role == "tool":
            out.append(ToolMessage(content=content, tool_call_id=m["tool_call_id"]))
        elif role == "assistant":
            out.append(AIMessage(content=content, tool_calls=m.get("tool_calls") or []))
        else:
            out.append(
                SystemMessage(content=content) if role == "system" else HumanMessage(content)
            )
    return out


def question_index(messages: Sequence[AnyMessage]) -> int:
    """The index of the turn's question: the last human message (the tool calls and results
    of this turn, if any, follow it)."""
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], HumanMessage):
            return i
    raise TmoGraphError(
        "a turn must hold a human message", "send {'messages': [('user', 'your question')]}"
    )


def with_args(call: Any, change: Callable[[str], str]) -> dict[str, Any]:
    """A tool call (LangChain's shape) with its string arguments through ``change``: redacted
    on the way to the cloud, restored on the way back."""
    args = {k: change(v) if isinstance(v, str) else v for k, v in (call.get("args") or {}).items()}
    return {"name": call["name"], "args": args, "id": call.get("id"), "type": "tool_call"}


def tool_texts(tools: Sequence[dict[str, Any]], messages: Sequence[BaseMessage]) -> list[str]:
    """The texts of a request beside its messages' words: the tool specs and the earlier
    answers' tool calls, which the endpoint reads and bills too."""
    texts = [json.dumps(list(tools))] if tools else []
    for message in messages:
        for call in getattr(message, "tool_calls", None) or []:
            texts.append(json.dumps({"name": call["name"], "args": call["args"]}))
    return texts


def cloud_messages(
    messages: Sequence[AnyMessage],
    recalled: Sequence[Recalled],
    persona: str,
    prompt: str,
    images: Sequence[tuple[str, str]],
    detail: str = "low",
    scrub: Callable[[str], str] = str,
    audio: Sequence[tuple[str, str]] = (),
) -> list[AnyMessage]:
    """Text history, then this turn's prompt with only the chosen images as ``image_url``
    parts; ``images`` are (label, URL) pairs, the URL already made for sending. Every text
    (persona, recalled memory, history, prompt) goes through ``scrub`` first (redaction).
    Private messages and their answers are left out of the history (:func:`shared_messages`).
    ``audio``: (label, base64 WAV) pairs, each sent as an OpenAI ``input_audio`` part.
    The turn's own tool calls and results (after its question) follow the prompt, in
    OpenAI's shape."""
    asked = question_index(messages)
    history_in = shared_messages(messages[:asked])
    dialogue = text_dialogue(history_in, recalled, system_prompt(messages, persona), True)
    after = text_dialogue(messages[asked + 1 :], [], "", True)[1:]
    history = as_langchain([_scrubbed(m, scrub) for m in dialogue])
    content: list[Any] = [{"type": "text", "text": scrub(prompt)}]
    for label, url in images:
        content.append({"type": "text", "text": f"{label}:"})
        content.append({"type": "image_url", "image_url": {"url": url, "detail": detail}})
    for label, data in audio:
        content.append({"type": "text", "text": f"{label}:"})
        content.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
    return [
        *history,
        HumanMessage(content=content),
        *as_langchain([_scrubbed(m, scrub) for m in after]),
    ]


def _scrubbed(entry: dict[str, Any], scrub: Callable[[str], str]) -> dict[str, Any]:
    """A dialogue entry with its text, and its tool calls' string arguments, scrubbed."""
    out = {**entry, "content": scrub(entry["content"])}
    if entry.get("tool_calls"):
        out["tool_calls"] = [with_args(c, scrub) for c in entry["tool_calls"]]
    return out


def cloud_texts(
    messages: Sequence[AnyMessage], recalled: Sequence[Recalled], persona: str, prompt: str
) -> list[str]:
    """Every text a cloud request for this turn would carry, in the order
    :func:`cloud_messages` scrubs them (system text with recalled memory, history, prompt)."""
    texts: list[str] = []

    def keep(text: str) -> str:
        texts.append(text)
        return text

    cloud_messages(messages, recalled, persona, prompt, [], scrub=keep)
    return texts


def hidden_call_tags(*tags: str) -> list[str]:
    """The tags of an answer model call whose tokens must not reach a chat UI as they come (a
    draft that may still be replaced, an answer that still carries placeholders): ``tags``
    plus LangGraph's ``nostream``, so a UI streaming the run's ``messages`` never shows them
    and gets the node's final message once instead. A run whose ``configurable`` sets
    :data:`tmo_graph.state.STREAM_HIDDEN` to True (a surface that holds such tokens back
    itself, :mod:`tmo_graph.conversation`) gets them, tagged only ``tags``."""
    try:
        configurable = get_config().get("configurable") or {}
    except RuntimeError:  # called outside a graph run: there is no stream to hide them from
        configurable = {}
    return list(tags) if configurable.get(STREAM_HIDDEN) is True else [*tags, TAG_NOSTREAM]
