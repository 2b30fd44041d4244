"""answer_cloud: the cloud model answers with only the chosen views; faults fall back."""

from __future__ import annotations

import time
from typing import Any

from langgraph.runtime import Runtime

from tmo_graph import costs
from tmo_graph.context import Context
from tmo_graph.nodes.local import local_call
from tmo_graph.policy.budget import price_table
from tmo_graph.prompts import cloud_messages, message_text
from tmo_graph.services import Services
from tmo_graph.state import CallRecord, State


def answer_cloud(state: State, runtime: Runtime[Context], services: Services) -> dict[str, Any]:
    assert state.decision is not None
    chosen = set(state.decision["views"])
    views = [c for c in state.candidates if c["name"] in chosen]
    messages = cloud_messages(state.messages, state.recalled, state.prompt, views)
    start = time.perf_counter()
    try:
        if services.cloud is None:
            raise RuntimeError("no cloud model is configured")
        reply = services.cloud.invoke(messages)
        text = message_text(reply).strip()
        if not text:
            raise RuntimeError("the cloud model returned an empty answer")
    except Exception as exc:  # any cloud fault: keep the turn alive with the local answer
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        failed = CallRecord(
            where="cloud",
            latency_s=round(time.perf_counter() - start, 4),
            cost_usd=0.0,
            ok=False,
            text="",
            input_tokens=0,
            output_tokens=0,
        )
        update: dict[str, Any] = {"fallback": reason, "calls": [*state.calls, failed]}
        if not any(c["where"] == "local" and c["ok"] for c in state.calls):
            local, conf, parts = local_call(state, services)
            update.update(
                calls=[*state.calls, failed, local], confidence=conf, confidence_parts=parts
            )
        return update
    latency = time.perf_counter() - start
    usage = getattr(reply, "usage_metadata", None) or {}
    input_tokens = int(usage.get("input_tokens", 0))
    output_tokens = int(usage.get("output_tokens", 0))
    price = costs.price_for(services.settings.cloud.price_as, price_table(services.settings))
    if services.settings.cloud.mode == "loopback":
        # The loopback stand-in is text-only and drops images unbilled; bill them as the
        # priced model would (a real endpoint reports image tokens in its usage).
        input_tokens += len(views) * price.tokens_per_image
    call = CallRecord(
        where="cloud",
        latency_s=round(latency, 4),
        cost_usd=costs.cloud_call_cost_usd(price, input_tokens, output_tokens),
        ok=True,
        text=text,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )
    return {"calls": [*state.calls, call]}
