"""answer_local: the on-device model answers within what is left; its token scores are kept.

The answer is limited to what the budgets left allow: reading the prompt and writing
``max_new_tokens`` at the device's measured speeds (:mod:`tmo_graph.costs.device`; the configured
ones until measured) must fit the seconds and the energy
cost left, so the answer is shortened to fit, generation stops at that deadline, and when
not even one token fits the turn gets :data:`BUDGET_REACHED` with no model call.

A local answer that may still be replaced by the cloud (the policy escalates, no cloud call
has been made yet) is a draft: generated with LangGraph's ``nostream`` tag, so a chat UI
streaming the run's ``messages`` never shows it (the turn's final message, written by
``account``, arrives once instead), and with the tag ``draft`` for a surface that asks for
hidden tokens (:data:`tmo_graph.state.STREAM_HIDDEN`) and holds drafts back itself.
"""

from __future__ import annotations

from typing import Any

from tmo_graph.context import Context
from tmo_graph.guards.privacy import kept_on_device
from tmo_graph.policy.budget import CALL_MARGIN_S
from tmo_graph.policy.simple import make_policy
from tmo_graph.prompts import hidden_call_tags, windowed
from tmo_graph.services import Services
from tmo_graph.state import DRAFT_TAG, CallRecord, State, TokenTrace
from tmo_graph.turn import budget_now, local_dialogue, local_prompt_tokens

BUDGET_REACHED = (
    "This conversation has used up its time or money budget, so I cannot answer this. "
    "Please start a new conversation or raise the budget."
)


def answer_local(state: State, context: Context, services: Services) -> dict[str, Any]:
    state = windowed(state, context.recent_turns)  # the model reads the recent window only
    may_be_replaced = (
        services.cloud is not None
        and make_policy(context).escalates
        and not any(c["where"] == "cloud" for c in state.calls)
        and not kept_on_device(state, context.system_prompt, services.settings.privacy.keep_local)
    )
    dialogue = local_dialogue(state, context)
    prompt_tokens = local_prompt_tokens(services, dialogue)
    left = budget_now(state, context)
    costs = services.costs  # the speeds measured so far, once for the whole call
    # Generation stops at its deadline only after the token in flight, and the call spends
    # a little around the model: both are kept out of the time the answer may take.
    seconds = left["latency_s"] - CALL_MARGIN_S - 1.0 / costs.local_tokens_per_s
    most = context.answer_tokens(services.settings.local.max_new_tokens)
    n = costs.local_tokens_within(seconds, left["cost_usd"], prompt_tokens, most)
    if n < 1:  # not even one token fits: say so, and spend nothing
        budget = CallRecord(
            where="local",
            latency_s=0.0,
            cost_usd=0.0,
            ok=True,
            text=BUDGET_REACHED,
            input_tokens=0,
            output_tokens=0,
            error="budget reached: no model call",
        )
        return {"calls": [budget], "warnings": [*state.warnings, "budget reached"]}
    start = services.clock()
    text, stats = services.local.answer(
        dialogue,
        max_new_tokens=n,
        tags=hidden_call_tags(DRAFT_TAG) if may_be_replaced else None,
        max_time_s=seconds,
    )
    latency = services.clock() - start
    _measured(services, stats)
    call = CallRecord(
        where="local",
        latency_s=round(latency, 4),
        cost_usd=costs.local_call_usd(latency),
        ok=bool(text),
        text=text,
        input_tokens=0,
        output_tokens=len(stats.logprobs),
    )
    if message_id := getattr(stats, "message_id", None):
        call["message_id"] = message_id
    trace = TokenTrace(logprobs=list(stats.logprobs), entropies=list(stats.entropies))
    update: dict[str, Any] = {"calls": [call], "local_tokens": trace}
    warnings = list(getattr(stats, "warnings", None) or [])  # e.g. the prompt was cut
    if n < most:
        warnings.append(f"the local answer was limited to {n} tokens by the budget left")
    if warnings:
        update["warnings"] = [*state.warnings, *warnings]
    return update


def _measured(services: Services, stats: object) -> None:
    """The call's own timing into the device's speed estimates (a backend that does not
    time its calls leaves them as they are)."""
    prefill_s, decode_s = getattr(stats, "prefill_s", None), getattr(stats, "decode_s", None)
    if services.device is None or prefill_s is None or decode_s is None:
        return
    services.device.observe_local(
        int(getattr(stats, "prompt_tokens", 0)),
        float(prefill_s),
        int(getattr(stats, "decode_tokens", 0)),
        float(decode_s),
    )
