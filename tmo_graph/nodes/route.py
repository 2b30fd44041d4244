"""route: the policy picks local or cloud (and which views), within the budget left.

Privacy comes first: a turn :func:`tmo_graph.guards.privacy.kept_on_device` names a reason for (a
private message, personal data of a ``privacy.keep_local`` kind) is answered locally, every
cloud action is listed as masked, and the turn record warns "kept on the device: ...".

The device is read first (:meth:`tmo_graph.costs.device.LiveResources.reading`): the policy sees it
in its input, the turn record keeps it. The budget mask prices every action at the speeds
measured now, so a busy device whose whole answer no longer fits goes to the cloud when a
cloud answer does.

Tools: the device model cannot call tools, so a turn that offers tools (``state.tools``,
with a ``tool_choice`` other than ``"none"``) goes to the cloud with them whenever a cloud
answer is allowed: the policy's local choice is replaced by the best affordable cloud
action, except under ``always-local``, which never calls the cloud. A turn kept on the
device (a private message or personal data, the ``always-local`` policy, a budget that
masks every cloud action, a cloud call that failed) gets a local answer without tools, and
its turn record warns so (``account`` writes it). An escalation goes to the same cloud
node, which binds the turn's tools.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from tmo_graph.context import Context
from tmo_graph.guards.privacy import kept_on_device
from tmo_graph.policy.base import LOCAL, Action, RouteInput
from tmo_graph.policy.simple import best_cloud_action, make_policy
from tmo_graph.prompts import windowed
from tmo_graph.services import Services
from tmo_graph.state import Decision, State
from tmo_graph.turn import (
    budget_before_turn,
    candidate_actions,
    earlier_prompts,
    offers_tools,
    route_input,
)


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


def route(state: State, context: Context, services: Services) -> dict[str, Any]:
    # What the models would read (and the cloud would be billed for): the recent window.
    state = windowed(state, context.recent_turns)
    policy = make_policy(context)
    privacy = services.settings.privacy
    # The device now (CPU, memory, battery, measured speeds): for the policy and the record.
    device = services.device.reading() if services.device is not None else None
    reasons = kept_on_device(state, context.system_prompt, privacy.keep_local)
    if reasons:  # before the policy: nothing of this turn may leave the device
        actions = candidate_actions(state, services)
        decision = Decision(
            route=LOCAL.route,
            views=[],
            policy=policy.name,
            masked=sorted(a.label for a in actions if a != LOCAL),
        )
        warnings = [f"kept on the device: {reason}" for reason in reasons]
        return {"decision": decision, "warnings": [*state.warnings, *warnings], "device": device}
    observation = route_input(
        replace(state, device=device),
        services,
        budget_before_turn(state, context),
        quality_gap(state, services),
    )
    action = policy.decide(observation)
    if action not in observation.allowed:  # the budget wins over the policy
        action = _fallback(observation, context.min_view_score)
    if offers_tools(state) and action == LOCAL and policy.name != "always-local":
        # Only the cloud can call the tools the turn offers.
        action = best_cloud_action(observation, context.min_view_score) or LOCAL
    actions = candidate_actions(state, services)
    masked = sorted(a.label for a in actions if a not in observation.allowed)
    return {
        "decision": Decision(
            route=action.route, views=list(action.views), policy=policy.name, masked=masked
        ),
        "device": device,
    }


def _fallback(observation: RouteInput, min_view_score: float) -> Action:
    """What runs when the policy's action is masked: the local answer, or, when the device
    is too slow for a whole one while a cloud answer fits, the best affordable cloud call."""
    if LOCAL in observation.allowed:
        return LOCAL
    best = best_cloud_action(observation, min_view_score)
    if best is not None:
        return best
    return min(observation.allowed, key=lambda a: observation.allowed[a].latency_s)


def after_route(state: State) -> Literal["local", "cloud"]:
    """Where the policy sent the turn (the graph maps it to answer_local / answer_cloud)."""
    assert state.decision is not None
    return state.decision["route"]
