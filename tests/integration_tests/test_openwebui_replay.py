"""Open WebUI's recorded traffic, replayed against the real server (uvicorn on 127.0.0.1,
fake models): what the front-end really sends keeps a real dialogue.

The requests are the ones Open WebUI 0.12.4 sent in headless Chromium
(``data/openwebui_requests.jsonl``, recorded by ``openwebui.py``): two users behind one
connection key, native function calling (every chat request offers its ~30-36 tools), a
4-turn chat with an image in turn 2, a regenerate of turn 4, an edit of question 3, a second
chat, and the title, tag and follow-up chores. Each assistant message is replaced by what
this server answered (as Open WebUI resends what it was given); the image marker by a real
PNG. The server has a trusted proxy key (``proxy: true``), names end users by
``X-OpenWebUI-User-Id`` and chats by ``X-OpenWebUI-Chat-Id`` (``server.thread_header``).
"""

from __future__ import annotations

import base64
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver

from tests.integration_tests.test_server import Served
from tests.unit_tests.fakes import FakeLocal, ToolCloud, fake_services, png_bytes
from tmo_graph.graph import build_graph
from tmo_graph.memory.recall import stored_turns
from tmo_graph.server.app import create_app
from tmo_graph.server.keys import KeyRing, add_key
from tmo_graph.services import Services
from tmo_graph.settings import Settings
from tmo_graph.threads.owners import MemoryOwners

pytestmark = pytest.mark.integration

RECORDED = Path(__file__).parent / "data" / "openwebui_requests.jsonl"
TRIMMED = re.compile(r"\.\.\.<\d+ chars>$")
IMAGE_MARKER = re.compile(r"^<data:image/png len=\d+ sha256=[0-9a-f]+>$")
# Turn number each recorded chat request should get: chat 1 turns 0-3, the regenerate of
# turn 3 (a fork), the edit of question 3 (turn 2 of another fork); chat 2 and user 2's chat.
EXPECTED_TURNS = [0, 1, 2, 3, 3, 2, 0, 1, 0, 1]


def _recorded() -> list[dict[str, Any]]:
    return [json.loads(line) for line in RECORDED.read_text().splitlines() if line.strip()]


def _with_image(content: Any, data_url: str) -> Any:
    if not isinstance(content, list):
        return content
    out = []
    for part in content:
        url = part.get("image_url", {}).get("url") if part.get("type") == "image_url" else None
        if isinstance(url, str) and IMAGE_MARKER.match(url):
            part = {"type": "image_url", "image_url": {"url": data_url}}
        out.append(part)
    return out


def _whole_chore(message: dict[str, Any]) -> dict[str, Any]:
    """The recording keeps a text's first 200 characters: a chore's prompt gets the end its
    Open WebUI template gives it back (the chat history in ``<chat_history>`` tags)."""
    text = TRIMMED.sub("", message["content"])
    history = "USER: Chat one, question one: what is a heat pump?\nASSISTANT: cloud answer 0"
    return {
        **message,
        "content": f"{text}\n### Chat History:\n<chat_history>\n{history}\n</chat_history>",
    }


def _tool(name: str) -> dict[str, Any]:
    parameters = {"type": "object", "properties": {}}
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def _user_texts(messages: list[dict[str, Any]]) -> tuple[str, ...]:
    return tuple(json.dumps(m["content"]) for m in messages if m["role"] == "user")


def _streamed(response: httpx.Response) -> tuple[str, dict[str, Any]]:
    """The answer text and the ``tmo`` field of a server-sent stream."""
    text, tmo = "", {}
    for line in response.iter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[len("data: ") :])
        assert "error" not in chunk, chunk
        for choice in chunk.get("choices", []):
            text += choice.get("delta", {}).get("content") or ""
        tmo = chunk.get("tmo", tmo)
    return text, tmo


@dataclass
class OpenWebUIBackend:
    """The server as an Open WebUI admin would set it up: a trusted proxy key, chats named
    by ``X-OpenWebUI-Chat-Id``, end users by ``X-OpenWebUI-User-Id``; fake models."""

    app: FastAPI
    graph: Any
    services: Services
    cloud: ToolCloud
    owners: MemoryOwners
    secret: str


