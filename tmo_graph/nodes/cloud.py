"""answer_cloud: the cloud model answers with only the chosen views; a fault is recorded.

The images are made here and only here: each chosen view's file is downscaled to
``cloud.image_max_side`` and re-encoded into a data URL for this one request. A failed call
is recorded with its error; the graph's edge then falls back to the local answer.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from langgraph.runtime import Runtime

from tmo_graph.context import Context
from tmo_graph.images import cloud_image
from tmo_graph.prompts import cloud_messages, message_text
from tmo_graph.services import Services
from tmo_graph.state import CallRecord, State
from tmo_graph.turn import run_context


def _failed(start: float, exc: Exception) -> CallRecord:
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return CallRecord(
        where="cloud",
        latency_s=round(time.perf_counter() - start, 4),
        cost_usd=0.0,
        ok=False,
        text="",
        input_tokens=0,
        output_tokens=0,
        error=reason,
    )


def answer_cloud(state: State, runtime: Runtime[Context], services: Services) -> dict[str, Any]:
    assert state.decision is not None
    ctx = run_context(runtime, services.default_context)
    chosen = set(state.decision["views"])
    views = [c for c in state.candidates if c["name"] in chosen and c["image"]]
    start = time.perf_counter()
    try:
        if services.cloud is None:
            raise RuntimeError("no cloud model is configured")
        cfg = services.settings.cloud
        sent = [cloud_image(str(v["image"]), cfg.image_max_side) for v in views]
        labels = [
            "Attached image" if v["kind"] == "inline" else f"Camera view '{v['name']}'"
            for v in views
        ]
        messages = cloud_messages(
            state.messages,
            state.recalled,
            ctx.system_prompt,
            state.prompt,
            [(label, image.url) for label, image in zip(labels, sent, strict=True)],
            detail=cfg.image_detail,
        )
        reply = services.cloud.invoke(messages)
        text = message_text(reply).strip()
        if not text:
            raise RuntimeError("the cloud model returned an empty answer")
    except Exception as exc:  # any cloud fault: record it; the edge falls back to local
        return {"calls": [_failed(start, exc)]}
    latency = time.perf_counter() - start
    usage = getattr(reply, "usage_metadata", None) or {}
    input_tokens = int(usage.get("input_tokens", 0))
    output_tokens = int(usage.get("output_tokens", 0))
    if services.settings.cloud.mode == "loopback":
        # The loopback stand-in is text-only and drops images unbilled; bill them as the
        # priced model would at the size sent (a real endpoint reports image tokens itself).
        input_tokens += sum(services.costs.image_tokens(i.width, i.height) for i in sent)
    call = CallRecord(
        where="cloud",
        latency_s=round(latency, 4),
        cost_usd=services.costs.cloud_call_usd(input_tokens, output_tokens),
        ok=True,
        text=text,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )
    if reply.id:
        call["message_id"] = reply.id
    return {"calls": [call]}


def after_cloud(state: State) -> Literal["answered", "fall back"]:
    """A failed cloud call falls back to a local answer (answer_local), unless the turn
    already has one; otherwise the turn is answered (account)."""
    if state.calls and state.calls[-1]["ok"]:
        return "answered"
    has_local = any(c["where"] == "local" and c["ok"] for c in state.calls)
    return "answered" if has_local else "fall back"
