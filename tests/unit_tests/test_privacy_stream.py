"""A streamed cloud answer shows the user's values, never a placeholder or half of one."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeLocal, fake_services
from tmo_graph.context import Context
from tmo_graph.conversation import Done, Token, astream_turn, stream_turn
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.guards.privacy import Redactor, StreamRestorer

EMAIL, PHONE, CARD = "anna.berg@example.org", "+49 151 2345 6789", "4111 1111 1111 1111"
PLACEHOLDER = re.compile(r"\[[A-Z]+_\d+\]")


class EchoCloud(BaseChatModel):
    """Streams, a few characters at a time, an answer that names every placeholder it was
    sent (so the stream is full of them), and records the requests."""

    piece: int = 3
    sent: list[list[BaseMessage]] = []

    @property
    def _llm_type(self) -> str:
        return "echo-cloud"

    def _answer(self, messages: list[BaseMessage]) -> str:
        self.sent.append(messages)
        seen = PLACEHOLDER.findall("\n".join(str(m.content) for m in messages))
        return "Noted: " + ", ".join(dict.fromkeys(seen)) + " [sic] done ["

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        text = self._answer(messages)
        for i in range(0, len(text), self.piece):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=text[i : i + self.piece]))
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self._answer(messages)))])


def _graph(tmp_path: Path, piece: int = 3) -> tuple[Any, EchoCloud]:
    cloud = EchoCloud(piece=piece)
    cloud.sent = []
    services = fake_services(tmp_path, FakeLocal(["ok"]), cloud)
    return build_graph(services, checkpointer=InMemorySaver()), cloud


def _tokens(events: list[Token | Done]) -> list[str]:
    return [e.text for e in events if isinstance(e, Token)]


def _no_placeholder_piece(tokens: list[str], placeholders: list[str]) -> None:
    """No token holds a placeholder, and none but the last (the answer's own unfinished "["
    at its very end) ends in the start of one ("[EM", "[CARD_")."""
    assert not any(PLACEHOLDER.search(token) for token in tokens), tokens
    for token in tokens[:-1]:
        start = token.rfind("[")
        tail = token[start:] if start != -1 else ""
        assert not any(p.startswith(tail) and p != tail for p in placeholders if tail), token


@pytest.mark.parametrize("piece", [1, 2, 3, 7])
def test_the_stream_shows_the_values_never_a_placeholder(tmp_path: Path, piece: int) -> None:
    graph, cloud = _graph(tmp_path, piece)
    question = {"messages": [("user", f"Mail {EMAIL} or call {PHONE}; card {CARD}.")]}
    events = list(stream_turn(graph, question, "s", Context(policy="always-cloud")))
    done = events[-1]
    assert isinstance(done, Done)
    sent = "\n".join(str(m.content) for m in cloud.sent[-1])
    assert EMAIL not in sent and "[EMAIL_1]" in sent  # redacted on the way out
    tokens = _tokens(events)
    shown = "".join(tokens)
    assert shown == done.record["answer"]
    assert shown == f"Noted: {EMAIL}, {PHONE}, {CARD} [sic] done ["
    _no_placeholder_piece(tokens, ["[EMAIL_1]", "[PHONE_1]", "[CARD_1]"])


def test_the_device_side_map_matches_the_cloud_request_over_a_long_dialogue(
    tmp_path: Path,
) -> None:
    """The stream's map is recomputed by the route node: over history, recalled memory and
    persona it must number the values as the cloud node did."""
    graph, cloud = _graph(tmp_path)
    context = Context(
        policy="always-cloud", user_id="u", recent_turns=1, recall_k=3, min_recall_score=-1.0
    )
    texts = [
        f"My mail is {EMAIL}.",
        "Second mail: bo@example.com, phone +44 20 7946 0958.",
        f"Card {CARD}, and mail again {EMAIL}.",
        "Say all of them back.",
    ]
    persona = SystemMessage(content="Help desk of help@example.net.")
    for i, text in enumerate(texts):
        messages: list[Any] = [persona, ("user", text)] if i == 0 else [("user", text)]
        events = list(stream_turn(graph, {"messages": messages}, "long", context))
        done = events[-1]
        assert isinstance(done, Done)
        assert "".join(_tokens(events)) == done.record["answer"]
        assert not PLACEHOLDER.search(done.record["answer"])
    assert "bo@example.com" in done.record["answer"] and CARD in done.record["answer"]


def test_the_async_stream_restores_too(tmp_path: Path) -> None:
    graph, _ = _graph(tmp_path, piece=2)

    async def run() -> list[Token | Done]:
        question = {"messages": [("user", f"Write to {EMAIL}")]}
        return [e async for e in astream_turn(graph, question, "a", Context(policy="always-cloud"))]

    events = asyncio.run(run())
    tokens = _tokens(events)
    assert "".join(tokens) == f"Noted: {EMAIL} [sic] done ["
    _no_placeholder_piece(tokens, ["[EMAIL_1]"])


def test_without_personal_data_nothing_is_held_back(tmp_path: Path) -> None:
    graph, _ = _graph(tmp_path, piece=1)
    events = list(
        stream_turn(graph, {"messages": [("user", "Hi")]}, "p", Context(policy="always-cloud"))
    )
    assert "".join(_tokens(events)) == "Noted:  [sic] done ["


# --- the restorer itself --------------------------------------------------------------------

MAP = {"[EMAIL_1]": EMAIL, "[EMAIL_12]": "z@example.org", "[CARD_1]": CARD}


@pytest.mark.parametrize("cut", range(1, 40))
def test_any_split_of_the_stream_restores_the_same_text(cut: int) -> None:
    raw = "To [EMAIL_1], cc [EMAIL_12]; pay [CARD_1] [x] [EMAIL_ [EMAIL_1"
    restorer = StreamRestorer(MAP)
    pieces = [restorer.feed(raw[i : i + cut]) for i in range(0, len(raw), cut)]
    pieces.append(restorer.flush())
    assert "".join(pieces) == (f"To {EMAIL}, cc z@example.org; pay {CARD} [x] [EMAIL_ [EMAIL_1")
    for piece in pieces[:-1]:
        assert "[EMAIL_1]" not in piece and "[CARD" not in piece


def test_a_bracket_that_cannot_start_a_placeholder_is_shown_at_once() -> None:
    restorer = StreamRestorer(MAP)
    assert restorer.feed("see [") == "see "
    assert restorer.feed("note]") == "[note]"
    assert restorer.feed(" [C") == " "
    assert restorer.feed("ARD_1] ok") == f"{CARD} ok"
    assert restorer.flush() == ""


def test_the_redactor_makes_the_matching_restorer() -> None:
    redactor = Redactor()
    assert redactor.redact(f"a {EMAIL} b") == "a [EMAIL_1] b"
    restorer = redactor.restorer()
    assert restorer.feed("[EMA") == "" and restorer.feed("IL_1]!") == f"{EMAIL}!"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([("[EMAIL_1]", EMAIL)], "placeholders must be a mapping, not list"),
        ({"EMAIL_1": EMAIL}, "placeholders must map '\\[KIND_n\\]' strings to strings"),
        ({"[EMAIL_1]": 3}, "placeholders must map"),
    ],
)
def test_a_bad_map_is_refused(bad: Any, message: str) -> None:
    with pytest.raises(TmoGraphError, match=message):
        StreamRestorer(bad)


def test_a_non_text_piece_is_refused() -> None:
    with pytest.raises(TmoGraphError, match="a streamed piece must be a string"):
        StreamRestorer(MAP).feed(None)  # type: ignore[arg-type]


def test_a_placeholder_the_cloud_made_up_never_reaches_the_user() -> None:
    """The cloud saw [EMAIL_1] and answered with [EMAIL_2]: no value stands behind it, so
    neither the stream nor the whole answer shows the code; other brackets stay as written."""
    restorer = StreamRestorer({"[EMAIL_1]": "ada@example.org"})
    pieces = ["Write to [EMAIL_1] or [EM", "AIL_", "2] (see [1], [", "a", "]) [PHONE_3"]
    shown = [restorer.feed(piece) for piece in pieces] + [restorer.flush()]
    # An unfinished code at the very end stays as the cloud wrote it.
    assert "".join(shown) == "Write to ada@example.org or (unknown email) (see [1], [a]) [PHONE_3"
    assert not any("[EM" in piece or "AIL_" in piece for piece in shown)
    redactor = Redactor()
    redactor.redact("mail ada@example.org")
    assert redactor.restore("[EMAIL_1], [EMAIL_2], [CARD_1], [NOTE_1]") == (
        "ada@example.org, (unknown email), (unknown card), [NOTE_1]"
    )