def openwebui_backend(tmp_path: Path) -> OpenWebUIBackend:
    keys = tmp_path / "keys.yaml"
    _, secret = add_key(keys, "owui", "openwebui", rate="1000/second", proxy=True)
    settings = Settings(
        server={
            "thread_header": "X-OpenWebUI-Chat-Id",
            "end_user_header": "X-OpenWebUI-User-Id",
        },
        routing={"recent_turns": 1, "latency_budget_s": 300.0},
        audit={"path": str(tmp_path / "audit.jsonl")},
        spending={"ledger": str(tmp_path / "spend.sqlite")},
    )
    cloud = ToolCloud(replies=[AIMessage(f"cloud answer {n}") for n in range(60)])
    cloud.sent, cloud.kwargs_sent = [], []
    local = FakeLocal(answers=[f"local answer {n}" for n in range(60)])
    services = fake_services(tmp_path, local, cloud, settings=settings)
    graph = build_graph(services, checkpointer=InMemorySaver())
    owners = MemoryOwners()
    app = create_app(graph, settings, services=services, keys=KeyRing(file=keys), owners=owners)
    return OpenWebUIBackend(app, graph, services, cloud, owners, secret)


def test_open_webui_traffic_keeps_one_thread_per_chat_and_users_apart(tmp_path: Path) -> None:
    backend = openwebui_backend(tmp_path)
    services, cloud, secret = backend.services, backend.cloud, backend.secret
    app = backend.app
    served = Served(app)
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    answers: dict[tuple[str, tuple[str, ...]], str] = {}  # (chat, user messages) -> answer
    turns: list[tuple[str, str, int]] = []  # (chat, thread, turn) of each chat request
    chores: list[dict[str, Any]] = []
    try:
        with httpx.Client(base_url=served.url, timeout=60) as http:
            for recorded in _recorded():
                headers = {
                    k: v for k, v in recorded["headers"].items() if k.startswith("x-openwebui-")
                }
                headers["authorization"] = f"Bearer {secret}"
                chat = headers["x-openwebui-chat-id"]
                body = {**recorded["body"], "model": "tmo-rules"}  # the recording's backend: "tmo"
                if recorded["kind"] != "chat":  # its prompt, whole again
                    body["messages"] = [_whole_chore(m) for m in body["messages"]]
                # The recording keeps each tool's name only: a function tool of that name.
                body["tools"] = [_tool(name) for name in body.get("tools") or []] or None
                messages = []
                for i, message in enumerate(body["messages"]):
                    message = {**message, "content": _with_image(message["content"], data_url)}
                    if message["role"] == "assistant":  # what this server answered
                        key = (chat, _user_texts(recorded["body"]["messages"][:i]))
                        message["content"] = answers[key]
                    messages.append(message)
                body["messages"] = messages
                with http.stream(
                    "POST", "/v1/chat/completions", json=body, headers=headers
                ) as response:
                    if response.status_code != 200 or not body.get("stream"):
                        response.read()
                    assert response.status_code == 200, (recorded["kind"], response.text)
                    if body.get("stream"):
                        text, tmo = _streamed(response)
                    else:
                        reply = response.json()
                        text = reply["choices"][0]["message"]["content"] or ""
                        tmo = reply["tmo"]
                if recorded["kind"] == "chat":
                    answers[(chat, _user_texts(recorded["body"]["messages"]))] = text
                    turns.append((chat, tmo["thread_id"], tmo["turn"]))
                else:
                    chores.append({"kind": recorded["kind"], **tmo})
    finally:
        served.stop()

    # Every chore was answered on the device, with no thread.
    assert len(chores) == 16
    assert [c for c in chores if not c.get("chore") or c["thread_id"] is not None] == []
    # Each chat request is the turn it is in its chat: numbers advance, forks restart there.
    assert [turn for _, _, turn in turns] == EXPECTED_TURNS
    threads = [thread for _, thread, _ in turns]
    chat1, fork_regenerate, fork_edit = threads[0], threads[4], threads[5]
    assert threads[:4] == [chat1] * 4  # one thread for the 4-turn chat
    assert len({chat1, fork_regenerate, fork_edit}) == 3  # each fork its own thread
    assert threads[6] == threads[7] and threads[8] == threads[9]
    assert len(set(threads)) == 5  # chat 1, its two forks, chat 2, user 2's chat
    # The two end users are apart: each thread belongs to one of them, by user id.
    by_chat: dict[str, set[str]] = defaultdict(set)
    for chat, thread, _ in turns:
        by_chat[chat].add(thread)
    assert len(by_chat) == 3
    # Memory holds each stored turn once. With one recent turn kept, a thread at turn t has
    # moved turns 0..t-2 to memory: chat 1 (turns 0-3) two, the regenerate's fork (turn 3,
    # carrying chat 1's memory of that point) two, the edit's fork (turn 2) one, the second
    # chats none. A thread per request would store every resent turn again.
    ada, bo = (r["headers"]["x-openwebui-user-id"] for r in (_recorded()[0], _recorded()[-1]))
    counts = [len(stored_turns(services.memory, user_id=f"owui/{u}")) for u in (ada, bo)]
    assert counts == [5, 0]
    # The chat requests offered tools and the cloud got them.
    assert all(kwargs.get("tools") for kwargs in cloud.kwargs_sent)
