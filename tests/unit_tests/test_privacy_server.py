"""The OpenAI-compatible server's per-message "private": true (this server's extension)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services
from tmo_graph.graph import build_graph
from tmo_graph.server.app import create_app
from tmo_graph.server.errors import ApiError
from tmo_graph.server.messages import Chat
from tmo_graph.server.schemas import ChatMessage


def test_a_private_user_message_becomes_a_private_human_message() -> None:
    messages = [
        ChatMessage(role="user", content="code 4711", private=True),
        ChatMessage(role="assistant", content="noted"),
        ChatMessage(role="user", content="and now?"),
    ]
    out = Chat(messages, new_thread=True).new_messages([])
    assert [m.additional_kwargs for m in out] == [{"private": True}, {}, {}]


def test_only_a_user_message_may_be_private() -> None:
    messages = [
        ChatMessage(role="assistant", content="noted", private=True),
        ChatMessage(role="user", content="and now?"),
    ]
    with pytest.raises(ApiError) as error:
        Chat(messages, new_thread=True)
    assert error.value.message == (
        "messages[0] (assistant) is marked private, but only user messages may be; mark the "
        "user message (its answer stays private with it)"
    )


def test_the_private_turn_stays_on_the_device_through_the_api(tmp_path: Path) -> None:
    cloud = FakeCloud()
    cloud.sent = []
    services = fake_services(tmp_path, FakeLocal(["kept"]), cloud)
    app = create_app(
        build_graph(services, checkpointer=InMemorySaver()), services.settings, no_auth=True
    )
    with TestClient(app) as client:
        first = client.post(
            "/v1/chat/completions",
            json={
                "model": "tmo-always-cloud",
                "messages": [{"role": "user", "content": "door code 4711", "private": True}],
            },
        )
        assert first.status_code == 200, first.text
        assert first.json()["tmo"]["route"] == "local"
        thread = first.headers["x-tmo-thread-id"]
        second = client.post(
            "/v1/chat/completions",
            headers={"x-tmo-thread-id": thread},
            json={"model": "tmo-always-cloud", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert second.json()["tmo"]["route"] == "cloud"
        bad = client.post(
            "/v1/chat/completions",
            json={
                "model": "tmo-always-cloud",
                "messages": [{"role": "user", "content": "x", "private": "yes"}],
            },
        )
    sent = "\n".join(str(m.content) for request in cloud.sent for m in request)
    assert len(cloud.sent) == 1 and "4711" not in sent and "kept" not in sent
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == (
        "invalid request: messages.0.private: Value error, must be true or false, a JSON "
        "boolean without quotes (got 'yes')"
    )
