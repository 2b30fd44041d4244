"""Front-end chores: the small requests a chat front-end sends to the chat's own model about
the chat (a title, tags, follow-up suggestions, search queries, an autocompletion).

They are not turns of the dialogue: routing them would start a thread per chore, spend the
dialogue's budget and may send the chat's text to the cloud for a title. So a chore is
answered by the local model directly (not through the graph): no thread, no memory, no
budget, no cloud request, no audit line.

The rule (``docs/server.md``): a request is a chore when

- its ``x-tmo-chore`` header (or its ``metadata.tmo_chore``) is ``1`` / ``true``; ``0`` /
  ``false`` makes it a turn whatever it looks like; otherwise
- with ``server.chores`` on (the default), its last user message is one of Open WebUI's
  task prompts: it begins ``### Task:``, carries the chat in ``<chat_history>`` (or the text
  to complete in ``<text>``), and its task paragraph names one of the chores below; or
- its last user message begins with one of ``server.chore_markers`` (an operator's own
  task templates).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from tmo_graph.models.base import LocalBackend
from tmo_graph.sections import ServerSettings
from tmo_graph.server.errors import ApiError, bad
from tmo_graph.server.responses import completion_id
from tmo_graph.server.schemas import ChatMessage, ChatRequest

CHORE_HEADER = "x-tmo-chore"
TASK_PREFIX = "### task:"
# Open WebUI's task prompts share a frame: '### Task:' first, then the chat (or the text
# to complete) between these tags.
FRAMES = ("<chat_history>", "<text>")
# The chore each of its default task paragraphs names, by a phrase of each version's wording
# (lower case, spaces collapsed); 0.12.4's as recorded in
# tests/integration_tests/data/openwebui_requests.jsonl.
OPEN_WEBUI_CHORES = {
    "word title": "title",
    "concise title": "title",
    "broad tags": "tags",
    "follow-up questions": "follow_ups",
    "useful messages this user might": "follow_ups",
    "search queries": "search_queries",
    "autocompletion system": "autocomplete",
}
YES, NO = ("1", "true", "yes"), ("0", "false", "no")


def _text(message: ChatMessage) -> str:
    """A message's text (its text parts joined; images and clips left out)."""
    if isinstance(message.content, str):
        return message.content
    parts = message.content or []
    return "\n".join(str(p.get("text", "")) for p in parts if p.get("type") == "text")


def _flag(value: Any, where: str) -> bool | None:
    """A chore flag as given, or None when absent; 400 for anything else."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in YES or value is True:
        return True
    if text in NO or value is False:
        return False
    raise bad(f"{where} must be 1 or 0 (true or false), not {str(value)!r:.40}", where)


def recognise(text: str, markers: Sequence[str] = (), open_webui: bool = True) -> str | None:
    """The chore a user message asks for, or None: a message beginning with one of
    ``markers``, or (``open_webui``) one of Open WebUI's task prompts."""
    head = " ".join(text.split()).lower()
    for marker in markers:
        if marker.strip() and head.startswith(" ".join(marker.split()).lower()):
            return "marked"
    if not open_webui or not head.startswith(TASK_PREFIX) or not any(f in head for f in FRAMES):
        return None
    task = head[len(TASK_PREFIX) :].split("###", 1)[0]
    return next((name for phrase, name in OPEN_WEBUI_CHORES.items() if phrase in task), None)


def chore_of(body: ChatRequest, headers: Mapping[str, str], server: ServerSettings) -> str | None:
    """The chore this request is (see the module's rule), or None for a turn."""
    metadata = (body.model_extra or {}).get("metadata")
    marked = _flag(headers.get(CHORE_HEADER), CHORE_HEADER)
    if marked is None and isinstance(metadata, dict):
        marked = _flag(metadata.get("tmo_chore"), "metadata.tmo_chore")
    if marked is not None:
        return "marked" if marked else None
    users = [m for m in body.messages if m.role == "user"]
    if not users:
        return None
    return recognise(_text(users[-1]), server.chore_markers, server.chores)


async def answer_chore(
    chore: str, body: ChatRequest, local: LocalBackend | None
) -> JSONResponse | StreamingResponse:
    """The local model's answer to a chore, in OpenAI's shape (plain or streamed)."""
    if local is None:
        raise ApiError(
            503,
            "this server has no local model to answer a front-end chore with; send the "
            f"request without the {CHORE_HEADER} header, or start the app with its services",
            "server_error",
            code="no_local_model",
        )
    messages = [
        {"role": m.role, "content": _text(m)}
        for m in body.messages
        if m.role in ("system", "user", "assistant")
    ]
    text, stats = await asyncio.to_thread(local.answer, messages, body.answer_tokens())
    usage = {
        "prompt_tokens": int(getattr(stats, "prompt_tokens", 0) or 0),
        "completion_tokens": len(stats.logprobs),
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    tmo = {"chore": chore, "route": "local", "thread_id": None, "cost_usd": 0.0}
    headers = {CHORE_HEADER: chore, "x-tmo-route": "local"}
    base = {
        "id": completion_id(),
        "created": int(time.time()),
        "model": body.model,
        "system_fingerprint": None,
    }
    if not body.stream:
        message = {"role": "assistant", "content": text, "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        plain = {**base, "object": "chat.completion", "choices": [choice]}
        return JSONResponse({**plain, "usage": usage, "tmo": tmo}, headers=headers)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(
        _stream(base, text, tmo, usage if include_usage else None),
        media_type="text/event-stream",
        headers={**headers, "cache-control": "no-cache"},
    )


def _stream(
    base: dict[str, Any], text: str, tmo: dict[str, Any], usage: dict[str, int] | None
) -> Iterator[str]:
    """The answer as OpenAI's chunks: the role, the text in one piece, the stop, the usage."""
    chunk = {**base, "object": "chat.completion.chunk"}
    extra: dict[str, Any] = {} if usage is None else {"usage": None}
    deltas: list[tuple[dict[str, Any], str | None]] = [
        ({"role": "assistant", "content": ""}, None),
        ({"content": text}, None),
        ({}, "stop"),
    ]
    for delta, finish in deltas:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        last = {"tmo": tmo} if finish else {}
        yield f"data: {json.dumps({**chunk, 'choices': [choice], **extra, **last})}\n\n"
    if usage is not None:
        yield f"data: {json.dumps({**chunk, 'choices': [], 'usage': usage, 'tmo': tmo})}\n\n"
    yield "data: [DONE]\n\n"
