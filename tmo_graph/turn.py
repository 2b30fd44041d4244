"""What several nodes read off the state of the turn in progress (nodes never import each
other; they share these helpers)."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import AnyMessage, HumanMessage

from tmo_graph.context import Context
from tmo_graph.policy.base import LOCAL, Action, RouteInput
from tmo_graph.policy.budget import (
    CALL_MARGIN_S,
    MIN_CLOUD_ANSWER_TOKENS,
    TOKENS_PER_MESSAGE,
    all_actions,
    build_route_input,
)
from tmo_graph.prompts import message_text, text_dialogue, tool_texts
from tmo_graph.services import Services
from tmo_graph.state import Budget, CallRecord, State

# A fall-back local answer shorter than this says too little to keep time back for.
MIN_FALLBACK_TOKENS = 8


def prompt_text(message: AnyMessage) -> str:
    """A message's words, without the image placeholders."""
    return message_text(message).replace("[image]", "").strip()


def _question_at(messages: Sequence[AnyMessage]) -> int:
    """The index of the current question: the last human message (a turn carrying tool
    results ends with them), else the last message."""
    humans = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage)]
    return humans[-1] if humans else len(messages) - 1


def earlier_prompts(messages: Sequence[AnyMessage], n: int) -> list[str]:
    """The texts of the last ``n`` user messages before the current one, most recent first."""
    before = messages[: _question_at(messages)]
    texts = [prompt_text(m) for m in before if isinstance(m, HumanMessage)]
    return [t for t in reversed(texts) if t][:n]


def prompt_chars(state: State) -> int:
    """Characters the cloud would read this turn: history (tool calls, results and the
    tools' specs included), recalled memory and prompt."""
    asked = _question_at(state.messages)
    history = sum(len(message_text(m)) for i, m in enumerate(state.messages) if i != asked)
    history += sum(len(t) for t in tool_texts(state.tools, state.messages))
    return history + sum(len(r["text"]) for r in state.recalled) + len(state.prompt)


def offers_tools(state: State) -> bool:
    """Whether the turn offers tools the answer may call (``tool_choice: "none"`` offers
    none)."""
    return bool(state.tools) and state.tool_choice != "none"


def spent(calls: Sequence[CallRecord], device_s: float = 0.0) -> Budget:
    """Seconds and dollars the turn's calls took so far, plus ``device_s``: the device's
    own work on the turn's inputs (reading its audio clips)."""
    return Budget(
        latency_s=device_s + sum(c["latency_s"] for c in calls),
        cost_usd=sum(c["cost_usd"] for c in calls),
    )


def budget_before_turn(state: State, context: Context) -> Budget:
    """What the dialogue had left when this turn began (the Context's budgets at first)."""
    return state.budget_left or Budget(
        latency_s=context.latency_budget_s, cost_usd=context.cost_budget_usd
    )


def budget_now(state: State, context: Context) -> Budget:
    """What is left now, the turn's calls so far included."""
    before, used = budget_before_turn(state, context), spent(state.calls, state.transcription_s)
    return Budget(
        latency_s=before["latency_s"] - used["latency_s"],
        cost_usd=before["cost_usd"] - used["cost_usd"],
    )


def candidate_actions(state: State, services: Services) -> list[Action]:
    """Local, and the cloud with every subset of the modalities that have an image or an
    audio clip to send (``1 + 2**X`` actions over all of them, as in the paper)."""
    if services.cloud is None:
        return [LOCAL]
    return all_actions([c["name"] for c in state.candidates if c["image"] or c.get("audio")])


def clip_seconds(state: State) -> dict[str, float]:
    """The length of each audio candidate, by name (what sending it costs)."""
    return {c["name"]: c.get("seconds", 0.0) for c in state.candidates if c.get("audio")}


def route_input(
    state: State, services: Services, budget: Budget, quality_gap: float | None = None
) -> RouteInput:
    """The policy's view of the turn, with the actions ``budget`` allows at the speeds
    measured now (the same builder the simulator uses)."""
    return build_route_input(
        prompt=state.prompt,
        task=state.task,
        turn=state.turn_count,
        candidates=state.candidates,
        history=state.turns,
        budget_left=budget,
        actions=candidate_actions(state, services),
        cost_model=services.costs,
        prompt_chars=prompt_chars(state),
        quality_gap=quality_gap,
        audio_s=clip_seconds(state),
        device=state.device,
    )


def local_dialogue(state: State, context: Context) -> list[dict[str, str]]:
    """What the device model reads this turn: persona, recalled memory and the dialogue,
    with what the device's audio sources said (their transcripts) after the question."""
    dialogue = text_dialogue(state.messages, state.recalled, context.system_prompt)
    heard = heard_text(state)
    if heard and dialogue[-1]["role"] == "user":
        dialogue[-1] = {**dialogue[-1], "content": f"{dialogue[-1]['content']}\n\n{heard}"}
    return dialogue


def heard_text(state: State) -> str:
    """The named audio sources' transcripts as prompt lines (voice notes are in the message)."""
    lines = [
        f'[{name}, speech recognised on the device, may be inaccurate: "{words}"]'
        for name, words in state.transcripts.items()
        if words and state.views.get(name, {}).get("audio")
    ]
    return "\n".join(lines)


def local_prompt_tokens(services: Services, dialogue: list[dict[str, str]]) -> int:
    """The device model's prompt tokens for ``dialogue``: counted by the backend when it can,
    else one per UTF-8 byte (the most a byte-level tokenizer makes)."""
    count = getattr(services.local, "prompt_tokens", None)
    if callable(count):
        return int(count(dialogue))
    return sum(len(m["content"].encode("utf-8")) + TOKENS_PER_MESSAGE for m in dialogue)


def has_local_answer(state: State) -> bool:
    """Whether the turn has a device answer already (a draft an escalation may replace)."""
    return any(c["where"] == "local" and c["ok"] for c in state.calls)


def local_reserve(state: State, context: Context, services: Services) -> Budget:
    """What a local answer to this turn may need: kept back from a cloud call while the turn
    has none yet, so that a failed call can still fall back to the device."""
    if has_local_answer(state):
        return Budget(latency_s=0.0, cost_usd=0.0)
    tokens = local_prompt_tokens(services, local_dialogue(state, context))
    costs = services.costs
    seconds = costs.local_seconds(tokens, services.settings.local.max_new_tokens)
    seconds += CALL_MARGIN_S + 1.0 / costs.local_tokens_per_s  # as answer_local keeps back
    left = budget_now(state, context)["latency_s"]
    if seconds > left:
        # A busy device whose whole answer does not fit (the route sends such a turn to the
        # cloud): keep back a short fall-back (the prompt's reading and a few words) when it
        # fits beside the cloud's shortest answer; else all of it, as before (no cloud call
        # is made that the device could not stand in for).
        views = len(state.decision["views"]) if state.decision else 0
        cloud = costs.cloud_time_factor * costs.cloud_seconds(views, MIN_CLOUD_ANSWER_TOKENS)
        least = costs.local_seconds(tokens, MIN_FALLBACK_TOKENS) + CALL_MARGIN_S
        if least + cloud <= left:
            seconds = least
    return Budget(latency_s=seconds, cost_usd=costs.local_call_usd(seconds))
