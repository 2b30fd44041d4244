"""Which views to send: dialogue context in the association, and gain per unit of budget."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeCloud, FakeLocal, PromptScorer, fake_services, png_bytes
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.policy.base import LOCAL, Action, Cost, RouteInput
from tmo_graph.policy.simple import best_cloud_action
from tmo_graph.state import Budget, Candidate

VIEWS = {
    "first_person": "what the user sees: hands, the cutting board",
    "overhead": "overhead camera above the stove and counter",
    "side": "side camera facing the fridge",
}

ABOUT_STOVE = "Is the pot on the stove boiling yet?"
FOLLOW_UP = "What about the one on the left?"
FRESH = "Write a short message to Sam saying dinner is at seven."
THANKS = "Thanks, good to know."
BOTH = "What is on the stove and in the fridge?"


def _views(tmp_path: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for name, description in VIEWS.items():
        path = tmp_path / f"{name}.png"
        path.write_bytes(png_bytes())
        out[name] = {"image": str(path), "description": description}
    return out


def _graph(tmp_path: Path, table: Mapping[str, Mapping[str, float]]) -> Any:
    cloud = FakeCloud()
    cloud.sent = []
    services = fake_services(tmp_path, FakeLocal(["ok"], logprob=-0.05), cloud)
    services.association = PromptScorer(services.embeddings, table)
    return build_graph(services, checkpointer=InMemorySaver())


def _turn(graph: Any, text: str, context: Context, thread: str, views: Any) -> Any:
    config = {"configurable": {"thread_id": thread}}
    return graph.invoke({"messages": [("user", text)], "views": views}, config, context=context)


# What each prompt, on its own words, points at (the follow-up at nothing in particular).
DIALOGUE = {
    ABOUT_STOVE: {"overhead": 0.7, "first_person": 0.1, "side": 0.05},
    FOLLOW_UP: {"overhead": 0.1, "first_person": 0.1, "side": 0.15},
    FRESH: {"overhead": 0.05, "first_person": 0.05, "side": 0.05},
    THANKS: {},
}


def test_a_follow_up_sends_the_view_of_the_question_it_refers_to(tmp_path: Path) -> None:
    graph = _graph(tmp_path, DIALOGUE)
    views = _views(tmp_path)
    context = Context(policy="rules")

    first = _turn(graph, ABOUT_STOVE, context, "a", views)["turns"][-1]
    assert first["route"] == "cloud" and first["views_sent"] == ["overhead"]

    follow = _turn(graph, FOLLOW_UP, context, "a", views)["turns"][-1]
    assert follow["route"] == "cloud" and follow["views_sent"] == ["overhead"]
    # The recorded association is the score used: 0.8 x the previous question's 0.7 for the
    # view it was about; the others keep their own (higher) scores.
    assert follow["association"]["overhead"] == pytest.approx(0.8 * 0.7)
    assert follow["association"]["side"] == pytest.approx(0.15)

    # A fresh question in the same dialogue does not refer back: its own words only.
    fresh = _turn(graph, FRESH, context, "a", views)["turns"][-1]
    assert fresh["views_sent"] == []
    assert fresh["association"] == pytest.approx(DIALOGUE[FRESH])

    # The same follow-up with nothing before it has no view to refer to.
    alone = _turn(graph, FOLLOW_UP, context, "b", views)["turns"][-1]
    assert alone["views_sent"] == []
    assert alone["association"] == pytest.approx(DIALOGUE[FOLLOW_UP])


@pytest.mark.parametrize(
    ("weight", "sent"), [(0.0, []), (0.4, []), (0.5, ["overhead"]), (1.0, ["overhead"])]
)
def test_context_weight_sets_how_much_the_previous_question_counts(
    tmp_path: Path, weight: float, sent: list[str]
) -> None:
    graph = _graph(tmp_path, DIALOGUE)
    views = _views(tmp_path)
    context = Context(policy="rules", context_weight=weight)
    _turn(graph, ABOUT_STOVE, context, "a", views)
    record = _turn(graph, FOLLOW_UP, context, "a", views)["turns"][-1]
    # min_view_score is 0.3: 0.4 x 0.7 = 0.28 falls short, 0.5 x 0.7 = 0.35 is enough.
    assert record["views_sent"] == sent
    assert record["association"]["overhead"] == pytest.approx(max(0.1, weight * 0.7))


def test_the_question_before_the_previous_counts_at_the_weight_squared(tmp_path: Path) -> None:
    graph = _graph(tmp_path, DIALOGUE)
    views = _views(tmp_path)
    context = Context(policy="rules", context_weight=0.8)
    _turn(graph, ABOUT_STOVE, context, "a", views)
    assert _turn(graph, THANKS, context, "a", views)["turns"][-1]["views_sent"] == []
    record = _turn(graph, FOLLOW_UP, context, "a", views)["turns"][-1]
    assert record["association"]["overhead"] == pytest.approx(0.8**2 * 0.7)
    assert record["views_sent"] == ["overhead"]


# Gain per cost, on explicit costs: text-only, one view, two views (the second one pricey).
COSTS = {
    Action("cloud"): Cost(latency_s=10.0, cost_usd=0.0001),
    Action("cloud", ("overhead",)): Cost(latency_s=11.0, cost_usd=0.0005),
    Action("cloud", ("side",)): Cost(latency_s=11.0, cost_usd=0.0005),
    Action("cloud", ("overhead", "side")): Cost(latency_s=12.0, cost_usd=0.0030),
}


def _observation(scores: Mapping[str, float], budget: Budget) -> RouteInput:
    candidates = [
        Candidate(name=name, kind="device", score=score, url="data:image/png;base64,AA==")
        for name, score in scores.items()
    ]
    allowed = {LOCAL: Cost(4.0, 0.0)} | {
        action: cost
        for action, cost in COSTS.items()
        if cost.latency_s <= budget["latency_s"] and cost.cost_usd <= budget["cost_usd"]
    }
    return RouteInput(
        prompt="q",
        task="Query",
        turn=0,
        candidates=candidates,
        history=[],
        budget_left=budget,
        allowed=allowed,
    )


def test_a_barely_relevant_expensive_view_is_left_out() -> None:
    budget = Budget(latency_s=60.0, cost_usd=0.01)
    # Both views are relevant (>= 0.3) and both together are affordable, but the second one
    # adds 0.32 of association for a sixfold dollar cost: not worth it.
    barely = _observation({"overhead": 0.8, "side": 0.32}, budget)
    assert Action("cloud", ("overhead", "side")) in barely.allowed
    assert best_cloud_action(barely, min_score=0.3) == Action("cloud", ("overhead",))
    # The same price for a view that matters as much is paid.
    strong = _observation({"overhead": 0.8, "side": 0.8}, budget)
    assert best_cloud_action(strong, min_score=0.3) == Action("cloud", ("overhead", "side"))
    # Views below min_score are never candidates; with none relevant, the text goes alone.
    none = _observation({"overhead": 0.2, "side": 0.1}, budget)
    assert best_cloud_action(none, min_score=0.3) == Action("cloud")


def test_a_tighter_budget_sends_fewer_views_even_when_more_fit() -> None:
    scores = {"overhead": 0.8, "side": 0.6}
    roomy = _observation(scores, Budget(latency_s=60.0, cost_usd=0.05))
    tight = _observation(scores, Budget(latency_s=60.0, cost_usd=0.004))
    assert best_cloud_action(roomy, min_score=0.3) == Action("cloud", ("overhead", "side"))
    # 0.003 USD still fits in 0.004, but would take three quarters of what is left.
    assert Action("cloud", ("overhead", "side")) in tight.allowed
    assert best_cloud_action(tight, min_score=0.3) == Action("cloud", ("overhead",))
    assert (
        best_cloud_action(_observation(scores, Budget(latency_s=60.0, cost_usd=0.0)), 0.3) is None
    )


def _sent(tmp_path: Path, side: float, cost_budget_usd: float) -> tuple[list[str], list[str]]:
    graph = _graph(tmp_path, {BOTH: {"overhead": 0.7, "side": side, "first_person": 0.0}})
    context = Context(policy="rules", cost_budget_usd=cost_budget_usd)
    out = _turn(graph, BOTH, context, "t", _views(tmp_path))
    return out["turns"][-1]["views_sent"], out["turns"][-1]["masked"]


def test_the_graph_drops_a_barely_relevant_second_view_it_could_afford(tmp_path: Path) -> None:
    # At 0.0025 USD one image (gpt-4o-mini prices) takes a fifth of the dollars left, less than
    # the call's share of the seconds; two take over a third. The pair is affordable, not
    # masked, yet only worth it when the second view matters.
    sent, masked = _sent(tmp_path, side=0.31, cost_budget_usd=0.0025)
    assert sent == ["overhead"] and "cloud+overhead,side" not in masked
    sent, _ = _sent(tmp_path, side=0.7, cost_budget_usd=0.0025)
    assert sent == ["overhead", "side"]


def test_the_graph_sends_fewer_views_as_the_budget_tightens(tmp_path: Path) -> None:
    roomy, _ = _sent(tmp_path, side=0.5, cost_budget_usd=0.05)
    tight, masked = _sent(tmp_path, side=0.5, cost_budget_usd=0.002)
    broke, masked_broke = _sent(tmp_path, side=0.5, cost_budget_usd=0.0004)
    assert roomy == ["overhead", "side"]
    assert tight == ["overhead"] and "cloud+overhead,side" not in masked
    # No image fits at all any more.
    assert broke == [] and "cloud+overhead" in masked_broke


@pytest.mark.parametrize("weight", [-0.1, 1.5, math.nan])
def test_a_bad_context_weight_is_refused_with_a_fix(weight: float) -> None:
    with pytest.raises(TmoGraphError, match=r"context_weight must be in \[0, 1\]") as error:
        Context(context_weight=weight)
    assert error.value.fix is not None and "0.8" in error.value.fix
    assert "Fix:" in str(error.value)


@pytest.mark.parametrize(
    ("prompt", "follow_up"),
    [
        ("What about the one on the left?", True),
        ("And is it done?", True),
        ("Is it boiling now?", True),
        ("Can you recommend a healthy dinner with chicken and explain why it is good?", False),
        ("Who wrote the cookbook Kitab al-Tabikh?", False),
        ("Write a message to Sam saying dinner is at seven.", False),
    ],
)
def test_which_prompts_refer_back(prompt: str, follow_up: bool) -> None:
    from tmo_graph.nodes.detect_modality import refers_back

    assert refers_back(prompt) is follow_up
