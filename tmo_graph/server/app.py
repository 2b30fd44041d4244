"""`tmo-graph serve`: the graph behind an OpenAI-compatible chat API (as RouteLLM serves its
routers), so any OpenAI client or chat UI talks to it unchanged.

Endpoints: ``POST /v1/chat/completions`` (plain and streamed), ``GET /v1/models``,
``GET /health``.

Who may do what (:mod:`tmo_graph.server.keys`, :mod:`tmo_graph.threads.owners`):

- Every ``/v1`` request needs an API key, ``Authorization: Bearer <key>`` (the ``openai``
  client's ``api_key``): none, a wrong one or a revoked one is a 401. The key decides the
  user (threads, memory and daily cap are the user's); a ``user`` field or ``x-tmo-user``
  header naming anyone else is a 403, never honoured. A key may be limited to some policies
  (403 for the others), to a daily cost cap and to a rate (429 with ``Retry-After``).
  Only a server on 127.0.0.1 may run without keys (``no_auth``); it then trusts the
  ``user`` field (else the ``x-tmo-user`` header, else ``anonymous``).
- A thread belongs to the user whose request started it (kept in the thread store, so a
  restarted server and every worker on the same PostgreSQL know it). Naming a thread that
  is not the caller's, or that does not exist, is the same 404, so ids cannot be probed;
  new thread ids are 128 random bits. Without keys a thread no one owns yet is taken by the
  first user who names it.
- One request may carry at most ``server.max_body_bytes`` (413), ``server.max_messages``
  messages, ``server.max_images`` images and ``server.max_audio`` audio parts of at most
  ``server.max_image_bytes`` / ``server.max_audio_bytes`` each (413), and ask at most
  ``server.max_tokens`` (:mod:`tmo_graph.server.request_limits`). CORS headers only for
  ``server.cors_origins``.
- Errors never echo the caller's key, another user's data or a stack trace; logs and the
  audit log name a key by its id.

The dialogue:

- ``model`` names the policy and, optionally, the confidence threshold: ``tmo-cascade``,
  ``tmo-cascade-0.35`` (``confidence_threshold=0.35``), ``tmo-always-local`` ...
- The dialogue lives in a graph thread. Header ``x-tmo-thread-id`` names it; without it the
  server starts a new thread and returns its id in the ``x-tmo-thread-id`` header and the
  ``tmo.thread_id`` field. A new thread takes the whole conversation the request carries; an
  existing thread already holds the dialogue, so it gets only the new messages: the
  trailing user message(s) after the last assistant message. System (or developer)
  messages become the thread's one persona message, replaced when the client changes it.
- A user message may carry ``"private": true`` (a JSON boolean): that turn is answered on
  the device and the message and its answer never reach the cloud (:mod:`tmo_graph.guards.privacy`).
- Image parts (``image_url``) must be data URLs or http(s) URLs: the server never reads its
  own files for a client. They are checked before the turn starts.
- Audio parts: OpenAI ``input_audio`` (``{"data": base64, "format": "wav"}``)
  or a LangChain ``audio`` block with ``base64`` data (never a URL or a file on this
  machine), in WAV, FLAC, MP3 or OGG Vorbis, checked before the turn starts. A message may
  be a voice note alone. The clip is transcribed on the device and goes to the cloud only
  when the route sends it (``tmo.audio_sent``).
- ``max_tokens`` / ``max_completion_tokens`` (up to the ceiling) shorten the answer, local
  or cloud, below the config's limits; ``temperature`` and the other sampling fields are
  accepted and ignored; ``n`` other than 1 and ``tools`` are refused.
- ``usage`` counts the tokens of the turn's model calls (the local model's prompt tokens
  are not counted: the graph records 0 for them); ``tmo`` holds the turn record
  (route, views_sent, confidence, escalated, fallback, latency_s, cost_usd, budget_left,
  thread_id ...), also sent as ``x-tmo-*`` headers on plain responses and in the last
  chunk of a stream.
- Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for
  input to fix, 401 / 403 as above, 404 for an unknown model or thread, 409 when the thread
  is still answering another turn after ``thread_wait_s``, 413 over a size limit, 429 over
  the key's rate, 503 over ``max_concurrent_turns``, 500 (logged, no details) for anything
  else.

A turn runs in its own task: a client that disconnects mid-answer does not cut it, so the
thread never keeps a question without its answer. Several workers may share one thread
store (PostgreSQL at ``threads.url``) and continue each other's threads; the per-thread lock
(``tmo_graph.conversation``) is per process, so concurrent turns of one thread belong on one
worker. The rate limit is counted per worker too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from tmo_graph.context import Context
from tmo_graph.conversation import Done, ThreadBusy, Token, astream_turn, turn_summary
from tmo_graph.errors import TmoGraphError
from tmo_graph.media.audio import FORMATS, audio_bytes, decode
from tmo_graph.media.images import check_image
from tmo_graph.prompts import PRIVATE
from tmo_graph.sections import POLICIES
from tmo_graph.server.keys import ApiKey, KeyFileBroken, KeyRing
from tmo_graph.server.request_limits import LimitExceeded, check_request, read_body
from tmo_graph.threads.owners import MemoryOwners, ThreadOwners

if TYPE_CHECKING:
    from tmo_graph.services import Services
    from tmo_graph.settings import Settings

log = logging.getLogger("tmo_graph.server.app")

MODEL_PREFIX = "tmo-"
# The id of the thread's persona message: add_messages replaces a message with the same id,
# so a client that sends its system prompt every turn leaves one copy in the thread.
SYSTEM_ID = "tmo-system"
THREAD_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
DEFAULT_USER = "anonymous"


# --------------------------------------------------------------------------- request shape


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None
    private: bool = False  # this server's extension: the message never leaves the device

    @field_validator("private", mode="before")
    @classmethod
    def _real_boolean(cls, value: Any) -> Any:
        if not isinstance(value, bool):  # "yes" or "false" must not pass for a flag
            raise ValueError(
                f"must be true or false, a JSON boolean without quotes (got {value!r:.40})"
            )
        return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's request; fields not listed (temperature, max_tokens ...) are accepted and
    ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage]
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    n: int | None = None
    tools: list[Any] | None = None


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error sent to the client in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type_,
            param,
            code,
        )
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _api_error(exc: BaseException) -> ApiError:
    """What the client is told about ``exc``; unexpected errors are logged, not shown."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ThreadBusy):
        return ApiError(409, str(exc), code="thread_busy")
    if isinstance(exc, TmoGraphError):
        return ApiError(400, str(exc))
    log.error("turn failed", exc_info=exc)
    return ApiError(500, "internal error while answering; see the server log", "server_error")


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


