"""Which requests are a front-end's chores (answered on the device, no thread): Open WebUI's
task prompts by their frame and task phrase, the client's own mark, the operator's markers."""

from __future__ import annotations

from typing import Any

import pytest

from tmo_graph.sections import ServerSettings
from tmo_graph.server.chores import chore_of, recognise
from tmo_graph.server.errors import ApiError
from tmo_graph.server.schemas import ChatRequest

HISTORY = "<chat_history>\nUSER: How do induction hobs work?\nASSISTANT: Magnets.\n</chat_history>"


def task(first_line: str, frame: str = HISTORY) -> str:
    """A prompt in the shape of Open WebUI's task templates: the task, guidelines, the chat."""
    return (
        f"### Task:\n{first_line}\n### Guidelines:\n- Keep it short.\n"
        f"### Output:\nJSON format: {{ }}\n### Chat History:\n{frame}"
    )


# The first line of each Open WebUI default task prompt (the phrase recognised is in it).
OPEN_WEBUI = {
    "title": "Generate a concise, 3-5 word title with an emoji summarizing the chat history.",
    "tags": "Generate 1-3 broad tags categorizing the main themes of the chat history, along "
    "with 1-3 more specific subtopic tags.",
    "follow_ups": "Suggest 3-5 relevant follow-up questions or prompts that the user might "
    "naturally ask next in this conversation as a **user**, based on the chat history.",
    "search_queries": "Analyze the chat history to determine the necessity of generating "
    "search queries, in the given language.",
    "autocomplete": "You are an autocompletion system. Continue the text in `<text>` based "
    "on the **completion type** in `<type>` and the given language.",
}


# Open WebUI 0.12.4 reworded two of them (as it sent them, recorded in
# tests/integration_tests/data/openwebui_requests.jsonl).
OPEN_WEBUI_0_12_4 = {
    "title": "Generate a concise title summarizing the chat history.",
    "follow_ups": "Predict 3-5 useful messages this user might naturally send next to advance "
    "their current objective.",
}


@pytest.mark.parametrize("chore", sorted(OPEN_WEBUI_0_12_4))
def test_open_webui_0_12_4_task_prompts_are_their_chores(chore: str) -> None:
    assert recognise(task(OPEN_WEBUI_0_12_4[chore])) == chore


@pytest.mark.parametrize("chore", sorted(OPEN_WEBUI))
def test_each_open_webui_task_prompt_is_its_chore(chore: str) -> None:
    assert recognise(task(OPEN_WEBUI[chore])) == chore
    # Older templates spaced it differently, and a title template without the emoji line.
    assert recognise("  " + task(OPEN_WEBUI[chore]).replace("\n", "\n\n")) == chore


@pytest.mark.parametrize(
    "text",
    [
        "What would be a good title for my essay on induction hobs?",
        "Suggest a 3-5 word title for my talk, and some follow-up questions.",
        # The task phrase without Open WebUI's frame (no chat history): a user's own question.
        "### Task:\nGenerate a concise, 3-5 word title for my novel.",
        # The frame with a task that is no chore.
        task("Explain the chat history to me in detail."),
        "",
    ],
)
def test_an_ordinary_question_is_no_chore(text: str) -> None:
    assert recognise(text) is None


def _request(text: str, **extra: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "tmo-cascade", "messages": [{"role": "user", "content": text}], **extra}
    )


def test_the_client_marks_a_chore_or_a_turn_and_the_operator_adds_markers() -> None:
    on, off = ServerSettings(), ServerSettings(chores=False)
    title = _request(task(OPEN_WEBUI["title"]))
    assert chore_of(title, {}, on) == "title"
    assert chore_of(title, {}, off) is None  # recognition off
    assert chore_of(title, {"x-tmo-chore": "0"}, on) is None  # the client says: a turn
    plain = _request("Summarise our chat in five words.")
    assert chore_of(plain, {"x-tmo-chore": "1"}, off) == "marked"
    assert chore_of(_request("Hi", metadata={"tmo_chore": "true"}), {}, on) == "marked"
    ops = ServerSettings(chore_markers=["Summarise our chat in"])
    assert chore_of(plain, {}, ops) == "marked"
    assert chore_of(_request("Please summarise our chat in five words."), {}, ops) is None
    with pytest.raises(ApiError) as info:
        chore_of(plain, {"x-tmo-chore": "maybe"}, on)
    assert info.value.status == 400 and info.value.param == "x-tmo-chore"
