"""Front-end chores through `tmo-graph serve`: answered by the local model, no thread, no
budget, no cloud request; an ordinary question about a title is a turn (real server on
127.0.0.1, official openai client)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph.checkpoint.memory import InMemorySaver

from tests.integration_tests.test_server import Served
from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services, owner_map
from tests.unit_tests.test_chores import OPEN_WEBUI, task
from tmo_graph.graph import build_graph
from tmo_graph.server.app import create_app
from tmo_graph.threads.owners import MemoryOwners

pytestmark = pytest.mark.integration


@dataclass
class Setup:
    served: Served
    local: FakeLocal
    cloud: FakeCloud
    saver: InMemorySaver
    owners: MemoryOwners


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("chores")
    local = FakeLocal(answers=['{ "title": "🍳 Induction Hobs" }'])
    cloud = FakeCloud(answer="from the cloud")
    cloud.sent = []
    services = fake_services(tmp, local, cloud)
    saver, owners = InMemorySaver(), MemoryOwners()
    graph = build_graph(services, checkpointer=saver)
    served = Served(create_app(graph, services=services, no_auth=True, owners=owners))
    yield Setup(served, local, cloud, saver, owners)
    served.stop()


def _threads(setup: Setup) -> int:
    return len(list(setup.saver.list(None)))


@pytest.mark.parametrize("chore", sorted(OPEN_WEBUI))
def test_each_open_webui_chore_is_answered_on_the_device_without_a_thread(
    setup: Setup, chore: str
) -> None:
    local_calls, checkpoints = setup.local.calls, _threads(setup)
    raw = setup.served.client().chat.completions.with_raw_response.create(
        model="tmo-always-cloud",  # the chat's model would send a turn to the cloud
        messages=[{"role": "user", "content": task(OPEN_WEBUI[chore])}],
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == '{ "title": "🍳 Induction Hobs" }'
    assert reply.model_extra["tmo"] == {
        "chore": chore,
        "route": "local",
        "thread_id": None,
        "cost_usd": 0.0,
    }
    assert raw.headers["x-tmo-chore"] == chore and "x-tmo-thread-id" not in raw.headers
    assert setup.local.calls == local_calls + 1
    assert setup.local.seen[-1][-1]["content"] == task(OPEN_WEBUI[chore])  # as sent, directly
    assert setup.cloud.sent == [] and _threads(setup) == checkpoints == 0
    assert owner_map(setup.owners) == {}


def test_a_streamed_chore_and_a_marked_one(setup: Setup) -> None:
    with httpx.stream(
        "POST",
        f"{setup.served.url}/v1/chat/completions",
        json={
            "model": "tmo-cascade",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Name this chat in three words."}],
        },
        headers={"x-tmo-chore": "1"},
        timeout=20,
    ) as response:
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == '{ "title": "🍳 Induction Hobs" }'
    assert chunks[-1]["usage"]["completion_tokens"] > 0 and chunks[-1]["tmo"]["chore"] == "marked"
    assert setup.cloud.sent == [] and owner_map(setup.owners) == {}


def test_a_question_that_mentions_a_title_is_a_turn(setup: Setup) -> None:
    raw = setup.served.client().chat.completions.with_raw_response.create(
        model="tmo-always-cloud",
        messages=[{"role": "user", "content": "Suggest a 3-5 word title for my chat history."}],
    )
    reply: Any = raw.parse()
    assert reply.choices[0].message.content == "from the cloud"
    assert "chore" not in reply.model_extra["tmo"]
    thread = raw.headers["x-tmo-thread-id"]
    assert owner_map(setup.owners) == {thread: "anonymous"} and len(setup.cloud.sent) == 1


def test_without_a_local_model_a_chore_is_refused_not_routed(tmp_path: Path) -> None:
    cloud = FakeCloud(answer="from the cloud")
    cloud.sent = []
    graph = build_graph(fake_services(tmp_path, None, cloud), checkpointer=InMemorySaver())
    served = Served(create_app(graph, no_auth=True))
    try:
        response = httpx.post(
            f"{served.url}/v1/chat/completions",
            json={
                "model": "tmo-always-cloud",
                "messages": [{"role": "user", "content": task(OPEN_WEBUI["tags"])}],
            },
            timeout=20,
        )
    finally:
        served.stop()
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_local_model"
    assert cloud.sent == []