# --------------------------------------------------------------------------- model names


def parse_model(model: str) -> tuple[str, float | None]:
    """``tmo-<policy>[-<threshold>]`` -> (policy, confidence threshold or None)."""
    name = model.strip()
    if name.startswith(MODEL_PREFIX):
        rest = name[len(MODEL_PREFIX) :]
        if rest in POLICIES:
            return rest, None
        policy, _, tail = rest.rpartition("-")
        if policy in POLICIES:
            try:
                threshold = float(tail)
            except ValueError:
                threshold = None
            if threshold is not None:
                if not 0.0 <= threshold <= 1.0:  # also refuses NaN
                    raise _bad(
                        f"the threshold in model {model!r} must be in [0, 1]; "
                        f"use e.g. {MODEL_PREFIX}{policy}-0.5",
                        "model",
                    )
                return policy, threshold
    names = ", ".join(f"{MODEL_PREFIX}{p}" for p in POLICIES)
    raise ApiError(
        404,
        f"The model {model!r} does not exist. Use one of: {names}, optionally with a "
        f"confidence threshold, e.g. {MODEL_PREFIX}cascade-0.35 (GET /v1/models lists them)",
        param="model",
        code="model_not_found",
    )


# --------------------------------------------------------------------------- messages


def _audio_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    """An audio part, checked to carry decodable audio inline (OpenAI's or LangChain's)."""
    if part.get("type") == "input_audio":
        clip = part.get("input_audio")
        data = clip.get("data") if isinstance(clip, dict) else None
        fmt = clip.get("format", "wav") if isinstance(clip, dict) else None
        if not isinstance(data, str) or not data:
            raise _bad(f"{where}.input_audio.data must be the clip as base64", where)
        if fmt not in FORMATS:
            raise _bad(f"{where}.input_audio.format must be one of {', '.join(FORMATS)}", where)
        out = {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}
    else:
        data = part.get("base64") or part.get("data")
        if not isinstance(data, str) or not data:
            raise _bad(
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
        raise _bad(text if text.startswith(where) else f"{where}: {text}", where) from None
    return out


def _has_audio(content: str | list[dict[str, Any]] | None) -> bool:
    return isinstance(content, list) and any(
        p.get("type") in ("input_audio", "audio") for p in content
    )


def _text_of(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, str):
        return content
    return " ".join(str(p.get("text", "")) for p in content or [] if p.get("type") == "text")


def _user_content(
    content: str | list[dict[str, Any]] | None, index: int
) -> str | list[dict[str, Any]]:
    """A user message's content, image parts checked (they must be data or http(s) URLs)."""
    where = f"messages[{index}].content"
    if content is None:
        raise _bad(f"{where} is empty; send the user's question as text", where)
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
                raise _bad(
                    f"{where}[{k}].image_url.url must be a data URL "
                    "(data:image/png;base64,...) or an http(s) URL",
                    f"{where}[{k}]",
                )
            try:
                check_image(url)
            except TmoGraphError as exc:
                raise _bad(f"{where}[{k}]: {exc}", f"{where}[{k}]") from None
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind in ("input_audio", "audio"):
            parts.append(_audio_part(part, f"{where}[{k}]"))
        else:
            raise _bad(
                f"{where}[{k}] has type {kind!r}; this server takes 'text', 'image_url', "
                "'input_audio' and 'audio' parts",
                f"{where}[{k}]",
            )
    return parts


def new_messages(messages: list[ChatMessage], new_thread: bool) -> list[AnyMessage]:
    """The messages the thread does not have yet.

    A new thread gets the whole conversation; an existing one only the user message(s)
    after the last assistant message. System / developer messages become one persona
    message with a fixed id (replaced, never duplicated, in the thread).
    """
    if not messages:
        raise _bad("messages is empty; send at least one user message", "messages")
    system: list[str] = []
    dialogue: list[tuple[int, ChatMessage]] = []
    for i, message in enumerate(messages):
        if message.role in ("system", "developer"):
            system.append(_text_of(message.content))
        elif message.role in ("user", "assistant"):
            dialogue.append((i, message))
        else:
            raise _bad(
                f"messages[{i}] has role {message.role!r}; this server takes system, "
                "developer, user and assistant messages (no tool calls)",
                f"messages[{i}].role",
            )
    if not dialogue or dialogue[-1][1].role != "user":
        raise _bad(
            "the last message must be a user message: it is the question this turn answers",
            "messages",
        )
    if not new_thread:
        start = len(dialogue)
        while start > 0 and dialogue[start - 1][1].role == "user":
            start -= 1
        dialogue = dialogue[start:]
    last_index, last = dialogue[-1]
    if not _text_of(last.content).strip() and not _has_audio(last.content):
        raise _bad(
            f"messages[{last_index}] has no text; ask the question in words "
            "(images may come with it)",
            f"messages[{last_index}].content",
        )
    for i, message in enumerate(messages):
        if message.private and message.role != "user":
            raise _bad(
                f"messages[{i}] ({message.role}) is marked private, but only user messages "
                "may be; mark the user message (its answer stays private with it)",
                f"messages[{i}].private",
            )
    out: list[AnyMessage] = []
    if any(text.strip() for text in system):
        out.append(SystemMessage(content="\n\n".join(t for t in system if t.strip()), id=SYSTEM_ID))
    for i, message in dialogue:
        if message.role == "user":
            out.append(
                HumanMessage(
                    content=_user_content(message.content, i),  # type: ignore[arg-type]
                    additional_kwargs={PRIVATE: True} if message.private else {},
                )
            )
        else:
            out.append(AIMessage(content=_text_of(message.content)))
    return out


# --------------------------------------------------------------------------- turns


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Usage:
        """The turn's tokens, as its record counts them."""
        return cls(int(record.get("input_tokens", 0)), int(record.get("output_tokens", 0)))

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass
class Finished:
    done: Done
    usage: Usage


Event = Token | Finished | BaseException


def tmo_headers(info: Mapping[str, Any]) -> dict[str, str]:
    left = info["budget_left"]
    confidence = info["confidence"]
    return {
        "x-tmo-thread-id": info["thread_id"],
        "x-tmo-route": info["route"],
        "x-tmo-views-sent": ",".join(info["views_sent"]),
        "x-tmo-confidence": "" if confidence is None else f"{confidence:.4f}",
        "x-tmo-escalated": str(info["escalated"]).lower(),
        "x-tmo-latency-s": f"{info['latency_s']:.4f}",
        "x-tmo-cost-usd": f"{info['cost_usd']:.8f}",
        "x-tmo-budget-left-usd": f"{left['cost_usd']:.8f}",
        "x-tmo-budget-left-s": f"{left['latency_s']:.4f}",
        # Clips whose audio went to the cloud this turn (empty: none, or no clips).
        "x-tmo-audio-sent": ",".join(info.get("audio_sent", [])),
    }


class TurnRunner:
    """Runs turns as tasks that finish even when their client leaves; counts them."""

    def __init__(self, graph: Any, max_concurrent_turns: int, thread_wait_s: float) -> None:
        self.graph = graph
        self.max_concurrent_turns = max_concurrent_turns
        self.thread_wait_s = thread_wait_s
        self.active = 0
        self._tasks: set[asyncio.Task[None]] = set()  # strong references until done

    def start(
        self, inputs: dict[str, Any], thread_id: str, context: Context
    ) -> asyncio.Queue[Event]:
        if self.active >= self.max_concurrent_turns:
            raise ApiError(
                503,
                f"the server is answering {self.active} turns, its limit; retry in a moment",
                "server_error",
                code="overloaded",
                headers={"retry-after": "1"},
            )
        self.active += 1  # counted before the task starts: no await between check and count
        queue: asyncio.Queue[Event] = asyncio.Queue()
        task = asyncio.create_task(self._run(inputs, thread_id, context, queue))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return queue

    async def _run(
        self, inputs: dict[str, Any], thread_id: str, context: Context, queue: asyncio.Queue[Event]
    ) -> None:
        try:
            async for event in astream_turn(
                self.graph, inputs, thread_id, context, self.thread_wait_s
            ):
                if isinstance(event, Done):
                    # Still inside the thread's lock: no later turn has written yet.
                    queue.put_nowait(Finished(event, Usage.of(event.record)))
                else:
                    queue.put_nowait(event)
        except Exception as exc:
            queue.put_nowait(exc)
        finally:
            self.active -= 1

    async def drain(self) -> None:
        """Let running turns finish (shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=60)


# --------------------------------------------------------------------------- responses


def _chunk(
    completion_id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    include_usage: bool,
    **extra: Any,
) -> str:
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
    }
    if include_usage:
        body["usage"] = None  # OpenAI: null on every chunk but the last
    body.update(extra)
    return f"data: {json.dumps(body)}\n\n"


def _delta(delta: dict[str, Any], finish: Literal["stop"] | None = None) -> list[dict[str, Any]]:
    return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]


async def _sse(
    queue: asyncio.Queue[Event],
    first: Event,
    completion_id: str,
    model: str,
    thread_id: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    created = int(time.time())
    role = {"role": "assistant", "content": ""}
    yield _chunk(completion_id, created, model, _delta(role), include_usage)
    event = first
    while True:
        if isinstance(event, BaseException):
            # Mid-stream failure: OpenAI sends an error event; its client raises on it.
            yield f"data: {json.dumps(_api_error(event).body())}\n\n"
            return
        if isinstance(event, Token):
            delta = _delta({"content": event.text})
            yield _chunk(completion_id, created, model, delta, include_usage)
        else:
            info = turn_summary(event.done.record, thread_id)
            stop = _delta({}, "stop")
            yield _chunk(completion_id, created, model, stop, include_usage, tmo=info)
            if include_usage:
                last = _chunk(completion_id, created, model, [], False, tmo=info)
                usage = json.loads(last[len("data: ") :])
                usage["usage"] = event.usage.as_dict()
                yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"
            return
        event = await queue.get()


def _completion(model: str, finished: Finished, thread_id: str) -> dict[str, Any]:
    record = finished.done.record
    return {
        "id": f"chatcmpl-{secrets.token_hex(16)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": record["answer"], "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": finished.usage.as_dict(),
        "tmo": turn_summary(record, thread_id),
    }


# --------------------------------------------------------------------------- the app


def _request_user(request: ChatRequest, header: str | None) -> str:
    """The user a request names (its ``user`` field or ``x-tmo-user`` header), or
    ``anonymous``: trusted only without API keys (``no_auth``)."""
    body, header = (request.user or "").strip(), (header or "").strip()
    if body and header and body != header:
        raise _bad(
            f"the user field ({body!r:.80}) and the x-tmo-user header ({header!r:.80}) differ; "
            "send one of them",
            "user",
        )
    return body or header or DEFAULT_USER


def _thread_header(header: str | None) -> str | None:
    """The thread id a request names, checked; None when it starts a new thread."""
    if header is None or not header.strip():
        return None
    thread_id = header.strip()
    if not THREAD_ID.match(thread_id):
        raise _bad(
            "the x-tmo-thread-id header must be 1-128 letters, digits or . _ : -; "
            "leave it out to start a new thread",
            "x-tmo-thread-id",
        )
    return thread_id


def new_thread_id() -> str:
    """A thread id no one can guess: 128 bits from the operating system's CSPRNG."""
    return secrets.token_hex(16)


def _no_thread(thread_id: str) -> ApiError:
    # The same answer for a thread that does not exist and one of another user: a caller
    # cannot tell them apart, so ids cannot be probed.
    return ApiError(
        404,
        f"no thread {thread_id!r} for this caller; leave the x-tmo-thread-id header out to "
        "start a new thread (its id comes back in that header)",
        "not_found_error",
        param="x-tmo-thread-id",
        code="thread_not_found",
    )


@dataclass(frozen=True)
class Caller:
    """Who is asking: the user, and the API key that proved it (None without keys)."""

    user: str
    key: ApiKey | None


def _bearer(request: Request) -> str | None:
    """The key in ``Authorization: Bearer <key>`` ('' when the header is malformed)."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _unauthorized(message: str, code: str) -> ApiError:
    return ApiError(
        401,
        message,
        param=None,
        code=code,
        headers={"www-authenticate": 'Bearer realm="tmo-graph"'},
    )


def _is_remote_peer(request: Request) -> bool:
    """Whether the peer is a known address other than loopback (a test client or a unix
    socket has no such address)."""
    host = request.client.host if request.client else None
    try:
        return host is not None and not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(
    graph: Any = None,
    settings: Settings | None = None,
    *,
    services: Services | None = None,
    db: Path | None = None,
    max_concurrent_turns: int = 32,
    thread_wait_s: float = 30.0,
    keys: KeyRing | None = None,
    no_auth: bool = False,
    owners: ThreadOwners | None = None,
) -> FastAPI:
    """The FastAPI app.

    ``graph``: a compiled graph with an async-capable checkpointer (tests pass one built on
    fakes with ``InMemorySaver``). Without it, the app builds one when it starts: the given
    ``services`` (else real ones from ``settings``) and the async checkpointer the settings
    name: PostgreSQL at ``threads.url`` (several workers share it), else a SQLite file
    ``db`` (default ``<cache>/threads.sqlite``, the file ``run`` and ``chat`` use).
    ``settings`` give the defaults of each turn's Context (``routing:``) and the server's
    keys and limits (``server:``).

    Every ``/v1`` request needs an API key (``Authorization: Bearer``): ``keys``, else the
    ones ``server.keys`` / ``server.keys_file`` name. ``no_auth=True`` drops keys for a
    server on 127.0.0.1 only (the CLI refuses it on any other address; the app refuses peers
    with another address): the request's ``user`` field is then trusted. Thread owners are
    kept in ``owners``; default: the thread store's table when the app opens the store,
    else this process's memory (a passed ``graph``).
    """
    from tmo_graph.server.ratelimit import RateLimiter
    from tmo_graph.settings import load_settings

    if max_concurrent_turns < 1:
        raise TmoGraphError("max_concurrent_turns must be >= 1", "use e.g. 32")
    cfg = settings or (services.settings if services else None) or load_settings()
    ring: KeyRing | None = None
    if no_auth:
        if keys is not None:
            raise TmoGraphError(
                "both API keys and no_auth were given", "pass keys, or no_auth=True, not both"
            )
    elif keys is not None:
        ring = keys
    elif cfg.server.keys or cfg.server.keys_file is not None:
        ring = KeyRing(cfg.server.keys, cfg.server.keys_file)
    else:
        raise TmoGraphError(
            "the server has no API keys, so it would refuse every request",
            "make one with `tmo-graph keys add --user NAME --file keys.yaml` and pass "
            "--keys keys.yaml (or set server.keys_file / TMO_SERVER__KEYS); on 127.0.0.1 "
            "only, --no-auth serves without keys",
        )
    limiter = RateLimiter() if ring is not None else None
    state: dict[str, Any] = {"settings": cfg}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            compiled = graph
            thread_owners = owners
            if compiled is None:
                compiled, opened = await stack.enter_async_context(
                    _default_graph(cfg, services, db)
                )
                thread_owners = thread_owners or opened
            state["owners"] = thread_owners or MemoryOwners()
            state["runner"] = runner = TurnRunner(compiled, max_concurrent_turns, thread_wait_s)
            yield
            await runner.drain()

    app = FastAPI(title="tmo-graph", lifespan=lifespan)
    if cfg.server.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cfg.server.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-tmo-thread-id", "x-tmo-user"],
            expose_headers=["x-tmo-thread-id", "retry-after"],
        )

    def scrubbed(request: Request, error: ApiError) -> JSONResponse:
        """The error's response, with the request's own key never echoed back."""
        token = _bearer(request)
        if token and len(token) >= 8 and token in error.message:
            error.message = error.message.replace(token, "[API key]")
        return error.response()

    @app.exception_handler(ApiError)
    async def _on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return scrubbed(request, exc)

    @app.exception_handler(TmoGraphError)
    async def _on_tmo_error(request: Request, exc: TmoGraphError) -> JSONResponse:
        return scrubbed(request, _api_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return scrubbed(request, _invalid(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return scrubbed(request, ApiError(exc.status_code, str(exc.detail), kind))

    @app.exception_handler(Exception)
    async def _on_anything(request: Request, exc: Exception) -> JSONResponse:
        return scrubbed(request, _api_error(exc))

    def authenticate(request: Request) -> Caller:
        """The caller's key (401 without a valid one) within its rate (429)."""
        if ring is None:
            if _is_remote_peer(request):
                raise ApiError(
                    403,
                    "this server runs without API keys and answers only on 127.0.0.1",
                    "permission_error",
                    code="loopback_only",
                )
            return Caller(DEFAULT_USER, None)
        token = _bearer(request)
        if token is None:
            raise _unauthorized(
                "no API key: send it as 'Authorization: Bearer <key>' (the openai client's "
                "api_key); `tmo-graph keys add` makes one",
                "missing_api_key",
            )
        try:
            key = ring.find(token) if token else None
        except KeyFileBroken:
            raise ApiError(
                503,
                "the server cannot read its API key file; its operator must fix it "
                "(the server log says what is wrong)",
                "server_error",
                code="keys_unavailable",
            ) from None
        if key is None:
            log.info("refused a request with an unknown API key")
            raise _unauthorized(
                "the API key is not valid; check it, or ask the server's operator for one",
                "invalid_api_key",
            )
        if key.revoked:
            log.info("refused a request with revoked API key %s", key.id)
            raise _unauthorized(
                "the API key was revoked; ask the server's operator for a new one",
                "revoked_api_key",
            )
        assert limiter is not None
        rate = key.rate or cfg.server.rate
        wait = limiter.hit(key.id, rate)
        if wait is not None:
            raise ApiError(
                429,
                f"this API key is over its rate of {rate}; retry in {wait} s "
                "(the Retry-After header), or ask for a higher rate",
                "rate_limit_error",
                code="rate_limit_exceeded",
                headers={"retry-after": str(wait)},
            )
        return Caller(key.user, key)

    def allowed_policies(caller: Caller) -> tuple[str, ...]:
        # 'learned' needs a trained policy file in the config; without one it cannot run.
        usable = [p for p in POLICIES if p != "learned" or cfg.routing.policy_file]
        if caller.key is not None and caller.key.policies is not None:
            usable = [p for p in usable if p in caller.key.policies]
        return tuple(usable)

    async def read_request(request: Request) -> ChatRequest:
        """The body, within its size limit, as a chat request (400 naming what is wrong)."""
        try:
            raw = await read_body(
                request.stream(),
                request.headers.get("content-length"),
                cfg.server.max_body_bytes,
            )
        except LimitExceeded as exc:
            code = "request_too_large" if exc.status == 413 else None
            raise ApiError(exc.status, exc.message, param=exc.param, code=code) from None
        try:
            data = json.loads(raw)
        except RecursionError:
            raise _bad("the body is nested too deeply; send the chat API's JSON shape") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            where = getattr(exc, "pos", getattr(exc, "start", 0))
            raise _bad(
                f"the body is not JSON (error at byte {where}); send a JSON object as the "
                "OpenAI chat API takes it"
            ) from None
        if not isinstance(data, dict):
            raise _bad(
                f"the body is JSON {type(data).__name__}, not an object; send "
                '{"model": ..., "messages": [...]}'
            )
        if bad := _unstorable_text(data):
            raise _bad(f"the body holds {bad}, which no thread can store; send plain Unicode text")
        try:
            return ChatRequest.model_validate(data)
        except ValidationError as exc:
            raise _invalid(exc.errors()) from None

    async def thread_of(header: str | None, caller: Caller) -> tuple[str, bool]:
        """The turn's thread and whether it is new; 404 for a thread not the caller's."""
        thread_owners: ThreadOwners = state["owners"]
        thread_id = _thread_header(header)
        if thread_id is None:
            thread_id = new_thread_id()
            await thread_owners.claim(thread_id, caller.user)
            return thread_id, True
        owner = await thread_owners.owner(thread_id)
        if owner is None and caller.key is None:
            # Without keys the caller is trusted (loopback): a thread no one owns yet, e.g.
            # one `tmo-graph chat` started, is taken by the first user who names it.
            owner = await thread_owners.claim(thread_id, caller.user)
        if owner != caller.user:
            raise _no_thread(thread_id)
        return thread_id, False

    @app.get("/health")
    async def health() -> dict[str, Any]:
        runner: TurnRunner = state["runner"]
        return {
            "status": "ok",
            "active_turns": runner.active,
            "max_concurrent_turns": runner.max_concurrent_turns,
        }

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        caller = authenticate(request)
        return {
            "object": "list",
            "data": [
                {"id": f"{MODEL_PREFIX}{p}", "object": "model", "created": 0, "owned_by": "tmo"}
                for p in allowed_policies(caller)
            ],
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        caller = authenticate(request)  # before the body is read: strangers cost nothing
        body = await read_request(request)
        runner: TurnRunner = state["runner"]
        try:
            check_request(body.messages, body.model_extra or {}, cfg.server)
        except LimitExceeded as exc:
            code = "request_too_large" if exc.status == 413 else "limit_exceeded"
            raise ApiError(exc.status, exc.message, param=exc.param, code=code) from None
        named_user = request.headers.get("x-tmo-user")
        if caller.key is None:
            caller = Caller(_request_user(body, named_user), None)
        else:
            for named, where in ((body.user, "the user field"), (named_user, "x-tmo-user")):
                if named is not None and named.strip() and named.strip() != caller.user:
                    raise ApiError(
                        403,
                        f"{where} names another user than this API key's ({caller.user!r}); "
                        "the key decides the user: leave it out",
                        "permission_error",
                        param="user",
                        code="user_mismatch",
                    )
        policy, threshold = parse_model(body.model)
        key = caller.key
        if key is not None and key.policies is not None and policy not in key.policies:
            names = ", ".join(f"{MODEL_PREFIX}{p}" for p in allowed_policies(caller))
            raise ApiError(
                403,
                f"this API key may not use the model {body.model!r:.80}; it may use: {names}",
                "permission_error",
                param="model",
                code="model_not_allowed",
            )
        if body.n not in (None, 1):
            raise _bad("n must be 1: a turn has one answer", "n")
        if body.tools:
            raise _bad("tools are not supported by this server; leave them out", "tools")
        header = request.headers.get("x-tmo-thread-id")
        new_thread = _thread_header(header) is None  # a malformed header: 400 right here
        # Decoding inline images is CPU work: off the event loop.
        messages = await asyncio.to_thread(new_messages, body.messages, new_thread)
        thread_id, _ = await thread_of(header, caller)
        context = Context.from_settings(
            cfg,
            user_id=caller.user,
            policy=policy,
            confidence_threshold=threshold,
            daily_cost_cap_usd=key.daily_cost_cap_usd if key else None,
            max_answer_tokens=_answer_tokens(body),
            api_key_id=key.id if key else None,
        )
        queue = runner.start({"messages": messages}, thread_id, context)
        first = await queue.get()
        if isinstance(first, BaseException):
            raise _api_error(first)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            completion_id = f"chatcmpl-{secrets.token_hex(16)}"
            return StreamingResponse(
                _sse(queue, first, completion_id, body.model, thread_id, include_usage),
                media_type="text/event-stream",
                headers={"x-tmo-thread-id": thread_id, "cache-control": "no-cache"},
            )
        event: Event = first
        while not isinstance(event, Finished):
            if isinstance(event, BaseException):
                raise _api_error(event)
            event = await queue.get()
        completion = _completion(body.model, event, thread_id)
        return JSONResponse(completion, headers=tmo_headers(completion["tmo"]))

    return app


def _answer_tokens(body: ChatRequest) -> int | None:
    """The answer length a request asks for (checked by :func:`check_request` before)."""
    extra = body.model_extra or {}
    asked = [extra.get(name) for name in ("max_tokens", "max_completion_tokens")]
    return min((n for n in asked if isinstance(n, int)), default=None)


def _unstorable_text(data: Any) -> str | None:
    """What in a parsed JSON body no store takes ('\\u0000' in PostgreSQL, a lone UTF-16
    surrogate such as '\\ud800' in any UTF-8 store), or None. Walked without recursion."""
    stack = [data]
    while stack:
        value = stack.pop()
        texts: list[str] = []
        if isinstance(value, str):
            texts = [value]
        elif isinstance(value, dict):
            texts = [k for k in value if isinstance(k, str)]
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        for text in texts:
            if "\x00" in text:
                return "a NUL character (\\u0000)"
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return "a lone UTF-16 surrogate (an escape such as \\ud800 without its pair)"
    return None


def _invalid(errors: Sequence[Any]) -> ApiError:
    """A request that does not have the chat API's shape: each problem by its field."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in errors[:5]
    )
    return _bad(f"invalid request: {problems}")


@asynccontextmanager
async def _default_graph(
    settings: Settings, services: Services | None, db: Path | None
) -> AsyncIterator[tuple[Any, ThreadOwners]]:
    """The real graph on an async checkpointer (a sync one cannot serve astream), and the
    thread owners kept in the same store."""
    from tmo_graph.graph import build_graph
    from tmo_graph.services import build_services
    from tmo_graph.threads.store import open_async_checkpointer, open_async_owners

    # The thread store first: an unreachable database fails before the models load.
    async with (
        open_async_checkpointer(settings, db) as saver,
        open_async_owners(settings, db) as owners,
    ):
        if services is None:
            services = await asyncio.to_thread(build_services, settings)
        yield build_graph(services, checkpointer=saver), owners
