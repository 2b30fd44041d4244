"""account: the turn's measured latency and cost, the budget left, and the turn record."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from tmo_graph.context import Context
from tmo_graph.services import Services
from tmo_graph.state import Budget, CallRecord, State, TurnRecord


def final_call(calls: list[CallRecord]) -> CallRecord:
    """The answer the user gets: the last successful call (cloud over an escalated local)."""
    for call in reversed(calls):
        if call["ok"]:
            return call
    return calls[-1]


def account(state: State, runtime: Runtime[Context], services: Services) -> dict[str, Any]:
    assert state.budget_left is not None and state.decision is not None and state.calls
    answer = final_call(state.calls)
    latency = sum(c["latency_s"] for c in state.calls)
    cost = sum(c["cost_usd"] for c in state.calls)
    left = Budget(
        latency_s=round(state.budget_left["latency_s"] - latency, 4),
        cost_usd=round(state.budget_left["cost_usd"] - cost, 8),
    )
    sent = state.decision["views"] if answer["where"] == "cloud" else []
    record = TurnRecord(
        turn=state.turn_count,
        task=state.task,
        policy=state.decision["policy"],
        route=answer["where"],
        views_sent=list(sent),
        association={c["name"]: c["score"] for c in state.candidates},
        confidence=state.confidence,
        escalated=state.escalated and answer["where"] == "cloud",
        fallback=state.fallback,
        latency_s=round(latency, 4),
        cost_usd=round(cost, 8),
        budget_left=left,
        answer=answer["text"],
        local_answer=next(
            (c["text"] for c in state.calls if c["where"] == "local" and c is not answer), None
        ),
    )
    reply = AIMessage(content=answer["text"], response_metadata={"route": answer["where"]})
    return {
        "messages": [reply],
        "turns": [record],
        "budget_left": left,
        "turn_count": state.turn_count + 1,
    }
