"""A request's messages as the thread's: OpenAI roles, content parts and this server's
``private`` flag checked and turned into LangChain messages; which of them the thread does not
hold yet is the chat model's rule (:func:`tmo_graph.conversation.new_messages`, lenient).

A user message's parts are checked before the thread is looked up when the message is surely
new: every one on a new thread, else the trailing user messages after the request's last
assistant message (a bad part is then a 400 before any thread is read). Any other user message
is checked only when the thread turns out not to hold it: decoding every image and clip of a
long chat again at each turn would be wasted work.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from tmo_graph.conversation import new_messages
from tmo_graph.errors import TmoGraphError
from tmo_graph.media.audio import FORMATS, audio_bytes, decode
from tmo_graph.media.images import check_image
from tmo_graph.prompts import PRIVATE
from tmo_graph.server.errors import bad
from tmo_graph.server.schemas import ChatMessage

# The id of the thread's persona message: add_messages replaces a message with the same id,
# so a client that changes its system prompt leaves one (the new) copy in the thread.
SYSTEM_ID = "tmo-system"

Content = str | list[dict[str, Any]] | None
TOOL_CHOICES = ("auto", "none", "required")


def check_tools(tools: list[dict[str, Any]] | None, choice: Any) -> list[dict[str, Any]]:
    """The request's ``tools`` (OpenAI function tools, each with a function name), checked,
    and its ``tool_choice`` (one of :data:`TOOL_CHOICES` or a named function)."""
    for i, spec in enumerate(tools or []):
        function = spec.get("function") if spec.get("type") == "function" else None
        if not isinstance(function, dict) or not str(function.get("name", "")).strip():
            raise bad(
                f"tools[{i}] is not a function tool; send "
                '{"type": "function", "function": {"name": ..., "parameters": {...}}}',
                f"tools[{i}]",
            )
    named = isinstance(choice, dict) and isinstance(choice.get("function"), dict)
    if choice is not None and choice not in TOOL_CHOICES and not named:
        raise bad(
            'tool_choice must be "auto", "none", "required" or '
            '{"type": "function", "function": {"name": ...}}',
            "tool_choice",
        )
    return list(tools or [])


def tool_calls_of(message: ChatMessage, index: int) -> list[dict[str, Any]]:
    """An assistant message's OpenAI tool calls as LangChain's (``args`` parsed from the
    ``arguments`` JSON text)."""
    out = []
    for k, call in enumerate(message.tool_calls or []):
        where = f"messages[{index}].tool_calls[{k}]"
        function = call.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad(f"{where}.function.name is missing; send the call as it was made", where)
        try:
            args = json.loads(function.get("arguments") or "{}")
        except (TypeError, json.JSONDecodeError):
            args = None
        if not isinstance(args, dict):
            raise bad(f"{where}.function.arguments must be a JSON object as text", where)
        out.append({"name": function["name"], "args": args, "id": call.get("id")})
    return out


def text_of(content: Content) -> str:
    """The text of a message's content: its text parts, joined."""
    if isinstance(content, str):
        return content
    return " ".join(str(p.get("text", "")) for p in content or [] if p.get("type") == "text")


def _has_audio(content: Content) -> bool:
    return isinstance(content, list) and any(
        p.get("type") in ("input_audio", "audio") for p in content
    )


def _audio_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    """An audio part, checked to carry decodable audio inline (OpenAI's or LangChain's)."""
    if part.get("type") == "input_audio":
        clip = part.get("input_audio")
        data = clip.get("data") if isinstance(clip, dict) else None
        fmt = clip.get("format", "wav") if isinstance(clip, dict) else None
        if not isinstance(data, str) or not data:
            raise bad(f"{where}.input_audio.data must be the clip as base64", where)
        if fmt not in FORMATS:
            raise bad(f"{where}.input_audio.format must be one of {', '.join(FORMATS)}", where)
        out = {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}
    else:
        data = part.get("base64") or part.get("data")
        if not isinstance(data, str) or not data:
            raise bad(
                f"{where} must carry the clip as base64 ('base64' or 'data'); this server reads "
                "no URLs or files for a client",
                where,
            )
        out = {"type": "audio", "base64": data, "mime_type": str(part.get("mime_type", ""))}
    try:
        # Length is checked by the graph against audio.max_clip_seconds (400 with the fix).
        decode(audio_bytes(data), f"{where} (audio)")
    except TmoGraphError as exc:
        text = str(exc)
        raise bad(text if text.startswith(where) else f"{where}: {text}", where) from None
    return out


