"""route: the policy picks local or cloud (and which views), within the budget left; the cloud
call an unsure local answer would escalate to is chosen here too, from the same mask."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from langgraph.runtime import Runtime

from tmo_graph.context import Context
from tmo_graph.policy.base import LOCAL, Action, RouteInput
from tmo_graph.policy.budget import all_actions
from tmo_graph.policy.simple import best_cloud_action, make_policy
from tmo_graph.services import Services
from tmo_graph.state import Decision, State
from tmo_graph.turn import budget_before_turn, earlier_prompts, prompt_chars, run_context


def candidate_actions(state: State) -> list[Action]:
    """Local, and the cloud with every subset of the views that have an image to send."""
    return all_actions([c["name"] for c in state.candidates if c["image"]])


def quality_gap(state: State, services: Services) -> float | None:
    """The predicted cloud-minus-local answer score for this prompt, if there is a predictor."""
    if services.gap_predictor is None:
        return None
    before = earlier_prompts(state.messages, 1)
    return services.gap_predictor.predict_gap(
        services.embed(state.prompt),
        state.task,
        services.embed(before[0]) if before else None,
    )


def route_input(state: State, ctx: Context, services: Services) -> RouteInput:
    """The policy's view of the turn, with the actions the budget left allows."""
    budget = budget_before_turn(state, ctx)
    actions = [LOCAL] if services.cloud is None else candidate_actions(state)
    allowed, _ = services.costs.affordable(actions, budget, prompt_chars(state))
    return RouteInput(
        prompt=state.prompt,
        task=state.task,
        turn=state.turn_count,
        candidates=state.candidates,
        history=state.turns,
        budget_left=budget,
        allowed=allowed,
        quality_gap=quality_gap(state, services),
    )


def route(state: State, runtime: Runtime[Context], services: Services) -> dict[str, Any]:
    ctx = run_context(runtime, services.default_context)
    policy = make_policy(ctx)
    observation = route_input(state, ctx, services)
    action = policy.decide(observation)
    if action not in observation.allowed:  # the budget wins over the policy
        action = LOCAL
    escalation = None
    if action == LOCAL and policy.escalates:
        # Within the budget as it stands now; check_confidence re-checks it after the local
        # call has spent its share.
        cloud_only = {a: c for a, c in observation.allowed.items() if a.route == "cloud"}
        target = best_cloud_action(replace(observation, allowed=cloud_only), ctx.min_view_score)
        escalation = list(target.views) if target is not None else None
    masked = sorted(a.label for a in candidate_actions(state) if a not in observation.allowed)
    return {
        "decision": Decision(
            route=action.route,
            views=list(action.views),
            policy=policy.name,
            masked=masked,
            escalation=escalation,
        )
    }


def after_route(state: State) -> Literal["answer_local", "answer_cloud"]:
    assert state.decision is not None
    return "answer_cloud" if state.decision["route"] == "cloud" else "answer_local"
