"""View choice with the real MiniLM association scorer (fake, instant models otherwise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeCloud, FakeLocal, png_bytes
from tmo_graph.context import Context
from tmo_graph.graph import build_graph
from tmo_graph.models.embeddings import local_embeddings
from tmo_graph.services import Services
from tmo_graph.settings import Settings

pytestmark = pytest.mark.integration

VIEWS = {
    "first_person": "first-person view of the user's hands, a cutting board with tomatoes",
    "overhead": "overhead camera above the stove, showing the pot that is boiling",
    "side": "side camera facing the fridge door",
}


def _turn(tmp_path: Path, prompt: str, **context: Any) -> dict[str, Any]:
    views = {}
    for name, description in VIEWS.items():
        path = tmp_path / f"{name}.png"
        path.write_bytes(png_bytes())
        views[name] = {"image": str(path), "description": description}
    services = Services(
        settings=Settings(),
        local=FakeLocal(["ok"], logprob=-0.05),
        cloud=FakeCloud(),
        embeddings=local_embeddings(),
    )
    graph = build_graph(services, checkpointer=InMemorySaver())
    out = graph.invoke(
        {"messages": [("user", prompt)], "views": views},
        {"configurable": {"thread_id": "t"}},
        context=Context(policy="rules", **context),
    )
    return out["turns"][-1]


def test_a_question_about_one_view_sends_that_view(tmp_path: Path) -> None:
    record = _turn(tmp_path, "Is the pot on the stove boiling yet?")
    assert record["views_sent"] == ["overhead"]
    assert record["association"]["overhead"] > 0.3 > record["association"]["side"]


def test_a_text_only_question_sends_no_view(tmp_path: Path) -> None:
    record = _turn(tmp_path, "Write a short message to Sam saying dinner is at seven.")
    assert record["views_sent"] == []
    assert max(record["association"].values()) < 0.3


def test_a_tight_budget_sends_fewer_views(tmp_path: Path) -> None:
    prompt = "Look at the tomatoes on the cutting board and the pot boiling on the stove."
    roomy = _turn(tmp_path, prompt, min_view_score=0.2)
    assert len(roomy["views_sent"]) >= 2
    # One image (2,833 tokens as gpt-4o-mini) costs about 0.0004 USD: room for one, not two.
    tight = _turn(tmp_path, prompt, min_view_score=0.2, cost_budget_usd=0.0008)
    assert 1 <= len(tight["views_sent"]) < len(roomy["views_sent"])
