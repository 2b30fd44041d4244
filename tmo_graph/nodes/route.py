"""route: the policy picks local or cloud (and which views), within the budget left."""

from __future__ import annotations

from typing import Any, Literal

from langgraph.runtime import Runtime

from tmo_graph.context import Context
from tmo_graph.nodes.modality import earlier_prompts
from tmo_graph.policy.base import LOCAL, Action, RouteInput
from tmo_graph.policy.budget import affordable, all_actions
from tmo_graph.policy.simple import make_policy
from tmo_graph.services import Services
from tmo_graph.state import Budget, Decision, State


def prompt_chars(state: State) -> int:
    """Characters the cloud would read this turn: history, recalled memory and prompt."""
    history = sum(len(str(m.content)) for m in state.messages[:-1])
    return history + sum(len(r["text"]) for r in state.recalled) + len(state.prompt)


def candidate_actions(state: State) -> list[Action]:
    """Local, and the cloud with every subset of the views that have an image to send."""
    return all_actions([c["name"] for c in state.candidates if c["url"]])


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


def route_input(state: State, services: Services, budget: Budget | None = None) -> RouteInput:
    """The policy's view of the turn, with the mask for ``budget`` (default: what is left)."""
    budget = budget or state.budget_left
    assert budget is not None
    actions = [LOCAL] if services.cloud is None else candidate_actions(state)
    allowed, _ = affordable(actions, budget, prompt_chars(state), services.settings)
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
    policy = make_policy(runtime.context)
    observation = route_input(state, services)
    action = policy.decide(observation)
    if action not in observation.allowed:  # the budget wins over the policy
        action = LOCAL
    masked = sorted(a.label for a in candidate_actions(state) if a not in observation.allowed)
    return {
        "decision": Decision(
            route=action.route, views=list(action.views), policy=policy.name, masked=masked
        )
    }


def after_route(state: State) -> Literal["answer_local", "answer_cloud"]:
    assert state.decision is not None
    return "answer_cloud" if state.decision["route"] == "cloud" else "answer_local"
