"""What the real Open WebUI sends an OpenAI-compatible backend, per user action.

``test_recorded_fixture_shape`` checks the committed recording (cheap, always runs);
``test_openwebui_end_to_end`` installs Open WebUI (reused when present), drives it in headless
Chromium against the capturing backend and checks the same shape on the fresh recording. It
takes a few minutes and about 3 GB, so it runs only with ``TMO_TEST_OPENWEBUI=1``.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration_tests.openwebui import CHROMIUM, FIXTURE, REPO, ensure_venv
from tests.integration_tests.openwebui_capture import (
    ANSWER,
    MODEL_ID,
    CaptureServer,
    fixture_records,
    read_jsonl,
)
from tests.unit_tests.fakes import owner_map

pytestmark = pytest.mark.integration

# Chat requests per (user, chat) in the scenario: chat 1 = 4 turns + a regenerate + an edit.
EXPECTED_CHATS = {("user1", "chat1"): 6, ("user1", "chat2"): 2, ("user2", "chat1"): 2}
_ACTION = re.compile(r"^(user\d) (chat\d) (turn(\d)|regenerate turn(\d)|edit turn(\d))")


def _roles(record: dict[str, Any]) -> list[str]:
    return [message["role"] for message in record["body"]["messages"]]


def check_shape(records: list[dict[str, Any]], tools: bool = True) -> None:
    """The basic shape of Open WebUI 0.12's traffic for the scenario in ``openwebui.py``;
    ``tools``: whether chat requests carry the built-in tools (native function calling)."""
    by_chat: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    chores: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    chat_ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    user_ids: dict[str, set[str]] = defaultdict(set)
    for record in records:
        assert record["status"] == 200, (record["action"], record["status"])
        match = _ACTION.match(record["action"] or "")
        assert match, f"a request outside a chat step: {record['action']}"
        user, chat = match.group(1), match.group(2)
        headers = record["headers"]
        assert re.fullmatch(r"Bearer <\d+ chars>", headers["authorization"])
        chat_ids[(user, chat)].add(headers["x-openwebui-chat-id"])
        user_ids[user].add(headers["x-openwebui-user-id"])
        if record["kind"] == "chat":
            by_chat[(user, chat)].append(record)
        else:
            chores[(user, chat)].append(record)
    assert {key: len(value) for key, value in by_chat.items()} == EXPECTED_CHATS
    # One chat id per chat (chores included), three chats, two users.
    assert all(len(ids) == 1 for ids in chat_ids.values())
    assert len(set().union(*chat_ids.values())) == 3
    assert all(len(ids) == 1 for ids in user_ids.values())
    assert len(set().union(*user_ids.values())) == 2
    for key, requests in by_chat.items():
        _check_resends(key, requests, tools)
        kinds = [chore["kind"] for chore in chores[key]]
        # A title and tags once per chat (its first turn), follow-ups after every answer.
        assert kinds.count("title") == 1 and kinds.count("tags") == 1, (key, kinds)
        assert kinds.count("follow_ups") == len(requests), (key, kinds)
        assert all(not chore["body"]["tools"] for chore in chores[key])
        assert all(chore["body"]["stream"] is False for chore in chores[key])


def _check_resends(key: tuple[str, str], requests: list[dict[str, Any]], tools: bool) -> None:
    """Every chat request resends the whole conversation, streamed, with tools attached or
    none."""
    by_action: dict[str, dict[str, Any]] = {}
    for record in requests:
        body = record["body"]
        assert body["stream"] is True and bool(body["tools"]) is tools, key
        roles = _roles(record)
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"], (key, roles)
        match = _ACTION.match(record["action"])
        assert match
        turn = int(match.group(4) or match.group(5) or match.group(6))
        assert len(roles) == 2 * turn - 1, (record["action"], roles)
        assert all(
            message["content"] == ANSWER
            for message in body["messages"]
            if message["role"] == "assistant"
        )
        if match.group(4) and turn > 1:
            previous = by_action[f"{key[0]} {key[1]} turn{turn - 1}"]["body"]["messages"]
            assert body["messages"][: len(previous)] == previous, record["action"]
        elif match.group(5):  # a regenerate resends the same question
            assert (
                body["messages"] == by_action[f"{key[0]} {key[1]} turn{turn}"]["body"]["messages"]
            )
        elif match.group(6):  # an edit resends the turns before it and the new question
            original = by_action[f"{key[0]} {key[1]} turn{turn}"]["body"]["messages"]
            assert body["messages"][:-1] == original[:-1]
            assert body["messages"][-1] != original[-1]
        by_action[record["action"].removesuffix(" image")] = record
    if key == ("user1", "chat1"):
        image_turn = by_action["user1 chat1 turn2"]["body"]["messages"][2]["content"]
        assert any(part["type"] == "image_url" for part in image_turn)


def test_recording_proxy_forwards_and_records(tmp_path: Path) -> None:
    """In front of a real server the proxy passes plain and streamed answers and errors
    through unchanged and records each request with the answer's status."""
    upstream = CaptureServer(tmp_path / "upstream.jsonl").start()
    proxy = CaptureServer(tmp_path / "proxy.jsonl", upstream=upstream.url.removesuffix("/v1"))
    proxy.start()
    try:
        headers = {"Authorization": "Bearer sk-test", "X-OpenWebUI-Chat-Id": "c1"}
        body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]}
        plain = httpx.post(f"{proxy.url}/chat/completions", json=body, headers=headers)
        assert plain.json()["choices"][0]["message"]["content"] == ANSWER
        streamed = httpx.post(
            f"{proxy.url}/chat/completions", json={**body, "stream": True}, headers=headers
        )
        assert streamed.headers["content-type"] == "text/event-stream"
        assert streamed.text.rstrip().endswith("data: [DONE]")
        assert httpx.post(f"{proxy.url}/nowhere", json=body).status_code == 404
    finally:
        proxy.shutdown()
        upstream.shutdown()
    seen = upstream.requests()
    assert [entry["body"] for entry in seen[:2]] == [body, {**body, "stream": True}]
    forwarded = {key.lower(): value for key, value in seen[0]["headers"].items()}
    assert forwarded["authorization"] == "Bearer sk-test"
    assert forwarded["x-openwebui-chat-id"] == "c1"
    records = fixture_records(proxy.log_path)
    assert [record["status"] for record in records] == [200, 200, 404]
    assert records[0]["headers"]["x-openwebui-chat-id"] == "c1"


