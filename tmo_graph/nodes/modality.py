"""detect_modality: this turn's text and images, the task category, and view association."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage
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


def detect_modality(state: State, runtime: Runtime[Context], services: Services) -> dict[str, Any]:
    if not state.messages or not isinstance(state.messages[-1], HumanMessage):
        raise TmoGraphError(
            "a turn must end with a human message", "send {'messages': [('user', 'your question')]}"
        )
    message = state.messages[-1]
    prompt = message_text(message).replace("[image]", "").strip()
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
    vector = services.embed(prompt)
    assert services.association is not None
    scores = services.association.score(
        vector, {name: view_caption(name, view) for name, view in shareable.items()}
    )
    candidates = [
        Candidate(name=f"image_{i + 1}", kind="inline", score=1.0, url=to_data_url(url))
        for i, url in enumerate(inline_images(message))
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

    ctx = runtime.context
    budget = state.budget_left or Budget(
        latency_s=ctx.latency_budget_s, cost_usd=ctx.cost_budget_usd
    )
    return {
        "prompt": prompt,
        "task": services.tasks.classify_vector(vector),
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
