"""A looping local answer: escalated where the policy escalates, and never fed back verbatim
into a later prompt (local, cloud or recalled memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services
from tmo_graph.context import Context
from tmo_graph.graph import build_graph
from tmo_graph.memory.recall import recall
from tmo_graph.policy.confidence import LOOP_REPETITION, confidence, degenerate_text, repetition
from tmo_graph.prompts import LEFT_OUT_ANSWER, text_dialogue

LOOP = ("This is a fruit, it's a peach. " + "It's a peach, it's a peach. " * 8).strip()
FINE = "A peach: ripe when it gives a little under the thumb."


def _run(graph: Any, text: str, context: Context, thread: str = "t1") -> Any:
    config = {"configurable": {"thread_id": thread}}
    return graph.invoke({"messages": [("user", text)]}, config, context=context)


def test_the_guards_flag_a_loop_and_an_echo_but_not_a_plain_answer() -> None:
    assert repetition((), (), LOOP) > LOOP_REPETITION and degenerate_text(LOOP)
    assert not degenerate_text(FINE)
    assert degenerate_text(FINE, [FINE])  # the same answer again: an echo
    assert not degenerate_text(FINE, ["Something else entirely, said once."])


def test_a_looping_answer_is_left_out_of_the_dialogue_the_models_see() -> None:
    messages = [
        HumanMessage("What fruit is this?"),
        AIMessage(LOOP),
        HumanMessage("Is it ripe?"),
        AIMessage(FINE),
        HumanMessage("And now?"),
        AIMessage(FINE),  # word for word the answer before: an echo
        HumanMessage("Thanks."),
    ]
    dialogue = text_dialogue(messages, [], "You are helpful.")
    answers = [m["content"] for m in dialogue if m["role"] == "assistant"]
    assert answers == [LEFT_OUT_ANSWER, FINE, LEFT_OUT_ANSWER]
    assert [m["content"] for m in dialogue if m["role"] == "user"][-1] == "Thanks."


def test_the_next_prompt_does_not_carry_a_looping_answer(tmp_path: Path) -> None:
    """Device only: the loop stays the turn's answer, but no later prompt or memory sees it."""
    local = FakeLocal([LOOP, FINE, FINE + " Again.", "Fine."])
    services = fake_services(tmp_path, local)
    graph = build_graph(services, checkpointer=InMemorySaver())
    # One recent turn: each finished turn leaves the window (into memory) at the next one.
    context = Context(policy="always-local", user_id="u1", recent_turns=1)
    first = _run(graph, "What fruit is this?", context)
    assert first["turns"][-1]["answer"] == LOOP  # the user got it; it stays on record
    for question in ("Is it ripe?", "Can I eat it now?", "What about the stone?"):
        _run(graph, question, context)
    for prompt in local.seen[1:]:
        said = " ".join(m["content"] for m in prompt)
        assert "it's a peach. It's a peach" not in said
    assert any(m["content"] == LEFT_OUT_ANSWER for m in local.seen[1] if m["role"] == "assistant")
    stored = recall(services.memory, user_id="u1", query=LOOP, k=10)
    assert stored and all("it's a peach, it's a peach" not in r["text"] for r in stored)


def test_a_looping_answer_is_escalated_even_when_its_scores_are_sure(tmp_path: Path) -> None:
    cloud = FakeCloud(answer="It is a peach.")
    cloud.sent = []
    local = FakeLocal([LOOP], logprob=-0.05)  # fluent and sure: a small model's loop
    score, parts = confidence([-0.05] * 40, [0.6] * 40, LOOP)
    context = Context(policy="cascade", confidence_threshold=0.05)
    assert score > context.confidence_threshold  # the score alone would keep it
    graph = build_graph(fake_services(tmp_path, local, cloud), checkpointer=InMemorySaver())
    record = _run(graph, "What fruit is this?", context)["turns"][-1]
    assert record["escalated"] and record["route"] == "cloud"
    assert record["answer"] == "It is a peach." and record["local_answer"] == LOOP
    assert len(cloud.sent) == 1


def test_a_threshold_of_zero_keeps_even_a_looping_answer(tmp_path: Path) -> None:
    cloud = FakeCloud(answer="It is a peach.")
    cloud.sent = []
    local = FakeLocal([LOOP], logprob=-0.05)
    graph = build_graph(fake_services(tmp_path, local, cloud), checkpointer=InMemorySaver())
    context = Context(policy="cascade", confidence_threshold=0.0)  # "never escalate"
    record = _run(graph, "What fruit is this?", context)["turns"][-1]
    assert record["route"] == "local" and not record["escalated"] and cloud.sent == []


def test_an_answer_that_copies_the_left_out_placeholder_is_escalated(tmp_path: Path) -> None:
    """Seen in the audio example: after a left-out answer the small model wrote the history's
    placeholder as its own answer, fluently, and the user got it."""
    cloud = FakeCloud(answer="The saw blade comes off with the 5 mm key.")
    cloud.sent = []
    local = FakeLocal([LOOP, LEFT_OUT_ANSWER], logprob=-0.05)
    graph = build_graph(fake_services(tmp_path, local, cloud), checkpointer=InMemorySaver())
    context = Context(policy="cascade", confidence_threshold=0.05)
    _run(graph, "What fruit is this?", context)
    record = _run(graph, "How do I change the saw blade?", context)["turns"][-1]
    assert record["escalated"] and record["answer"] == "The saw blade comes off with the 5 mm key."
