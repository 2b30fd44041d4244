"""A turn's answer as OpenAI sends one: a ``chat.completion`` with ``x-tmo-*`` headers, or its
events as server-sent ``chat.completion.chunk``s ending in ``[DONE]``; both carry the turn
record as ``tmo``."""

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


def completion(model: str, finished: Finished, thread_id: str) -> dict[str, Any]:
    """The plain response of a finished turn."""
    record = finished.done.record
    return {
        "id": completion_id(),
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


def _delta(delta: dict[str, Any], finish: Literal["stop"] | None = None) -> list[dict[str, Any]]:
    return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]


async def sse(
    queue: asyncio.Queue[Event],
    first: Event,
    model: str,
    thread_id: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    """The turn's events as server-sent chunks: the role, each token, the stop with the turn
    record, the usage when asked, ``[DONE]``; a failure mid-stream as an error event."""
    chunk_id, created = completion_id(), int(time.time())
    role = {"role": "assistant", "content": ""}
    yield _chunk(chunk_id, created, model, _delta(role), include_usage)
    event = first
    while True:
        if isinstance(event, BaseException):
            # Mid-stream failure: OpenAI sends an error event; its client raises on it.
            yield f"data: {json.dumps(api_error(event).body())}\n\n"
            return
        if isinstance(event, Token):
            delta = _delta({"content": event.text})
            yield _chunk(chunk_id, created, model, delta, include_usage)
        else:
            info = turn_summary(event.done.record, thread_id)
            stop = _delta({}, "stop")
            yield _chunk(chunk_id, created, model, stop, include_usage, tmo=info)
            if include_usage:
                last = _chunk(chunk_id, created, model, [], False, tmo=info)
                usage = json.loads(last[len("data: ") :])
                usage["usage"] = event.usage.as_dict()
                yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"
            return
        event = await queue.get()
