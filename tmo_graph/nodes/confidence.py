"""check_confidence: keep a sure local answer; escalate an unsure one once, if affordable."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from langgraph.runtime import Runtime

from tmo_graph.context import Context
from tmo_graph.nodes.route import route_input
from tmo_graph.policy.simple import best_cloud_action, make_policy
from tmo_graph.services import Services
from tmo_graph.state import Budget, Decision, State


def check_confidence(state: State, runtime: Runtime[Context], services: Services) -> dict[str, Any]:
    ctx = runtime.context
    policy = make_policy(ctx)
    unsure = state.confidence is None or state.confidence < ctx.confidence_threshold
    if state.escalated or not policy.escalates or not unsure:
        return {}
    # The escalation must fit in what is left after the local call.
    assert state.budget_left is not None
    left = Budget(
        latency_s=state.budget_left["latency_s"] - sum(c["latency_s"] for c in state.calls),
        cost_usd=state.budget_left["cost_usd"] - sum(c["cost_usd"] for c in state.calls),
    )
    observation = route_input(state, services, budget=left)
    cloud_only = {a: cost for a, cost in observation.allowed.items() if a.route == "cloud"}
    action = best_cloud_action(replace(observation, allowed=cloud_only), ctx.min_view_score)
    if action is None:
        return {}
    masked = state.decision["masked"] if state.decision else []
    return {
        "escalated": True,
        "decision": Decision(
            route="cloud", views=list(action.views), policy=policy.name, masked=masked
        ),
    }


def after_confidence(state: State) -> Literal["answer_cloud", "account"]:
    cloud_called = any(c["where"] == "cloud" for c in state.calls)
    return "answer_cloud" if state.escalated and not cloud_called else "account"
