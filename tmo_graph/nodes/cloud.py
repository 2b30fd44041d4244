"""answer_cloud: the cloud model answers with only the chosen views, within hard limits.

The images are made here and only here: each chosen view's file is downscaled to
``cloud.image_max_side`` and re-encoded into a data URL for this one request. Personal data
in every text of the request is replaced by placeholders (:mod:`tmo_graph.privacy`), which
are put back into the answer on the device.

Hard budgets: every request may cost at most what is left. Its input is counted at the most
it can be billed (one token per UTF-8 byte, images at the size sent) and
:class:`tmo_graph.metering.CloudMeter` sizes, reserves, settles and audits each request; the
request is streamed and cut at the time left. What a local fall-back would need is kept back
while the turn has no local answer.

The node makes the attempts itself (the client's retries are off; :mod:`tmo_graph.faults`):
at most ``cloud.max_attempts``, each through the endpoint's circuit breaker (an open one
skips the call: "circuit open"). Every request is one line of the audit log. A failed call
is recorded with its error, attempts and breaker state; the graph's edge then falls back to
the local answer.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    message_chunk_to_message,
)
from langchain_openai.chat_models.base import BaseChatOpenAI
from langgraph.config import get_config
from langgraph.runtime import Runtime

from tmo_graph.audit import SentView
from tmo_graph.context import Context
from tmo_graph.faults import (
    Attempts,
    EmptyAnswer,
    breaker_for,
    classify,
    cloud_time_left_s,
    endpoint_of,
    run_attempts,
    within_deadline,
)
from tmo_graph.images import cloud_image, store_image
from tmo_graph.metering import CloudMeter
from tmo_graph.policy.budget import CALL_MARGIN_S
from tmo_graph.privacy import PLACEHOLDERS_EVENT, Redactor
from tmo_graph.prompts import cloud_messages, message_text
from tmo_graph.services import Services
from tmo_graph.state import CallRecord, State
from tmo_graph.turn import budget_now, local_reserve, run_context


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def _failed(seconds: float, reason: str, attempts: Attempts | None = None) -> CallRecord:
    call = CallRecord(
        where="cloud",
        latency_s=round(seconds, 4),
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
    start = services.clock()
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
        redactor = Redactor(tuple(services.settings.privacy.redact), known=state.personal)
        messages = cloud_messages(
            state.messages,
            state.recalled,
            ctx.system_prompt,
            state.prompt,
            [(label, image.url) for label, image in zip(labels, sent, strict=True)],
            detail=cfg.image_detail,
            scrub=redactor.redact,
        )
        if redactor.placeholders:
            # The user's own values, to the device-side stream only (never into the state), so
            # a streaming caller can show the cloud's tokens with the values put back.
            placeholders = {p: v for v, p in redactor.placeholders.items()}
            runtime.stream_writer({PLACEHOLDERS_EVENT: placeholders})
    except Exception as exc:  # no model, an unreadable image: no attempt is made
        return {"calls": [_failed(services.clock() - start, _reason(exc))]}
    cloud = services.cloud
    assert cloud is not None and services.image_dir is not None
    endpoint = endpoint_of(cloud)
    reserve = local_reserve(state, ctx, services)
    daily_cap = ctx.daily_cap(services.settings.spending.daily_cost_cap_usd)
    meter = CloudMeter(
        costs=services.costs,
        # The most this request's input can be billed, whatever the endpoint's tokenizer.
        input_cap=services.costs.cloud_input_tokens_at_most(
            [message_text(m) for m in messages], [(i.width, i.height) for i in sent]
        ),
        max_tokens=ctx.answer_tokens(cfg.max_tokens),
        money_left=lambda: budget_now(state, ctx)["cost_usd"] - reserve["cost_usd"],
        user_id=ctx.user_id,
        ledger=services.spend_ledger() if daily_cap is not None else None,
        daily_cap_usd=daily_cap,
        audit=services.audit,
        key_id=ctx.api_key_id,
        thread_id=str(get_config().get("configurable", {}).get("thread_id", "")),
        model=endpoint[1],
        endpoint=urlsplit(endpoint[0]).netloc or endpoint[0].split("@")[0],
        views=[  # names and content hashes only: the audit log never holds pixels
            SentView(name=v["name"], sha256=store_image(str(v["image"]), services.image_dir).sha256)
            for v in views
        ],
        redactions=redactor.counts,
    )

    def attempt(timeout: float) -> AIMessage:
        ticket = meter.begin()
        began = services.clock()
        try:
            reply = _invoke(cloud, messages, timeout, ticket.max_tokens)
        except Exception as exc:
            meter.failed(ticket, classify(exc).kind, services.clock() - began)
            raise
        input_tokens, output_tokens = _usage(reply)
        if cfg.mode == "loopback":
            # The loopback stand-in is text-only and drops images unbilled; bill them as the
            # priced model would at the size sent (a real endpoint reports image tokens).
            input_tokens += sum(services.costs.image_tokens(i.width, i.height) for i in sent)
        meter.answered(ticket, (input_tokens, output_tokens), services.clock() - began)
        reply.usage_metadata = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        }
        return reply

    if not meter.affordable():  # no request fits: none is made
        failed = _failed(
            services.clock() - start,
            "budget reached: the money left does not pay for a cloud answer",
        )
        failed["redactions"] = dict(redactor.counts)
        return {"calls": [failed]}
    time_left = (
        cloud_time_left_s(budget_now(state, ctx)["latency_s"], reserve["latency_s"]) - CALL_MARGIN_S
    )
    attempts = run_attempts(
        attempt,
        breaker_for(endpoint, cfg.breaker_failures, cfg.breaker_cooldown_s, cloud, services.clock),
        timeout_s=cfg.timeout_s,
        time_left_s=time_left - (services.clock() - start),
        max_attempts=cfg.max_attempts,
        check=_answered,
        clock=services.clock,
        sleep=services.sleep,
        describe=_reason,
    )
    if not attempts.ok:  # any cloud fault: record it; the edge falls back to local
        failed = _failed(services.clock() - start, attempts.error, attempts)
        failed["cost_usd"] = sum(meter.charged)
        failed["redactions"] = dict(redactor.counts)
        return {"calls": [failed], **_warned(state, meter.warnings)}
    reply = attempts.result
    text = redactor.restore(message_text(reply).strip())
    input_tokens, output_tokens = _usage(reply)
    call = CallRecord(
        where="cloud",
        latency_s=round(services.clock() - start, 4),
        cost_usd=sum(meter.charged),
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
    return {"calls": [call], **_warned(state, meter.warnings)}


def _invoke(
    cloud: Any, messages: Sequence[BaseMessage], timeout: float, max_tokens: int
) -> AIMessage:
    """One request, streamed and cut at ``timeout`` seconds whatever the server does."""
    kwargs: dict[str, Any] = {"max_tokens": max_tokens}
    if isinstance(cloud, BaseChatOpenAI):  # other chat models keep their own timeouts
        kwargs["timeout"] = timeout

    def consume(stop: threading.Event) -> AIMessage:
        answer: AIMessageChunk | None = None
        for chunk in cloud.stream(messages, **kwargs):
            answer = chunk if answer is None else answer + chunk
            if stop.is_set():  # the caller gave up: close the stream, stop paying
                break
        if answer is None:
            raise EmptyAnswer("the cloud model sent no answer")
        reply = message_chunk_to_message(answer)
        assert isinstance(reply, AIMessage)
        return reply

    return within_deadline(consume, timeout)


def _usage(reply: AIMessage) -> tuple[int, int]:
    usage = reply.usage_metadata
    if usage is None:
        return 0, 0
    return int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))


def _warned(state: State, warnings: list[str]) -> dict[str, Any]:
    return {"warnings": [*state.warnings, *warnings]} if warnings else {}


def after_cloud(state: State) -> Literal["answered", "fall back"]:
    """A failed cloud call falls back to a local answer (answer_local), unless the turn
    already has one; otherwise the turn is answered (account)."""
    if state.calls and state.calls[-1]["ok"]:
        return "answered"
    has_local = any(c["where"] == "local" and c["ok"] for c in state.calls)
    return "answered" if has_local else "fall back"
