"""answer_cloud: the cloud model answers with only the chosen views, within hard limits.

The images are made here and only here: each chosen view's file is downscaled to
``cloud.image_max_side`` and re-encoded into a data URL for this one request. Personal data
in every text of the request is replaced by placeholders (:mod:`tmo_graph.privacy`), which
are put back into the answer on the device.

Hard budgets: every request may cost at most what is left. Its input is counted at the most
it can be billed (one token per UTF-8 byte, images at the size sent), its ``max_tokens`` is
shrunk so the worst-case bill fits the money left (and, with a daily cap, is first reserved
in the user's ledger), and its timeout is cut to the time left. What a local fall-back would
need is kept back while the turn has no local answer. A request whose usage is unknown
(a timeout, a cut stream) is counted at its worst case.

The node makes the attempts itself (the client's retries are off; :mod:`tmo_graph.faults`):
at most ``cloud.max_attempts``, each through the endpoint's circuit breaker (an open one
skips the call: "circuit open"). Every request is one line of the audit log. A failed call
is recorded with its error, attempts and breaker state; the graph's edge then falls back to
the local answer.
"""

from __future__ import annotations

import logging
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

from tmo_graph.audit import AuditEntry, SentView, now_iso
from tmo_graph.context import Context
from tmo_graph.faults import (
    Attempts,
    BudgetReached,
    EmptyAnswer,
    breaker_for,
    classify,
    cloud_time_left_s,
    endpoint_of,
    run_attempts,
    within_deadline,
)
from tmo_graph.images import cloud_image, store_image
from tmo_graph.policy.budget import CALL_MARGIN_S, MIN_CLOUD_ANSWER_TOKENS
from tmo_graph.privacy import PLACEHOLDERS_EVENT, Redactor
from tmo_graph.prompts import cloud_messages, message_text
from tmo_graph.services import Services
from tmo_graph.state import CallRecord, State
from tmo_graph.turn import budget_now, local_reserve, run_context

log = logging.getLogger("tmo_graph.budget")
# Faults after which the endpoint may have generated (and billed) an answer we never saw.
_MAYBE_BILLED = ("timeout", "stream cut")


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
    assert cloud is not None
    costs = services.costs
    cap = services.settings.spending.daily_cost_cap_usd
    # The most this request's input can be billed, whatever the endpoint's tokenizer.
    input_cap = costs.cloud_input_tokens_at_most(
        [message_text(m) for m in messages], [(i.width, i.height) for i in sent]
    )
    reserve = local_reserve(state, ctx, services)
    charged: list[float] = []  # what each attempt cost (its worst case when unknown)
    usage_warnings: list[str] = []
    endpoint = endpoint_of(cloud)
    thread_id = str(get_config().get("configurable", {}).get("thread_id", ""))
    assert services.image_dir is not None
    sent_views = [  # names and content hashes only: the audit log never holds pixels
        SentView(name=v["name"], sha256=store_image(str(v["image"]), services.image_dir).sha256)
        for v in views
    ]

    def audit(outcome: str, max_tokens: int, seconds: float, tokens: tuple[int, int]) -> None:
        if services.audit is None:
            return
        services.audit.append(
            AuditEntry(
                time=now_iso(),
                thread_id=thread_id,
                user_id=ctx.user_id,
                model=endpoint[1],
                endpoint=urlsplit(endpoint[0]).netloc or endpoint[0].split("@")[0],
                attempt=len(charged),
                views=sent_views,
                redactions=dict(redactor.counts),
                input_tokens=tokens[0],
                output_tokens=tokens[1],
                max_tokens=max_tokens,
                cost_usd=charged[-1],
                seconds=round(seconds, 4),
                outcome=outcome,
            )
        )

    def limits() -> tuple[int, float]:
        """The answer tokens the next request may ask for, and its worst-case cost."""
        money = budget_now(state, ctx)["cost_usd"] - sum(charged) - reserve["cost_usd"]
        max_tokens = costs.answer_tokens_within(money, input_cap, cfg.max_tokens)
        return max_tokens, costs.cloud_call_usd(input_cap, max_tokens)

    def attempt(timeout: float) -> AIMessage:
        max_tokens, worst = limits()
        if max_tokens < MIN_CLOUD_ANSWER_TOKENS:
            raise BudgetReached(
                f"the money left does not pay for a {MIN_CLOUD_ANSWER_TOKENS}-token answer"
            )
        held = None
        if cap is not None and services.ledger is not None:
            held = services.ledger.reserve(ctx.user_id, worst, cap)
            if held is None:
                raise BudgetReached(f"user {ctx.user_id!r} reached the daily cap of {cap:g} USD")
        began = services.clock()
        try:
            reply = _invoke(cloud, messages, timeout, max_tokens)
        except Exception as exc:
            fault = classify(exc)
            charged.append(worst if fault.kind in _MAYBE_BILLED else 0.0)
            if held is not None:
                services.ledger.settle(held, charged[-1])  # type: ignore[union-attr]
            audit(fault.kind, max_tokens, services.clock() - began, (0, 0))
            raise
        tokens = _usage(reply)
        if services.settings.cloud.mode == "loopback":
            # The loopback stand-in is text-only and drops images unbilled; bill them as the
            # priced model would at the size sent (a real endpoint reports image tokens).
            tokens = (
                tokens[0] + sum(costs.image_tokens(i.width, i.height) for i in sent),
                tokens[1],
            )
        if tokens[0] > input_cap or tokens[1] > max_tokens:
            usage_warnings.append(
                f"the endpoint reported {tokens[0]} input / {tokens[1]} output tokens, more than "
                f"the request could hold ({input_cap} / {max_tokens}); the bill may exceed "
                "the budget"
            )
            log.warning("cloud usage above the request's limits: %s", usage_warnings[-1])
        charged.append(costs.cloud_call_usd(*tokens))
        if held is not None:
            services.ledger.settle(held, charged[-1])  # type: ignore[union-attr]
        audit("ok", max_tokens, services.clock() - began, tokens)
        reply.usage_metadata = {
            "input_tokens": tokens[0],
            "output_tokens": tokens[1],
            "total_tokens": sum(tokens),
        }
        return reply

    if limits()[0] < MIN_CLOUD_ANSWER_TOKENS:  # no request fits: none is made
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
        failed["cost_usd"] = sum(charged)
        failed["redactions"] = dict(redactor.counts)
        return {"calls": [failed], **_warned(state, usage_warnings)}
    reply = attempts.result
    text = redactor.restore(message_text(reply).strip())
    input_tokens, output_tokens = _usage(reply)
    call = CallRecord(
        where="cloud",
        latency_s=round(services.clock() - start, 4),
        cost_usd=sum(charged),
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
    return {"calls": [call], **_warned(state, usage_warnings)}


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
