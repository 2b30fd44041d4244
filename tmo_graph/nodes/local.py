"""answer_local: the on-device model answers; its token scores are kept for the check.

A local answer that may still be replaced by the cloud (the policy escalates, no cloud call
has been made yet) is generated with the tag ``draft``, so a chat UI streaming the run can
show it as provisional or hold it back.
"""

from __future__ import annotations

import time
from typing import Any

from langgraph.runtime import Runtime

from tmo_graph.context import Context
from tmo_graph.policy.simple import make_policy
from tmo_graph.prompts import text_dialogue
from tmo_graph.services import Services
from tmo_graph.state import CallRecord, State, TokenTrace
from tmo_graph.turn import run_context

DRAFT_TAG = "draft"


def answer_local(state: State, runtime: Runtime[Context], services: Services) -> dict[str, Any]:
    ctx = run_context(runtime, services.default_context)
    may_be_replaced = (
        services.cloud is not None
        and make_policy(ctx).escalates
        and not any(c["where"] == "cloud" for c in state.calls)
    )
    dialogue = text_dialogue(state.messages, state.recalled, ctx.system_prompt)
    start = time.perf_counter()
    text, stats = services.local.answer(dialogue, tags=[DRAFT_TAG] if may_be_replaced else None)
    latency = time.perf_counter() - start
    call = CallRecord(
        where="local",
        latency_s=round(latency, 4),
        cost_usd=services.costs.local_call_usd(latency),
        ok=bool(text),
        text=text,
        input_tokens=0,
        output_tokens=len(stats.logprobs),
    )
    if message_id := getattr(stats, "message_id", None):
        call["message_id"] = message_id
    trace = TokenTrace(logprobs=list(stats.logprobs), entropies=list(stats.entropies))
    update: dict[str, Any] = {"calls": [call], "local_tokens": trace}
    if warnings := list(getattr(stats, "warnings", None) or []):  # e.g. the prompt was cut
        update["warnings"] = [*state.warnings, *warnings]
    return update