def user_content(content: Content, index: int) -> str | list[dict[str, Any]]:
    """A user message's content, its parts checked: text, images (data or http(s) URLs,
    decodable) and audio (inline, decodable)."""
    where = f"messages[{index}].content"
    if content is None:
        raise bad(f"{where} is empty; send the user's question as text", where)
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for k, part in enumerate(content):
        kind = part.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url.startswith(("data:", "http://", "https://")):
                raise bad(
                    f"{where}[{k}].image_url.url must be a data URL "
                    "(data:image/png;base64,...) or an http(s) URL",
                    f"{where}[{k}]",
                )
            try:
                check_image(url)
            except TmoGraphError as exc:
                raise bad(f"{where}[{k}]: {exc}", f"{where}[{k}]") from None
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind in ("input_audio", "audio"):
            parts.append(_audio_part(part, f"{where}[{k}]"))
        else:
            raise bad(
                f"{where}[{k}] has type {kind!r}; this server takes 'text', 'image_url', "
                "'input_audio' and 'audio' parts",
                f"{where}[{k}]",
            )
    return parts


class Chat:
    """A request's messages as LangChain messages: the persona (system and developer
    messages joined, id :data:`SYSTEM_ID`) first, then the user, assistant and tool messages
    (an assistant's ``tool_calls`` and a tool's result, as OpenAI sends them).

    Built before the thread is looked up, it refuses (400) what no thread could take; then
    :meth:`new_messages` says what the turn sends.
    """

    def __init__(self, messages: Sequence[ChatMessage], new_thread: bool) -> None:
        if not messages:
            raise bad("messages is empty; send at least one user message", "messages")
        system: list[str] = []
        dialogue: list[tuple[int, ChatMessage]] = []
        for i, message in enumerate(messages):
            if message.role in ("system", "developer"):
                system.append(text_of(message.content))
            elif message.role in ("user", "assistant", "tool"):
                dialogue.append((i, message))
            else:
                raise bad(
                    f"messages[{i}] has role {message.role!r}; this server takes system, "
                    "developer, user, assistant and tool messages",
                    f"messages[{i}].role",
                )
        if not dialogue or dialogue[-1][1].role not in ("user", "tool"):
            raise bad(
                "the last message must be a user message (the question this turn answers) or "
                "the tool results for the last answer's tool calls",
                "messages",
            )
        last_index, last = dialogue[-1]
        if last.role == "tool":
            pass  # a tool's result may be empty text
        elif not text_of(last.content).strip() and not _has_audio(last.content):
            raise bad(
                f"messages[{last_index}] has no text; ask the question in words "
                "(images may come with it)",
                f"messages[{last_index}].content",
            )
        for i, message in enumerate(messages):
            if message.private and message.role != "user":
                raise bad(
                    f"messages[{i}] ({message.role}) is marked private, but only user messages "
                    "may be; mark the user message (its answer stays private with it)",
                    f"messages[{i}].private",
                )
        trailing = len(dialogue)
        while trailing > 0 and dialogue[trailing - 1][1].role in ("user", "tool"):
            trailing -= 1
        checked_from = 0 if new_thread else trailing

        self.messages: list[BaseMessage] = []
        # User messages whose parts are not checked yet: message -> (content, request index).
        self._unchecked: dict[int, tuple[Content, int]] = {}
        if any(text.strip() for text in system):
            persona = "\n\n".join(t for t in system if t.strip())
            self.messages.append(SystemMessage(content=persona, id=SYSTEM_ID))
        names: dict[str, str] = {}  # tool call id -> the tool's name, for its result
        for n, (i, message) in enumerate(dialogue):
            if message.role == "assistant":
                calls = tool_calls_of(message, i)
                names.update({str(c["id"]): c["name"] for c in calls if c["id"]})
                self.messages.append(AIMessage(content=text_of(message.content), tool_calls=calls))
                continue
            if message.role == "tool":
                if not message.tool_call_id:
                    raise bad(
                        f"messages[{i}].tool_call_id is missing; send the id of the call this "
                        "result answers",
                        f"messages[{i}].tool_call_id",
                    )
                call_id = message.tool_call_id
                result = ToolMessage(
                    content=text_of(message.content), tool_call_id=call_id, name=names.get(call_id)
                )
                self.messages.append(result)
                continue
            flags = {PRIVATE: True} if message.private else {}
            if n >= checked_from:
                content = user_content(message.content, i)
            else:  # as sent, for the history rule to compare (it reads text parts only)
                content = message.content if message.content is not None else ""
            human = HumanMessage(content=content, additional_kwargs=flags)  # type: ignore[arg-type]
            if n < checked_from:
                self._unchecked[id(human)] = (message.content, i)
            self.messages.append(human)

    def new_messages(self, stored: Sequence[BaseMessage]) -> list[BaseMessage]:
        """What the turn sends a thread holding ``stored``, every user message checked."""
        new = new_messages(self.messages, stored, strict=False)
        out: list[BaseMessage] = []
        for message in new:
            if id(message) in self._unchecked:
                content, index = self._unchecked[id(message)]
                message = HumanMessage(
                    content=user_content(content, index),  # type: ignore[arg-type]
                    additional_kwargs=message.additional_kwargs,
                )
            out.append(message)
        return out
