"""detect_modality: this turn's text and images, the task category, and view association."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import AnyMessage, HumanMessage
from langgraph.runtime import Runtime

from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.images import to_data_url
from tmo_graph.prompts import message_text
from tmo_graph.services import Services
from tmo_graph.state import Budget, Candidate, State, ViewSpec


def inline_images(message: HumanMessage) -> list[str]:
    """Image URLs in a message, in OpenAI (``image_url``) or LangChain (``image``) block form."""
    if isinstance(message.content, str):
        return []
    urls: list[str] = []
    for block in message.content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "image_url":
            url = block["image_url"]
            urls.append(url["url"] if isinstance(url, dict) else str(url))
        elif kind == "image":
            if block.get("url"):
                urls.append(str(block["url"]))
            else:
                data = block.get("base64") or block.get("data")
                mime = block.get("mime_type", "image/png")
                if not data:
                    raise TmoGraphError(
                        "an image block has neither url nor base64 data",
                        "send {'type': 'image', 'base64': ..., 'mime_type': 'image/png'}",
                    )
                urls.append(f"data:{mime};base64,{data}")
    return urls


def view_caption(name: str, view: ViewSpec) -> str:
    return view.get("description") or f"camera view {name.replace('_', ' ')}"


# Earlier user messages a follow-up may draw its views from (the previous one, the one before).
CONTEXT_MESSAGES = 2

# Cues that a prompt leans on the previous turn for what it is about: it opens like a follow-up
# ("and ...", "what about ...") or points back ("the one on the left", "those"). A bare
# pronoun ("it", "them") counts only in a short prompt ("Is it done?"): a longer one usually
# names its own subject ("... a healthy dinner ..., and explain why it is good"). English
# only; "that" / "this" / "there" are left out, fresh questions use them all the time.
_FOLLOW_UP = re.compile(
    r"^\W*(and|also|what about|how about)\b"
    r"|\b(those|these|the one|the ones|that one|this one|the other)\b",
    re.IGNORECASE,
)
_PRONOUN = re.compile(r"\b(it|its|they|them)\b", re.IGNORECASE)
SHORT_PROMPT_WORDS = 6


def refers_back(prompt: str) -> bool:
    """Whether ``prompt`` reads as a follow-up that needs the previous turn to be understood."""
    if _FOLLOW_UP.search(prompt):
        return True
    return len(prompt.split()) <= SHORT_PROMPT_WORDS and _PRONOUN.search(prompt) is not None


def _text(message: AnyMessage) -> str:
    return message_text(message).replace("[image]", "").strip()


def earlier_prompts(messages: Sequence[AnyMessage], n: int = CONTEXT_MESSAGES) -> list[str]:
    """The texts of the last ``n`` user messages before the current one, most recent first."""
    texts = [_text(m) for m in messages[:-1] if isinstance(m, HumanMessage)]
    return [t for t in reversed(texts) if t][:n]


def view_scores(
    prompt: str,
    earlier: Sequence[str],
    captions: Mapping[str, str],
    services: Services,
    weight: float,
) -> dict[str, float]:
    """Each view's association with this turn, dialogue context included.

    The rule: a view scores its association with the prompt; when the prompt refers back
    (:func:`refers_back`), it scores at least ``weight`` times its association with the
    previous user message, and ``weight**2`` times that with the one before:
    ``score = max(s(prompt), weight * s(earlier[0]), weight**2 * s(earlier[1]))``.
    So "what about the one on the left?" keeps the view the previous question was about,
    a little weaker, while a fresh question is scored on its own words only.
    """
    assert services.association is not None
    scores = services.association.score(services.embed(prompt), captions)
    if weight <= 0 or not captions or not refers_back(prompt):
        return scores
    for k, text in enumerate(earlier, start=1):
        before = services.association.score(services.embed(text), captions)
        scores = {name: max(s, weight**k * before[name]) for name, s in scores.items()}
    return scores


def detect_modality(state: State, runtime: Runtime[Context], services: Services) -> dict[str, Any]:
    if not state.messages or not isinstance(state.messages[-1], HumanMessage):
        raise TmoGraphError(
            "a turn must end with a human message", "send {'messages': [('user', 'your question')]}"
        )
    message = state.messages[-1]
    prompt = _text(message)
    if not prompt:
        raise TmoGraphError("the message has no text", "ask a question in words")

    for name, view in state.views.items():
        if not isinstance(view, dict) or not (view.get("image") or view.get("description")):
            raise TmoGraphError(
                f"view {name!r} has neither an image nor a description",
                "give each view {'image': PATH, 'description': TEXT}",
            )
    # Private views are never candidates: they cannot be sent, so they are not even scored.
    shareable = {n: v for n, v in state.views.items() if not v.get("private", False)}
    ctx = runtime.context
    inline = inline_images(message)
    scores = view_scores(
        prompt,
        # A message with its own image is about that image ("what fruit is this?").
        [] if inline else earlier_prompts(state.messages),
        {name: view_caption(name, view) for name, view in shareable.items()},
        services,
        ctx.context_weight,
    )
    candidates = [
        Candidate(name=f"image_{i + 1}", kind="inline", score=1.0, url=to_data_url(url))
        for i, url in enumerate(inline)
    ]
    candidates += [
        Candidate(
            name=name,
            kind="device",
            score=scores[name],
            url=to_data_url(view["image"]) if view.get("image") else "",
        )
        for name, view in shareable.items()
    ]

    budget = state.budget_left or Budget(
        latency_s=ctx.latency_budget_s, cost_usd=ctx.cost_budget_usd
    )
    return {
        "prompt": prompt,
        "task": services.tasks.classify_vector(services.embed(prompt)),
        "candidates": candidates,
        "budget_left": budget,
        # Fresh per-turn scratch.
        "recalled": [],
        "decision": None,
        "calls": [],
        "confidence": None,
        "confidence_parts": {},
        "escalated": False,
        "fallback": None,
    }
