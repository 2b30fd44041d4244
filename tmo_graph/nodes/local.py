"""answer_local: the on-device model answers; its token log-probs are kept for confidence."""

from __future__ import annotations

import time
from typing import Any

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from tmo_graph import costs
from tmo_graph.confidence import confidence
from tmo_graph.context import Context
from tmo_graph.prompts import text_dialogue
from tmo_graph.services import Services
from tmo_graph.state import CallRecord, State


def local_call(state: State, services: Services) -> tuple[CallRecord, float, dict[str, float]]:
    """Generate the local answer with its token scores, and measure it."""
    dialogue = text_dialogue(state.messages, state.recalled)
    start = time.perf_counter()
    text, stats = services.local.answer(dialogue)
    latency = time.perf_counter() - start
    earlier = [str(m.content) for m in state.messages if isinstance(m, AIMessage)]
    conf, parts = confidence(stats.logprobs, stats.entropies, text, earlier)
    device = costs.device(services.settings.device.profile)
    call = CallRecord(
        where="local",
        latency_s=round(latency, 4),
        cost_usd=costs.local_energy_cost_usd(
            latency, device.power_w, services.settings.device.usd_per_kwh
        ),
        ok=bool(text),
        text=text,
        input_tokens=0,
        output_tokens=len(stats.logprobs),
    )
    return call, conf, parts


def answer_local(state: State, runtime: Runtime[Context], services: Services) -> dict[str, Any]:
    call, conf, parts = local_call(state, services)
    return {"calls": [*state.calls, call], "confidence": conf, "confidence_parts": parts}
