"""Feedback on a turn: through the server (owner only, checked, stored, audited), the chat
model and the graph-level helper."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeLocal
from tests.unit_tests.learning_fakes import JudgingCloud, learning_services
from tmo_graph.chat_model import TMOChatModel
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.guards.audit import read_audit, read_feedback, summarize
from tmo_graph.learning.feedback import record_feedback, turns_of
from tmo_graph.server.app import create_app
from tmo_graph.server.keys import KeyRing, add_key
from tmo_graph.threads.labels import MemoryLabels, SqliteLabels

COMMENT = "wrong city, I live in Lyon"


def _server(tmp_path: Path) -> tuple[TestClient, dict[str, str], SqliteLabels]:
    keys = tmp_path / "keys.yaml"
    secrets = {name: add_key(keys, name, f"{name}-key")[1] for name in ("al", "bo")}
    services = learning_services(
        tmp_path, FakeLocal(["sure"], logprob=-0.01), JudgingCloud(), shadow_rate=0.0
    )
    labels = SqliteLabels(tmp_path / "labels.sqlite")
    graph = build_graph(services, checkpointer=InMemorySaver())
    app = create_app(
        graph, services.settings, services=services, keys=KeyRing(file=keys), labels=labels
    )
    return TestClient(app), secrets, labels


def _auth(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def test_feedback_through_the_server(tmp_path: Path) -> None:
    client, secrets, labels = _server(tmp_path)
    with client:
        asked = client.post(
            "/v1/chat/completions",
            headers=_auth(secrets["al"]),
            json={"model": "tmo-always-cloud", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert asked.status_code == 200, asked.text
        thread, turn = asked.headers["x-tmo-thread-id"], asked.json()["tmo"]["turn"]
        body = {"thread_id": thread, "turn": turn, "score": -1, "comment": COMMENT}

        stored = client.post("/v1/feedback", headers=_auth(secrets["al"]), json=body)
        assert stored.status_code == 201, stored.text
        label = stored.json()
        assert (label["thread_id"], label["turn"], label["score"]) == (thread, 0, -1.0)
        assert (label["user"], label["source"], label["comment"]) == ("al", "feedback", COMMENT)

        # Another user's thread and an unknown one: the same 404.
        other = client.post("/v1/feedback", headers=_auth(secrets["bo"]), json=body)
        unknown = client.post(
            "/v1/feedback", headers=_auth(secrets["bo"]), json={**body, "thread_id": "nope"}
        )
        assert other.status_code == unknown.status_code == 404
        assert other.json()["error"]["code"] == unknown.json()["error"]["code"]
        assert other.json()["error"]["code"] == "thread_not_found"
        assert "no thread" in other.json()["error"]["message"]

        missing_turn = client.post(
            "/v1/feedback", headers=_auth(secrets["al"]), json={**body, "turn": 1}
        )
        assert missing_turn.status_code == 404
        assert missing_turn.json()["error"]["param"] == "turn"
        assert "turns 0..0" in missing_turn.json()["error"]["message"]

        for bad, param in (
            ({**body, "score": "good"}, "score"),
            ({**body, "score": True}, "score"),
            ({**body, "turn": -1}, "turn"),
            ({**body, "turn": "0"}, "turn"),
            ({**body, "coment": "typo"}, "coment"),
            ({"turn": 0, "score": 1}, "thread_id"),
        ):
            refused = client.post("/v1/feedback", headers=_auth(secrets["al"]), json=bad)
            assert refused.status_code == 400, bad
            error = refused.json()["error"]
            assert error["type"] == "invalid_request_error" and error["param"] == param
            assert '"thread_id"' in error["message"]  # the shape to send
        not_json = client.post("/v1/feedback", headers=_auth(secrets["al"]), content=b"thumbs up")
        assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]["message"]
        no_key = client.post("/v1/feedback", json=body)
        assert no_key.status_code == 401

        # The console shows the label beside the turn's badges, and in its JSON.
        shown = client.get(f"/console/api/threads/{thread}", headers=_auth(secrets["al"]))
        assert shown.status_code == 200, shown.text
        assert [
            (x["source"], x["score"], x["comment"]) for x in shown.json()["dialogue"][0]["labels"]
        ] == [("feedback", -1.0, COMMENT)]
        page = client.get(f"/console/threads/{thread}", headers=_auth(secrets["al"]))
        assert 'class="badge label feedback"' in page.text and "feedback -1" in page.text

    kept = asyncio.run(labels.of_thread(thread))
    assert [(x.turn, x.user_id, x.source, x.score, x.comment) for x in kept] == [
        (0, "al", "feedback", -1.0, COMMENT)
    ]
    audit = tmp_path / "audit.jsonl"
    lines = read_feedback(audit)
    assert len(lines) == 1
    assert lines[0]["thread_id"] == thread and lines[0]["user_id"] == "al"
    assert lines[0]["comment_chars"] == len(COMMENT) and lines[0]["score"] == -1.0
    assert lines[0]["key_id"] == "al-key"
    assert "Lyon" not in audit.read_text()  # the comment's words stay in the labels table
    requests = read_audit(audit)  # the cloud request lines still read and total as before
    assert len(requests) == 1 and summarize(requests)["requests"] == 1


def test_feedback_through_the_chat_model(tmp_path: Path) -> None:
    services = learning_services(
        tmp_path, FakeLocal(["sure"], logprob=-0.01), JudgingCloud(), shadow_rate=0.0
    )
    labels = MemoryLabels()
    for graph in (build_graph(services, checkpointer=InMemorySaver()), build_graph(services)):
        model = TMOChatModel(
            graph=graph,
            labels=labels,
            thread_id=f"t-{id(graph)}",
            user_id="ann",
            settings=services.settings,
        )
        reply = model.invoke("what is the capital of France?")
        turn = reply.response_metadata["turn"]
        label = model.feedback(turn, 1, "good")
        assert (label.turn, label.user_id, label.source, label.score) == (
            turn,
            "ann",
            "feedback",
            1,
        )
        with pytest.raises(TmoGraphError, match="turn 1 is not one of them"):
            model.feedback(turn + 1, 1)
        with pytest.raises(TmoGraphError, match="score must be a number"):
            model.feedback(turn, "up")  # type: ignore[arg-type]
    assert len(asyncio.run(labels.since())) == 2
    assert [e["comment_chars"] for e in read_feedback(tmp_path / "audit.jsonl")] == [4, 4]
    with pytest.raises(TmoGraphError, match="no labels table"):
        TMOChatModel(graph=graph, thread_id="x").feedback(0, 1)


def test_the_graph_level_helper_checks_the_turn(tmp_path: Path) -> None:
    services = learning_services(
        tmp_path, FakeLocal(["sure"], logprob=-0.01), JudgingCloud(), shadow_rate=0.0
    )
    graph = build_graph(services, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "g1"}}
    graph.invoke({"messages": [("user", "hello")]}, config)
    graph.invoke({"messages": [("user", "again")]}, config)
    assert turns_of(graph, "g1") == 2 and turns_of(graph, "none") == 0
    labels = MemoryLabels()
    label = asyncio.run(
        record_feedback(
            labels, thread_id="g1", turn=1, score=1, user_id="u", turns_done=turns_of(graph, "g1")
        )
    )
    assert label.turn == 1 and label.comment == ""
    with pytest.raises(TmoGraphError, match="turns 0..1; turn 2"):
        asyncio.run(
            record_feedback(labels, thread_id="g1", turn=2, score=1, user_id="u", turns_done=2)
        )
    assert len(asyncio.run(labels.of_thread("g1"))) == 1
