"""The compiled graph with scripted models: routes, escalation, budgets, fallbacks, memory."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services, png_bytes
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.memory.recall import stored_turns
from tmo_graph.policy.confidence import confidence

VIEWS = {
    "first_person": {"description": "what the user sees: hands, the cutting board"},
    "overhead": {"description": "overhead camera above the stove and counter"},
    "side": {"description": "side camera facing the fridge"},
}


def _views(tmp_path: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for name, view in VIEWS.items():
        path = tmp_path / f"{name}.png"
        path.write_bytes(png_bytes())
        out[name] = {**view, "image": str(path)}
    return out


def _run(graph: Any, text: Any, context: Context, thread: str = "t1", **extra: Any) -> Any:
    config = {"configurable": {"thread_id": thread}}
    return graph.invoke({"messages": [("user", text)], **extra}, config, context=context)


def test_cascade_keeps_a_sure_local_answer(tmp_path: Path) -> None:
    services = fake_services(tmp_path, FakeLocal(["sure answer"], logprob=-0.05), FakeCloud())
    graph = build_graph(services, checkpointer=InMemorySaver())
    out = _run(graph, "Turn on the kitchen lights.", Context(policy="cascade"))
    record = out["turns"][-1]
    assert record["route"] == "local" and not record["escalated"]
    expected = confidence([-0.05] * 2, [0.6] * 2, "sure answer")[0]  # FakeLocal's scores
    assert record["confidence"] == pytest.approx(expected) and expected > 0.9
    assert record["answer"] == "sure answer" and record["local_answer"] is None
    assert out["messages"][-1].content == "sure answer"


def test_cascade_escalates_once_when_unsure(tmp_path: Path) -> None:
    cloud = FakeCloud(answer="better answer")
    cloud.sent = []
    services = fake_services(tmp_path, FakeLocal(["meh"], logprob=-3.0), cloud)
    graph = build_graph(services, checkpointer=InMemorySaver())
    out = _run(graph, "Explain how induction hobs work.", Context(policy="cascade"))
    record = out["turns"][-1]
    assert record["escalated"] and record["route"] == "cloud"
    assert record["answer"] == "better answer"
    assert record["local_answer"] == "meh"  # the draft it replaced stays on record
    assert len(cloud.sent) == 1  # exactly one escalation
    # The turn's latency and cost include both the local and the cloud call.
    assert record["cost_usd"] > 0 and record["latency_s"] > 0
    assert record["budget_left"]["cost_usd"] == pytest.approx(0.05 - record["cost_usd"])


def test_no_escalation_when_budget_is_spent(tmp_path: Path) -> None:
    cloud = FakeCloud()
    cloud.sent = []
    services = fake_services(tmp_path, FakeLocal(["meh"], logprob=-3.0), cloud)
    graph = build_graph(services, checkpointer=InMemorySaver())
    out = _run(graph, "Explain it.", Context(policy="cascade", cost_budget_usd=1e-9))
    record = out["turns"][-1]
    assert record["route"] == "local" and not record["escalated"]
    assert cloud.sent == []


def test_rules_send_only_the_relevant_view(tmp_path: Path) -> None:
    cloud = FakeCloud()
    cloud.sent = []
    services = fake_services(
        tmp_path,
        FakeLocal(["x"]),
        cloud,
        scores={"overhead": 0.6, "first_person": 0.1, "side": 0.05},
    )
    graph = build_graph(services, checkpointer=InMemorySaver())
    out = _run(graph, "What is on the stove?", Context(policy="rules"), views=_views(tmp_path))
    record = out["turns"][-1]
    assert record["route"] == "cloud" and record["views_sent"] == ["overhead"]
    image_parts = [
        part
        for part in cloud.sent[-1][-1].content
        if isinstance(part, dict) and part.get("type") == "image_url"
    ]
    # Made for this call only: re-encoded (JPEG for an opaque image), never stored in state.
    assert len(image_parts) == 1
    assert image_parts[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    # Priced as gpt-4o-mini: reported usage (100 in, 20 out) plus one low-detail image, which
    # the text-only loopback stand-in does not bill itself.
    assert record["cost_usd"] == pytest.approx(((100 + 2833) * 0.15 + 20 * 0.60) / 1e6)


def test_private_views_never_leave(tmp_path: Path) -> None:
    cloud = FakeCloud()
    cloud.sent = []
    services = fake_services(
        tmp_path, FakeLocal(["x"]), cloud, scores={"overhead": 0.9, "side": 0.9}
    )
    views = _views(tmp_path)
    views["side"]["private"] = True
    graph = build_graph(services, checkpointer=InMemorySaver())
    out = _run(graph, "What is around?", Context(policy="always-cloud"), views=views)
    assert "side" not in out["turns"][-1]["views_sent"]
    assert "side" not in out["turns"][-1]["association"]


def test_inline_image_is_sent_with_cloud_route(tmp_path: Path) -> None:
    cloud = FakeCloud()
    cloud.sent = []
    services = fake_services(tmp_path, FakeLocal(["x"]), cloud, scores={})
    url = "data:image/png;base64," + base64.b64encode(png_bytes("blue")).decode()
    content = [
        {"type": "text", "text": "What fruit is this?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    graph = build_graph(services, checkpointer=InMemorySaver())
    out = _run(graph, content, Context(policy="rules"))
    assert out["turns"][-1]["views_sent"] == ["image_1"]


def test_cloud_failure_falls_back_to_local(tmp_path: Path) -> None:
    services = fake_services(tmp_path, FakeLocal(["local says"]), FakeCloud(fail=True))
    graph = build_graph(services, checkpointer=InMemorySaver())
    out = _run(graph, "Hello there", Context(policy="always-cloud"))
    record = out["turns"][-1]
    assert record["route"] == "local" and record["answer"] == "local says"
    assert record["fallback"].startswith("ConnectionError")


def test_budget_masks_what_the_policy_wants(tmp_path: Path) -> None:
    cloud = FakeCloud()
    cloud.sent = []
    services = fake_services(tmp_path, FakeLocal(["x"]), cloud, scores={"overhead": 0.9})
    graph = build_graph(services, checkpointer=InMemorySaver())
    out = _run(graph, "Hi", Context(policy="always-cloud", latency_budget_s=0.1))
    assert out["turns"][-1]["route"] == "local" and cloud.sent == []
    assert "cloud-text" in out["turns"][-1]["masked"]


def test_bad_inputs_raise_clear_errors(tmp_path: Path) -> None:
    services = fake_services(tmp_path, FakeLocal(["x"]), FakeCloud())
    graph = build_graph(services, checkpointer=InMemorySaver())
    with pytest.raises(TmoGraphError, match="no text"):
        _run(graph, "   ", Context())
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(TmoGraphError, match="not a readable image"):
        _run(graph, "Hi", Context(), thread="t2", views={"overhead": {"image": str(bad)}})
    with pytest.raises(TmoGraphError, match="unknown policy"):
        Context(policy="smart")


def test_old_turns_move_to_memory_and_are_recalled_per_user(tmp_path: Path) -> None:
    local = FakeLocal(["ok"])
    services = fake_services(tmp_path, local, None)
    graph = build_graph(services, checkpointer=InMemorySaver())
    alice = Context(
        policy="always-local", user_id="alice", recent_turns=2, recall_k=5, min_recall_score=-1
    )
    texts = ["My locker code is 4711.", "I like basil.", "The oven is gas.", "What is my code?"]
    for text in texts:
        out = _run(graph, text, alice, thread="a")
    # The state keeps the whole dialogue; the first turn, beyond the two recent ones, is also
    # in the memory store now (once).
    assert len(out["messages"]) == 2 * len(texts)
    assert out["messages"][0].content == texts[0]
    state = graph.get_state({"configurable": {"thread_id": "a"}}).values
    assert state["remembered_turns"] == 1
    assert stored_turns(services.memory, user_id="alice") == [0]
    # Recalled from memory into the model's system text.
    assert "4711" in local.seen[-1][0]["content"]
    assert out["turns"][-1]["turn"] == 3
    bob = Context(
        policy="always-local", user_id="bob", recent_turns=2, recall_k=5, min_recall_score=-1
    )
    _run(graph, "What is my code?", bob, thread="b")
    assert all("4711" not in m["content"] for m in local.seen[-1])


@pytest.mark.parametrize(("scope", "recalled"), [("thread", False), ("user", True)])
def test_recall_stays_in_the_dialogue_unless_configured(
    tmp_path: Path, scope: str, recalled: bool
) -> None:
    local = FakeLocal(["ok"])
    graph = build_graph(fake_services(tmp_path, local, None), checkpointer=InMemorySaver())
    context = Context(
        policy="always-local",
        user_id="alice",
        recent_turns=1,
        recall_k=5,
        min_recall_score=-1,
        recall_scope=scope,  # type: ignore[arg-type]
    )
    for text in ["My card PIN is 4711.", "I like basil.", "The oven is gas."]:
        _run(graph, text, context, thread="first")  # the PIN turn moves to memory
    _run(graph, "What do you remember?", context, thread="second")
    assert ("4711" in local.seen[-1][0]["content"]) is recalled
