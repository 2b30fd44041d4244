"""The thread keeps the dialogue; each model reads only its recent window (issue 23, item 2).

A state holding 200 turns is seeded right after ``recall_memory`` (so these tests do not
depend on whether that node trims the state): every model's input holds the persona, the
last ``recent_turns`` turns and the question; the local prompt fits the model's context.
What a 200-turn thread stores is bounded in test_thread_size.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeCloud, FakeLocal, Stats, WordTokenizer, fake_services
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.models.local.model import LocalModel
from tmo_graph.prompts import completed_turns, recent_window, windowed
from tmo_graph.services import Services
from tmo_graph.state import State

PERSONA = "You are a terse cook."
TURNS = 200


def _dialogue(turns: int, words: int = 3) -> list[AnyMessage]:
    """A persona, ``turns`` finished turns (question, answer) and the current question."""
    out: list[AnyMessage] = [SystemMessage(content=PERSONA, id="persona")]
    for i in range(turns):
        out.append(HumanMessage(content=" ".join([f"q{i}"] * words), id=f"h{i}"))
        out.append(AIMessage(content=" ".join([f"a{i}"] * words), id=f"a{i}"))
    out.append(HumanMessage(content=f"q{turns} now", id=f"h{turns}"))
    return out


# --- the window --------------------------------------------------------------------------


def test_the_window_is_the_persona_the_last_turns_and_the_question() -> None:
    messages = _dialogue(10)
    window = recent_window(messages, 3)
    assert [m.id for m in window] == ["persona", "h7", "a7", "h8", "a8", "h9", "a9", "h10"]
    assert recent_window(messages, 0) == [messages[0], messages[-1]]


def test_a_turn_with_tool_calls_leaves_the_window_whole() -> None:
    call = {"name": "timer", "args": {"minutes": 9}, "id": "c1", "type": "tool_call"}
    messages: list[AnyMessage] = [
        HumanMessage(content="boil an egg", id="h0"),
        AIMessage(content="", tool_calls=[call], id="a0"),
        ToolMessage(content="set", tool_call_id="c1", id="t0"),
        AIMessage(content="timer set", id="a0b"),
        HumanMessage(content="and now?", id="h1"),
        AIMessage(content="", tool_calls=[{**call, "id": "c2"}], id="a1"),
        ToolMessage(content="set", tool_call_id="c2", id="t1"),  # this turn's own result
    ]
    assert [m.id for m in recent_window(messages, 0)] == ["h1", "a1", "t1"]
    assert recent_window(messages, 1) == messages


def test_the_window_of_a_trimmed_dialogue_is_the_dialogue() -> None:
    """Idempotent: a state already cut to the window (as recall_memory used to leave it)
    is read as it is."""
    messages = _dialogue(TURNS)
    once = recent_window(messages, 4)
    assert recent_window(once, 4) == once
    assert len(completed_turns(once)) == 4
    state = State(messages=once)
    assert windowed(state, 4) is state
    cut = windowed(State(messages=messages, turn_count=TURNS), 4)
    assert cut.messages == once and cut.turn_count == TURNS


@pytest.mark.parametrize("bad", [-1, 2.5, True, "4"])
def test_a_bad_window_is_a_clear_error(bad: Any) -> None:
    with pytest.raises(TmoGraphError, match="recent_turns must be a whole number") as info:
        recent_window(_dialogue(2), bad)
    assert "Context(recent_turns" in str(info.value)


# --- what each model reads of a 200-turn thread -------------------------------------------


def _seeded(services: Services, messages: list[AnyMessage], thread: str) -> tuple[Any, Any]:
    """A graph whose thread holds ``messages`` as recall_memory leaves a turn (the next node
    is the route), so the window is the nodes' own doing."""
    graph = build_graph(services, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": thread}}
    prompt = str(messages[-1].content)
    graph.update_state(
        config,
        {
            "messages": messages,
            "turn_count": TURNS,
            "prompt": prompt,
            "task": services.tasks.classify_vector(services.embed(prompt)),
            "candidates": [],
            "recalled": [],
        },
        as_node="recall_memory",
    )
    return graph, config


def test_each_model_reads_only_the_window_of_a_200_turn_thread(tmp_path: Path) -> None:
    local, cloud = FakeLocal(["meh"], logprob=-3.0), FakeCloud(answer="boil it 9 minutes")
    cloud.sent = []
    graph, config = _seeded(fake_services(tmp_path, local, cloud), _dialogue(TURNS), "long")
    context = Context(policy="cascade", confidence_threshold=1.0, recent_turns=4)
    out = graph.invoke(None, config, context=context)
    assert out["turns"][-1]["escalated"]  # both models answered the turn
    want = ["q196", "a196", "q197", "a197", "q198", "a198", "q199", "a199", "q200"]
    seen = local.seen[-1]
    assert seen[0] == {"role": "system", "content": PERSONA}
    assert [m["content"].split()[0] for m in seen[1:]] == want
    sent = cloud.sent[-1]
    assert sent[0].content == PERSONA
    assert [str(m.content if isinstance(m.content, str) else m.content[0]["text"]).split()[0]
            for m in sent[1:]] == want  # fmt: skip
    # The thread still holds every turn (what a chat UI shows), and this turn's answer.
    stored = graph.get_state(config).values["messages"]
    assert len(stored) == 1 + 2 * TURNS + 2
    assert stored[-1].content == "boil it 9 minutes"


class _GuardedLocal(FakeLocal):
    """A fake answer behind the real LocalModel's context guard; records the prompt's
    token count as the model would read it."""

    def __init__(self) -> None:
        super().__init__(answers=["fine"], logprob=-0.05)
        self.guard = LocalModel(WordTokenizer(200), object(), Path("."), 0.0, max_new_tokens=16)
        self.read: list[int] = []

    def answer(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int | None = None,
        tags: list[str] | None = None,
        max_time_s: float | None = None,
    ) -> tuple[str, Stats]:
        fitted, warnings = self.guard.fit_to_context(messages, max_new_tokens)
        self.read.append(len(self.guard._prompt_ids(fitted)))
        text, stats = super().answer(fitted, max_new_tokens, tags, max_time_s)
        stats.warnings = warnings  # type: ignore[attr-defined]
        return text, stats

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return self.guard.prompt_tokens(messages)


def test_the_local_prompt_of_a_200_turn_thread_fits_the_models_context(tmp_path: Path) -> None:
    local = _GuardedLocal()
    # 30 words a message: the whole thread is about 12,000 tokens, its window of 4 turns
    # about 250, the model's context 200 (16 of them kept for the answer).
    messages = _dialogue(TURNS, words=30)
    graph, config = _seeded(fake_services(tmp_path, local, None), messages, "fit")
    out = graph.invoke(None, config, context=Context(policy="always-local", recent_turns=4))
    limit = local.guard.context_tokens() - 16
    assert local.read and local.read[-1] <= limit
    assert len(local.guard._prompt_ids([{"role": "user", "content": str(m.content)}
                                        for m in messages])) > 50 * limit  # fmt: skip
    # The guard left the oldest turns of the window out, and the turn record says so.
    assert any("oldest message(s) were left out" in w for w in out["turns"][-1]["warnings"])
    assert local.seen[-1][0] == {"role": "system", "content": PERSONA}
    assert local.seen[-1][-1]["content"] == f"q{TURNS} now"
