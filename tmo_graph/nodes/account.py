"""account: the turn's measured latency and cost, the budget left, and the turn record.

It also closes the turn: the per-turn scratch is cleared, so what the thread stores between
turns is the dialogue, the views (as references), the budgets and the records.

When a turn takes the dialogue's spend of either budget, or the user's spend of the day
(with a daily cap), past ``spending.warn_fraction`` (80 %), it warns once: a WARNING on the
``tmo_graph.budget`` logger, a LangChain custom event :data:`BUDGET_WARNING_EVENT` (callback
handlers' ``on_custom_event``, ``astream_events``), and a line in the turn record's warnings.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from langchain_core.callbacks import dispatch_custom_event
from langchain_core.messages import AIMessage

from tmo_graph.context import Context
from tmo_graph.costs.device import cloud_attempt_failed
from tmo_graph.services import Services
from tmo_graph.state import Budget, CallRecord, State, TurnRecord
from tmo_graph.turn import budget_before_turn, budget_now, offers_tools, spent

log = logging.getLogger("tmo_graph.budget")
BUDGET_WARNING_EVENT = "tmo_budget_warning"

# What account writes to end the turn: the scratch fields back to empty.
CLEARED_SCRATCH: dict[str, Any] = {
    "prompt": "",
    "task": "",
    "candidates": [],
    "recalled": [],
    "decision": None,
    "calls": None,  # the reducer's "clear"
    "local_tokens": None,
    "confidence": None,
    "confidence_parts": {},
    "escalated": False,
    "warnings": [],
    "transcripts": {},
    "transcription_s": 0.0,
    "device": None,
    "tools": [],
    "tool_choice": None,
}


def final_call(calls: list[CallRecord]) -> CallRecord:
    """The answer the user gets: the last successful call (cloud over an escalated local)."""
    for call in reversed(calls):
        if call["ok"]:
            return call
    return calls[-1]


def account(state: State, context: Context, services: Services) -> dict[str, Any]:
    assert state.decision is not None and state.calls
    answer = final_call(state.calls)
    used, now = spent(state.calls, state.transcription_s), budget_now(state, context)
    left = Budget(latency_s=round(now["latency_s"], 4), cost_usd=round(now["cost_usd"], 8))
    failed_cloud = [c for c in state.calls if c["where"] == "cloud" and not c["ok"]]
    record = TurnRecord(
        turn=state.turn_count,
        task=state.task,
        policy=state.decision["policy"],
        route=answer["where"],
        views_sent=list(state.decision["views"]) if answer["where"] == "cloud" else [],
        association={c["name"]: c["score"] for c in state.candidates},
        confidence=state.confidence,
        escalated=state.escalated and answer["where"] == "cloud",
        fallback=failed_cloud[-1].get("error", "error") if failed_cloud else None,
        latency_s=round(used["latency_s"], 4),
        cost_usd=round(used["cost_usd"], 8),
        budget_left=left,
        answer=answer["text"],
        local_answer=next(
            (c["text"] for c in state.calls if c["where"] == "local" and c is not answer), None
        ),
        masked=list(state.decision["masked"]),
        input_tokens=sum(c["input_tokens"] for c in state.calls),
        output_tokens=sum(c["output_tokens"] for c in state.calls),
        user=context.user_id,
    )
    cloud_calls = [c for c in state.calls if c["where"] == "cloud"]
    if cloud_calls:  # the cloud's attempts and faults, and its circuit breaker after them
        record["cloud_attempts"] = [a for c in cloud_calls for a in c.get("cloud_attempts", [])]
        if "breaker" in cloud_calls[-1]:
            record["breaker"] = cloud_calls[-1]["breaker"]
        redactions: dict[str, int] = {}
        for call in cloud_calls:
            for kind, n in call.get("redactions", {}).items():
                redactions[kind] = redactions.get(kind, 0) + n
        record["redactions"] = redactions
    if state.transcripts:  # the turn had clips: which left as audio, and what was heard
        record["audio_sent"] = list(
            dict.fromkeys(n for c in cloud_calls for n in c.get("audio_sent", []))
        )
        record["transcripts"] = dict(state.transcripts)
        record["transcription_s"] = round(state.transcription_s, 4)
    if state.device is not None:
        record["device"] = state.device
    _measure_cloud(state, services)
    calls = answer.get("tool_calls") or []
    if calls:
        record["tool_calls"] = calls
    warnings = [*state.warnings, *_budget_warnings(state, context, services, left)]
    if offers_tools(state) and answer["where"] == "local":
        # The device model cannot call tools (the route's rule): say the turn had none.
        warnings.append("tools were offered but the turn was answered on the device without them")
    if warnings:
        record["warnings"] = warnings
    # The streamed answer's id: a chat UI that showed its tokens sees no second copy.
    reply = AIMessage(
        content=answer["text"],
        tool_calls=calls,
        id=answer.get("message_id"),
        response_metadata={"route": answer["where"]},
    )
    return {
        **CLEARED_SCRATCH,
        "messages": [reply],
        "turns": [record],
        "budget_left": left,
        "turn_count": state.turn_count + 1,
    }


def _measure_cloud(state: State, services: Services) -> None:
    """The turn's cloud attempts into the endpoint's estimates: each answered attempt's
    seconds against what the configured profile expected, each endpoint fault a failure."""
    device = services.device
    if device is None or state.decision is None:
        return
    views = len(state.decision["views"])
    for call in state.calls:
        if call["where"] != "cloud":
            continue
        for attempt in call.get("cloud_attempts", []):
            failed = cloud_attempt_failed(attempt)
            if failed:
                device.observe_cloud_failure()
            elif failed is not None and call["ok"]:
                expected = services.base_costs.cloud_seconds(views, call["output_tokens"])
                device.observe_cloud(float(attempt["seconds"]), expected)


def _crossed(total: float, left_before: float, left_after: float, fraction: float) -> bool:
    return total - left_before < fraction * total <= total - left_after


def _budget_warnings(state: State, context: Context, services: Services, left: Budget) -> list[str]:
    """The budgets this turn took past the warning share, each warned about once."""
    fraction = services.settings.spending.warn_fraction
    before = budget_before_turn(state, context)
    crossed: list[tuple[str, float, float]] = []  # (what, spent, of)
    if _crossed(context.latency_budget_s, before["latency_s"], left["latency_s"], fraction):
        crossed.append(
            ("latency", context.latency_budget_s - left["latency_s"], context.latency_budget_s)
        )
    if _crossed(context.cost_budget_usd, before["cost_usd"], left["cost_usd"], fraction):
        crossed.append(
            ("cost", context.cost_budget_usd - left["cost_usd"], context.cost_budget_usd)
        )
    cap = context.daily_cap(services.settings.spending.daily_cost_cap_usd)
    if cap is not None:
        today = services.spend_ledger().spent(context.user_id)
        this_turn = sum(c["cost_usd"] for c in state.calls if c["where"] == "cloud")
        if _crossed(cap, cap - (today - this_turn), cap - today, fraction):
            crossed.append(("daily cost", today, cap))
    out = []
    for what, used, of in crossed:
        unit = "s" if what == "latency" else "USD"
        message = f"{what} budget {used / of:.0%} spent ({used:.4g} of {of:.4g} {unit})"
        log.warning("user %s: %s", context.user_id, message)
        data = {"budget": what, "spent": used, "of": of, "user_id": context.user_id}
        with contextlib.suppress(RuntimeError):  # outside a run there is no one to tell
            dispatch_custom_event(BUDGET_WARNING_EVENT, data)
        out.append(message)
    return out
