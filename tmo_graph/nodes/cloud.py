"""answer_cloud: the cloud model answers with only the chosen views; a fault is recorded.

The images are made here and only here: each chosen view's file is downscaled to
``cloud.image_max_side`` and re-encoded into a data URL for this one request. The node makes
the attempts itself (the client's retries are off; :mod:`tmo_graph.faults`): at most
``cloud.max_attempts``, each within ``min(cloud.timeout_s, the latency left)`` where the
latency left keeps the local answer's share when the turn has none yet, and every attempt
through the endpoint's circuit breaker (an open one skips the call: "circuit open"). A
failed call is recorded with its error, attempts and breaker state; the graph's edge then
falls back to the local answer.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from langchain_core.messages import AIMessage
from langchain_openai.chat_models.base import BaseChatOpenAI
from langgraph.runtime import Runtime

from tmo_graph.context import Context
from tmo_graph.faults import (
    Attempts,
    EmptyAnswer,
    breaker_for,
    cloud_time_left_s,
    endpoint_of,
    run_attempts,
)
from tmo_graph.images import cloud_image
from tmo_graph.policy.base import LOCAL
from tmo_graph.privacy import Redactor
from tmo_graph.prompts import cloud_messages, message_text
from tmo_graph.services import Services
from tmo_graph.state import CallRecord, State
from tmo_graph.turn import budget_now, run_context


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def _failed(start: float, reason: str, attempts: Attempts | None = None) -> CallRecord:
    call = CallRecord(
        where="cloud",
        latency_s=round(time.perf_counter() - start, 4),
        cost_usd=0.0,
        ok=False,
        text="",
        input_tokens=0,
        output_tokens=0,
        error=reason,
    )
    if attempts is not None:
        call["cloud_attempts"] = attempts.records
        call["breaker"] = attempts.breaker
    return call


def _answered(reply: AIMessage) -> None:
    if not message_text(reply).strip():
        raise EmptyAnswer("the cloud model returned an empty answer")


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
        # Personal data in any text of the request (persona, recalled memory, history,
        # prompt) is replaced by placeholders first: it never leaves the device as typed.
        redactor = Redactor(tuple(services.settings.privacy.redact))
        messages = cloud_messages(
            state.messages,
            state.recalled,
            ctx.system_prompt,
            state.prompt,
            [(label, image.url) for label, image in zip(labels, sent, strict=True)],
            detail=cfg.image_detail,
            scrub=redactor.redact,
        )
    except Exception as exc:  # no model, an unreadable image: no attempt is made
        return {"calls": [_failed(start, _reason(exc))]}
    cloud = services.cloud
    assert cloud is not None

    def attempt(timeout: float) -> AIMessage:
        # ChatOpenAI takes a per-request timeout; other chat models keep their own.
        if isinstance(cloud, BaseChatOpenAI):
            return cloud.invoke(messages, timeout=timeout)
        return cloud.invoke(messages)

    has_local = any(c["where"] == "local" and c["ok"] for c in state.calls)
    local_share = 0.0 if has_local else services.costs.expected(LOCAL, 0).latency_s
    time_left = cloud_time_left_s(budget_now(state, ctx)["latency_s"], local_share)
    attempts = run_attempts(
        attempt,
        breaker_for(endpoint_of(cloud), cfg.breaker_failures, cfg.breaker_cooldown_s, cloud),
        timeout_s=cfg.timeout_s,
        time_left_s=time_left - (time.perf_counter() - start),
        max_attempts=cfg.max_attempts,
        check=_answered,
        describe=_reason,
    )
    if not attempts.ok:  # any cloud fault: record it; the edge falls back to local
        failed = _failed(start, attempts.error, attempts)
        failed["redactions"] = dict(redactor.counts)
        return {"calls": [failed]}
    reply = attempts.result
    text = message_text(reply).strip()
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
        cloud_attempts=attempts.records,
        breaker=attempts.breaker,
        redactions=dict(redactor.counts),
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
