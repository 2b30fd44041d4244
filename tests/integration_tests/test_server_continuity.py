"""Dialogues of clients that resend the whole chat and name no thread (Open WebUI, most OpenAI
SDK apps): the server finds the thread by content, per user; a configured header may name it;
the request limits count only what the thread does not hold; an edit or a regenerate forks.

Each test serves a graph on instant fake models with uvicorn on 127.0.0.1 and drives it with
the official ``openai`` client.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from openai import OpenAI

from tests.integration_tests.test_server import Served
from tests.integration_tests.test_server_access import make_keys
from tests.unit_tests.fakes import FakeLocal, fake_services, png_bytes
from tmo_graph.graph import build_graph
from tmo_graph.memory.recall import stored_turns
from tmo_graph.server.app import create_app
from tmo_graph.server.keys import KeyRing
from tmo_graph.services import Services
from tmo_graph.settings import Settings

pytestmark = pytest.mark.integration
MODEL = "tmo-always-local"


@dataclass
class CountingLocal(FakeLocal):
    """A sure local model whose every answer is new: 'Answer 1.', 'Answer 2.', ..."""

    answers: list[str] = field(default_factory=list)
    logprob: float = -0.01

    def reply(self, messages: list[dict[str, str]]) -> str:
        time.sleep(0.01)  # some latency for the dialogue's budget to spend
        return f"Answer   {self.calls + 1}.\n"  # spaces a client may reformat


@dataclass
class App:
    served: Served
    graph: Any
    services: Services

    def client(self) -> OpenAI:
        return self.served.client()

    def state(self, thread_id: str) -> dict[str, Any]:
        return dict(self.graph.get_state({"configurable": {"thread_id": thread_id}}).values)


def _app(tmp: Path, **server: Any) -> App:
    settings = Settings(server=server) if server else Settings()
    services = fake_services(tmp, CountingLocal(), settings=settings)
    graph = build_graph(services, checkpointer=InMemorySaver())
    return App(
        Served(create_app(graph, settings, services=services, no_auth=True)), graph, services
    )


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    served = _app(tmp_path)
    yield served
    served.served.stop()


class Chat:
    """A client that keeps the chat and resends all of it each turn, as Open WebUI does."""

    def __init__(self, client: OpenAI, user: str | None = None, **headers: str) -> None:
        self.client, self.user, self.headers = client, user, headers
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
        self.infos: list[dict[str, Any]] = []

    def say(self, content: Any, stream: bool = False) -> dict[str, Any]:
        self.messages.append({"role": "user", "content": content})
        extra: dict[str, Any] = {"extra_headers": self.headers}
        if self.user is not None:
            extra["user"] = self.user
        if stream:
            text, info = "", {}
            for chunk in self.client.chat.completions.create(
                model=MODEL,
                messages=self.messages,
                stream=True,
                **extra,  # type: ignore[arg-type]
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                info = (chunk.model_extra or {}).get("tmo") or info
        else:
            reply = self.client.chat.completions.create(
                model=MODEL,
                messages=self.messages,  # type: ignore[arg-type]
                **extra,
            )
            text, info = reply.choices[0].message.content or "", reply.model_extra["tmo"]
        # Clients show (and resend) the answer trimmed.
        self.messages.append({"role": "assistant", "content": text.strip()})
        self.infos.append(info)
        return info


def _image(color: str) -> list[dict[str, Any]]:
    url = "data:image/png;base64," + base64.b64encode(png_bytes(color)).decode()
    return [
        {"type": "text", "text": f"What colour is this ({color})?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]


# --------------------------------------------------------------------------- continuity


def test_a_resent_chat_without_a_header_is_one_thread_whose_turns_and_budget_carry(
    app: App,
) -> None:
    chat = Chat(app.client())
    infos = [chat.say(q, stream=i % 2 == 1) for i, q in enumerate(["one?", "two?", "3?", "4?"])]
    assert len({i["thread_id"] for i in infos}) == 1
    assert [i["turn"] for i in infos] == [0, 1, 2, 3]
    left = [i["budget_left"]["latency_s"] for i in infos]
    assert left == sorted(left, reverse=True) and left[-1] < left[0], left
    state = app.state(infos[0]["thread_id"])
    assert state["turn_count"] == 4
    # The thread holds each question once (not the whole chat again each turn).
    asked = [m.content for m in state["messages"] if m.type == "human"]
    assert asked.count("one?") <= 1 and asked[-1] == "4?"

    other = Chat(app.client())
    second = [other.say(q) for q in ("Another chat?", "More?")]
    assert second[0]["thread_id"] == second[1]["thread_id"] != infos[0]["thread_id"]
    assert [i["turn"] for i in second] == [0, 1]


def test_two_users_sending_identical_messages_never_share_a_thread(app: App) -> None:
    ann = Chat(app.client(), user="ann")
    ann.say("Is the pot boiling?")
    ben = Chat(app.client(), user="ben")
    ben.messages = list(ann.messages)  # ben repeats ann's dialogue word for word
    mine, his = ann.say("And now?"), ben.say("And now?")
    assert mine["thread_id"] != his["thread_id"]
    assert (mine["turn"], his["turn"]) == (1, 0)  # ben's history starts his own thread


def test_memory_holds_each_turn_once_after_a_ten_turn_resent_chat(app: App) -> None:
    chat = Chat(app.client())
    infos = [chat.say(f"Question {n}?") for n in range(10)]
    assert len({i["thread_id"] for i in infos}) == 1 and infos[-1]["turn"] == 9
    recent = app.services.settings.routing.recent_turns
    # Turns 0..(9 - recent) left the recent window, each stored once (a thread per request
    # would have stored every older turn again under each new thread).
    assert len(stored_turns(app.services.memory, user_id="anonymous")) == 9 - recent
    # An edit of the last question forks from turn 9 and carries the memory of the turns
    # that had left the window by then (0..3), under the fork's own thread.
    edit = Chat(app.client())
    edit.messages = chat.messages[:-2]
    fork = edit.say("Question 9, edited?")
    assert fork["turn"] == 9 and fork["thread_id"] != infos[0]["thread_id"]
    copied = stored_turns(app.services.memory, user_id="anonymous", thread_id=fork["thread_id"])
    assert sorted(copied) == list(range(9 - recent))


def test_a_thread_is_found_again_after_a_restart_and_forked_in_the_sqlite_store(
    tmp_path: Path,
) -> None:
    services = fake_services(tmp_path, CountingLocal())
    db = tmp_path / "threads.sqlite"
    served = Served(create_app(services=services, db=db, no_auth=True))
    try:
        chat = Chat(served.client())
        first = chat.say("Remember the boiler?")
    finally:
        served.stop()
    served = Served(create_app(services=services, db=db, no_auth=True))
    try:
        chat.client = served.client()
        again = chat.say("And now?")
        # An edit forks in the SQLite store too: the checkpoint is copied to a new thread.
        edit = Chat(served.client())
        edit.messages = chat.messages[:3]
        fork = edit.say("And now, edited?")
    finally:
        served.stop()
    assert again["thread_id"] == first["thread_id"] and again["turn"] == 1
    assert fork["thread_id"] != first["thread_id"] and fork["turn"] == 1


def test_with_keys_another_user_repeating_a_dialogue_gets_a_thread_of_their_own(
    tmp_path: Path,
) -> None:
    keys = make_keys(tmp_path)
    services = fake_services(tmp_path, CountingLocal())
    graph = build_graph(services, checkpointer=InMemorySaver())
    served = Served(create_app(graph, services.settings, keys=KeyRing(file=keys.file)))
    try:

        def client(name: str) -> OpenAI:
            url = f"{served.url}/v1"
            return OpenAI(base_url=url, api_key=keys.secrets[name], max_retries=0)

        alice = Chat(client("alice"))
        alice.say("My code is 1234. Is the pot boiling?")
        bob = Chat(client("bob"))
        bob.messages = list(alice.messages)  # alice's dialogue, her answer included
        raw = bob.client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[*bob.messages, {"role": "user", "content": "What was my code?"}],  # type: ignore[list-item]
        )
        mine = alice.say("What was my code?")
        assert raw.headers["x-tmo-turn"] == "0" and mine["turn"] == 1
        assert raw.headers["x-tmo-thread-id"] != mine["thread_id"]
        assert (
            graph.get_state({"configurable": {"thread_id": mine["thread_id"]}}).values["turn_count"]
            == 2
        )  # bob's request never reached alice's thread
    finally:
        served.stop()


# --------------------------------------------------------------------------- the header


def test_a_configured_header_names_the_thread_per_user(tmp_path: Path) -> None:
    app = _app(tmp_path, thread_header="X-OpenWebUI-Chat-Id")
    try:
        header = {"X-OpenWebUI-Chat-Id": "chat-1"}
        ann = Chat(app.client(), "ann", **header)
        first, second = ann.say("One?"), ann.say("Two?")
        assert first["thread_id"] == second["thread_id"] and second["turn"] == 1
        # The same id from another user is another thread; a new id starts one.
        ben = Chat(app.client(), "ben", **header)
        assert ben.say("One?")["thread_id"] != first["thread_id"]
        other = Chat(app.client(), "ann", **{"X-OpenWebUI-Chat-Id": "chat-2"})
        assert other.say("One?")["thread_id"] != first["thread_id"]
        # Another chat of ann's, word for word the same, stays apart.
        twin = Chat(app.client(), "ann", **{"X-OpenWebUI-Chat-Id": "chat-3"})
        twin.messages = list(ann.messages)
        assert twin.say("Three?")["thread_id"] != first["thread_id"]
        # An edit of the second question in chat-1 forks; the chat's thread is left as it was.
        edit = Chat(app.client(), "ann", **header)
        edit.messages = ann.messages[:3]
        fork = edit.say("Two, edited?")
        assert fork["thread_id"] != first["thread_id"] and fork["turn"] == 1
        assert app.state(first["thread_id"])["turn_count"] == 2
        assert edit.say("Three?")["thread_id"] == fork["thread_id"]
        # A regenerate of the first question starts the chat again in a thread of its own.
        again = Chat(app.client(), "ann", **header)
        assert again.say("One?")["thread_id"] not in (first["thread_id"], fork["thread_id"])
        # x-tmo-thread-id still names a thread as it did.
        named = Chat(app.client(), "ann", **{**header, "x-tmo-thread-id": first["thread_id"]})
        named.messages = list(ann.messages)
        assert named.say("Three?")["turn"] == 2
    finally:
        app.served.stop()


# --------------------------------------------------------------------------- limits


def test_limits_count_what_is_new_not_the_resent_history(tmp_path: Path) -> None:
    app = _app(tmp_path)  # the defaults: 8 images per request
    try:
        chat = Chat(app.client())
        colours = ["red", "blue", "green", "white", "black", "yellow", "purple", "orange", "grey"]
        infos = [chat.say(_image(c)) for c in colours] + [chat.say("Which was first?")]
        assert len({i["thread_id"] for i in infos}) == 1 and infos[-1]["turn"] == 9
        # A request whose images are new is refused at nine, as before.
        nine = [p for c in colours for p in _image(c)[1:]]
        with pytest.raises(openai.BadRequestError) as info:
            app.client().chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": [{"type": "text", "text": "?"}, *nine]}],  # type: ignore[list-item]
            )
        assert "server.max_images" in info.value.message
    finally:
        app.served.stop()


def test_a_resent_image_the_thread_holds_is_not_counted_again(tmp_path: Path) -> None:
    app = _app(tmp_path, max_images=1)
    try:
        chat = Chat(app.client())
        chat.say(_image("red"))
        again = _image("red") + _image("red")[1:]  # the same picture, twice more
        assert chat.say(again)["turn"] == 1
        with pytest.raises(openai.BadRequestError):
            chat.say(_image("blue") + _image("green")[1:])
    finally:
        app.served.stop()


# --------------------------------------------------------------------------- forks


def test_an_edit_forks_from_that_turn_and_leaves_the_original(app: App) -> None:
    chat = Chat(app.client())
    infos = [chat.say(q) for q in ("One?", "Two?", "Three?", "Four?")]
    original = infos[0]["thread_id"]
    before = app.state(original)
    edit = Chat(app.client())
    edit.messages = chat.messages[:5]  # system, One?, answer, Two?, answer
    fork = edit.say("Three, edited?")
    assert fork["thread_id"] != original and fork["turn"] == 2
    # The fork carries the budget left after turn 1, not after turn 3.
    assert fork["budget_left"]["latency_s"] > infos[3]["budget_left"]["latency_s"]
    after = app.state(original)
    assert after["turn_count"] == 4 and after["messages"] == before["messages"]
    # The fork continues as a thread of its own.
    assert edit.say("Four, again?")["thread_id"] == fork["thread_id"]
    # A regenerate of the last answer forks too.
    regen = Chat(app.client())
    regen.messages = chat.messages[:-2]  # up to the third answer
    again = regen.say("Four?")
    assert again["thread_id"] not in (original, fork["thread_id"]) and again["turn"] == 3
