"""check_confidence: score the local answer; escalate an unsure one once, if still affordable."""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.messages import AIMessage

from tmo_graph.context import Context
from tmo_graph.guards.privacy import kept_on_device
from tmo_graph.policy.confidence import LEFT_OUT_ANSWER, confidence, degenerate
from tmo_graph.policy.simple import escalation, make_policy
from tmo_graph.prompts import message_text, windowed
from tmo_graph.services import Services
from tmo_graph.state import State
from tmo_graph.turn import budget_now, route_input


def check_confidence(state: State, context: Context, services: Services) -> dict[str, Any]:
    state = windowed(state, context.recent_turns)  # the answers the model saw, its window
    local = next((c for c in reversed(state.calls) if c["where"] == "local"), None)
    if local is None or state.local_tokens is None:
        return {}
    earlier = [message_text(m) for m in state.messages if isinstance(m, AIMessage)]
    earlier.append(LEFT_OUT_ANSWER)  # what the history shows for a looping one: copied, it echoes
    score, parts = confidence(
        state.local_tokens["logprobs"], state.local_tokens["entropies"], local["text"], earlier
    )
    update: dict[str, Any] = {"confidence": score, "confidence_parts": parts}
    policy = make_policy(context)
    may_escalate = (
        policy.escalates
        and not state.escalated
        and state.decision is not None
        and not any(c["where"] == "cloud" for c in state.calls)  # a fallback stays local
        and not kept_on_device(state, context.system_prompt, services.settings.privacy.keep_local)
    )
    # A looping or echoing answer is escalated whatever its score (the guards scale the
    # score down, but not always below a low threshold); a threshold of 0 keeps every answer.
    threshold = context.confidence_threshold
    per_task = getattr(policy, "escalation_threshold", None)  # a refit policy's calibration
    if per_task is not None:
        threshold = per_task(state.task, state.turn_count)
    if may_escalate and (score < threshold or (threshold > 0 and degenerate(parts))):
        assert state.decision is not None
        # Only what fits in the budget left after the local call, of whose time an
        # escalation takes at most its share (no quality gap: the escalation rule reads the
        # views' association and costs).
        left = budget_now(state, context)
        left["latency_s"] *= services.settings.cloud.escalation_share
        target = escalation(route_input(state, services, left), context.min_view_score)
        if target is not None:
            update["escalated"] = True
            update["decision"] = {**state.decision, "route": "cloud", "views": list(target.views)}
    return update


def after_confidence(state: State) -> Literal["escalate", "sure"]:
    """Escalate to the cloud (answer_cloud), or keep the answer (account)."""
    return "escalate" if state.escalated else "sure"
