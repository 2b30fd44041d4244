"""A turn's answer as OpenAI sends one: a ``chat.completion`` with ``x-tmo-*`` headers, or its
events as server-sent ``chat.completion.chunk``s ending in ``[DONE]``; both carry the turn
record as ``tmo``. An answer that calls tools returns them in OpenAI's shape: ``tool_calls``
in the message (plain) or in one ``delta`` (streamed), with ``finish_reason: "tool_calls"``."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

from tmo_graph.conversation import Token, turn_summary
from tmo_graph.server.errors import api_error
from tmo_graph.server.turns import Event, Finished


def completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(16)}"


def tmo_headers(info: Mapping[str, Any]) -> dict[str, str]:
    """The turn record (``tmo``) as response headers."""
    left = info["budget_left"]
    confidence = info["confidence"]
    return {
        "x-tmo-thread-id": info["thread_id"],
        "x-tmo-turn": str(info["turn"]),  # 0-based: which turn of the thread this answers
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


def openai_tool_calls(record: Mapping[str, Any], stream: bool = False) -> list[dict[str, Any]]:
    """The turn's tool calls as OpenAI sends them (``arguments`` as JSON text); streamed
    ones carry their ``index``."""
    out = []
    for i, call in enumerate(record.get("tool_calls") or []):
        arguments = json.dumps(call.get("args") or {})
        entry = {"id": call.get("id") or f"call_{secrets.token_hex(12)}", "type": "function"}
        entry["function"] = {"name": call["name"], "arguments": arguments}
        out.append({"index": i, **entry} if stream else entry)
    return out


def completion(model: str, finished: Finished, thread_id: str) -> dict[str, Any]:
    """The plain response of a finished turn; an answer that calls tools carries them in
    ``message.tool_calls`` and finishes with ``"tool_calls"``."""
    record = finished.done.record
    message: dict[str, Any] = {"role": "assistant", "content": record["answer"], "refusal": None}
    calls = openai_tool_calls(record)
    if calls:
        message["tool_calls"] = calls
        message["content"] = record["answer"] or None
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if calls else "stop",
            }
        ],
        "usage": finished.usage.as_dict(),
        "tmo": turn_summary(record, thread_id),
    }


def _chunk(
    chunk_id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    include_usage: bool,
    **extra: Any,
) -> str:
    body: dict[str, Any] = {
        "id": chunk_id,
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


def _delta(
    delta: dict[str, Any], finish: Literal["stop", "tool_calls"] | None = None
) -> list[dict[str, Any]]:
    return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]


KEEPALIVE = ": keep-alive\n\n"  # an SSE comment: clients ignore it, the connection stays open


async def _events(queue: asyncio.Queue[Event], keepalive_s: float) -> AsyncIterator[Event | None]:
    """The queue's events, and None after each ``keepalive_s`` without one."""
    while True:
        # One pending get, waited on in slices: a timeout never loses an event.
        get = asyncio.ensure_future(queue.get())
        try:
            while not get.done():
                await asyncio.wait({get}, timeout=keepalive_s)
                if not get.done():
                    yield None
        finally:
            if not get.done():
                get.cancel()  # the client left: the turn still runs to its end
        yield get.result()


async def sse(
    queue: asyncio.Queue[Event],
    model: str,
    thread_id: str,
    include_usage: bool,
    keepalive_s: float,
) -> AsyncIterator[str]:
    """The turn's events as server-sent chunks: the role at once, each token, the stop with
    the turn record, the usage when asked, ``[DONE]``; a failure as an error event. While
    nothing comes (a cascade holds its draft back until it is decided), a keep-alive comment
    every ``keepalive_s``, so a client's or a proxy's read timeout does not cut the turn."""
    chunk_id, created = completion_id(), int(time.time())
    role = {"role": "assistant", "content": ""}
    yield _chunk(chunk_id, created, model, _delta(role), include_usage)
    async for event in _events(queue, keepalive_s):
        if event is None:
            yield KEEPALIVE
            continue
        if isinstance(event, BaseException):
            # Mid-stream failure: OpenAI sends an error event; its client raises on it.
            yield f"data: {json.dumps(api_error(event).body())}\n\n"
            return
        if isinstance(event, Token):
            delta = _delta({"content": event.text})
            yield _chunk(chunk_id, created, model, delta, include_usage)
        else:
            info = turn_summary(event.done.record, thread_id)
            calls = openai_tool_calls(event.done.record, stream=True)
            if calls:  # each call whole, in one chunk, before the finish
                delta = _delta({"tool_calls": calls})
                yield _chunk(chunk_id, created, model, delta, include_usage)
            stop = _delta({}, "tool_calls" if calls else "stop")
            yield _chunk(chunk_id, created, model, stop, include_usage, tmo=info)
            if include_usage:
                last = _chunk(chunk_id, created, model, [], False, tmo=info)
                usage = json.loads(last[len("data: ") :])
                usage["usage"] = event.usage.as_dict()
                yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"
            return