@pytest.mark.parametrize(
    ("name", "tools"),
    [("openwebui_requests.jsonl", True), ("openwebui_requests_legacy.jsonl", False)],
)
def test_recorded_fixture_shape(name: str, tools: bool) -> None:
    """Both recordings: the defaults (native function calling) and Function Calling set to
    Legacy by both users, which differ only in the tools attached to chat requests."""
    check_shape(read_jsonl(FIXTURE.parent / name), tools)


@pytest.mark.skipif(
    os.environ.get("TMO_TEST_OPENWEBUI") != "1",
    reason="installs Open WebUI (about 3 GB) and drives Chromium: set TMO_TEST_OPENWEBUI=1",
)
def test_openwebui_end_to_end(tmp_path: Path) -> None:
    assert CHROMIUM.exists(), "Open WebUI's test needs Debian's chromium: apt-get install chromium"
    python = ensure_venv()
    out = tmp_path / "run"
    result = subprocess.run(
        [str(python), "-m", "tests.integration_tests.openwebui", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check_shape(fixture_records(out / "captured.jsonl"))


@pytest.mark.skipif(
    os.environ.get("TMO_TEST_OPENWEBUI") != "1",
    reason="installs Open WebUI (about 3 GB) and drives Chromium: set TMO_TEST_OPENWEBUI=1",
)
def test_openwebui_keeps_real_dialogues_on_the_server(tmp_path: Path) -> None:
    """The real Open WebUI, in headless Chromium, against this server (fake models, a trusted
    proxy key, ``server.thread_header: X-OpenWebUI-Chat-Id``), asserted from the server's own
    threads: one per chat, a fork for the regenerate and one for the edit, turn numbers and
    budgets carried, the two users apart, every request answered 200, chores kept off the
    cloud."""
    from tests.integration_tests.test_openwebui_replay import openwebui_backend
    from tests.integration_tests.test_server import Served

    assert CHROMIUM.exists(), "Open WebUI's test needs Debian's chromium: apt-get install chromium"
    python = ensure_venv()
    backend = openwebui_backend(tmp_path)
    graph, cloud, owners, secret = backend.graph, backend.cloud, backend.owners, backend.secret
    served = Served(backend.app)
    out = tmp_path / "run"
    try:
        result = subprocess.run(
            [str(python), "-m", "tests.integration_tests.openwebui", "--out", str(out)]
            + ["--upstream", served.url, "--api-key", secret, "--model", "tmo-rules"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        served.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    statuses = [record["status"] for record in read_jsonl(out / "captured.jsonl")]
    assert len(statuses) == 29 and set(statuses) == {200}
    turns: dict[str, list[list[int]]] = {}
    for thread, user in owner_map(owners).items():
        records = graph.get_state({"configurable": {"thread_id": thread}}).values["turns"]
        turns.setdefault(user, []).append([r["turn"] for r in records])
        left = [r["budget_left"]["cost_usd"] for r in records]
        assert left == sorted(left, reverse=True) and len(set(left)) == len(left)
    ada, bo = sorted(turns, key=lambda user: -len(turns[user]))
    # Chat 1 (4 turns), its regenerate (turn 3 again) and its edit (turn 2 again), chat 2.
    assert sorted(turns[ada]) == [[0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3]]
    assert turns[bo] == [[0, 1]] and ada.startswith("owui/") and bo.startswith("owui/")
    assert len(cloud.sent) == 10  # the ten chat turns; the 16 chores never left the device
