"""What a LangGraph chat UI (agent-chat-ui) receives: `langgraph dev` on 127.0.0.1 serving
langgraph.json, streamed with `langgraph_sdk` in ``messages-tuple`` mode as that UI streams.

The device model is the real SmolLM2; the cloud is a stand-in OpenAI-compatible server on
127.0.0.1 that streams its answer word by word and repeats every placeholder it was sent.
Under ``cascade`` with ``confidence_threshold`` 1.0 every local answer is a draft the cloud
replaces. The client must see no draft token, no placeholder, nothing from a node that does
not answer (the local model's warm-up "Hello!" inside detect_modality), and the final
answer exactly once, streamed token by token with the user's own values put back.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration_tests.servers import langgraph_dev
from tmo_graph.models.cloud import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = re.compile(r"\[[A-Z]+_\d+\]")
CONTEXT = {"policy": "cascade", "confidence_threshold": 1.0, "user_id": "ui-test"}


class StandInCloud:
    """An OpenAI-compatible endpoint: ``GET /v1/models`` and streamed chat completions whose
    answer repeats the placeholders of the request's last message; keeps what it was sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        cloud = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (the http.server hook's name)
                cloud.send_json(self, {"object": "list", "data": [{"id": "stand-in"}]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                last = body["messages"][-1]["content"]
                text = last if isinstance(last, str) else json.dumps(last)
                cloud.sent.append(text)
                said = PLACEHOLDER.findall(text)
                answer = (
                    f"I will write to {said[0]} after dinner."
                    if said
                    else "Hello from the cloud, nice to meet you."
                )
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    cloud.stream(self, answer)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def send_json(h: BaseHTTPRequestHandler, payload: Any) -> None:
        data = json.dumps(payload).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def stream(h: BaseHTTPRequestHandler, answer: str) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def event(payload: dict[str, Any] | str) -> None:
            text = payload if isinstance(payload, str) else json.dumps(payload)
            data = f"data: {text}\n\n".encode()
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        answer_id = f"chatcmpl-{uuid.uuid4().hex}"  # each answer its own, as OpenAI's are

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return {"id": answer_id, "object": "chat.completion.chunk", "created": 0,
                    "model": "stand-in", "choices": [choice]}  # fmt: skip

        # Word by word, a placeholder split over two chunks as a real tokenizer splits it.
        pieces = re.split(r"(\s+|_)", answer)
        for piece in pieces:
            if piece:
                event(chunk({"content": piece}))
        event(chunk({}, "stop"))
        usage = {"prompt_tokens": 30, "completion_tokens": len(pieces), "total_tokens": 60}
        event({**chunk({}), "choices": [], "usage": usage})
        event("[DONE]")
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def cloud() -> Iterator[StandInCloud]:
    stand_in = StandInCloud()
    yield stand_in
    stand_in.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, cloud: StandInCloud) -> Iterator[str]:
    work = tmp_path_factory.mktemp("ui-stream")
    env = {
        "TMO_CLOUD__MODE": "remote",
        "TMO_CLOUD__BASE_URL": cloud.base_url,
        "TMO_CLOUD__MODEL": "stand-in",
        "TMO_CLOUD__MAX_ATTEMPTS": "1",
        "TMO_MEMORY__PERSIST_DIR": str(work / "memory"),
        "TMO_AUDIT__ENABLED": "false",
        "TMO_TEST_STAND_IN_KEY": "stand-in",
        "TMO_CLOUD__API_KEY_ENV": "TMO_TEST_STAND_IN_KEY",
    }
    with langgraph_dev(work, env) as server:
        yield server.url


def _turn(client: Any, thread: str, question: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """One turn streamed as agent-chat-ui streams it: every (message, metadata) pair."""
    parts = []
    for part in client.runs.stream(
        thread,
        "tmo",
        input={"messages": [{"role": "user", "content": question}]},
        context=CONTEXT,
        stream_mode="messages-tuple",
    ):
        assert part.event != "error", part.data
        if part.event == "messages":
            message, meta = part.data
            parts.append((message, meta))
    return parts


def _check_turn(
    parts: list[tuple[dict[str, Any], dict[str, Any]]], record: dict[str, Any], final: Any
) -> str:
    """What every turn must show a UI; returns the text the UI assembled."""
    nodes = {meta.get("langgraph_node") for _, meta in parts}
    assert nodes <= {"answer_cloud", "account"}, nodes  # no warm-up, no draft, no scratch
    assert all("draft" not in (meta.get("tags") or []) for _, meta in parts)
    texts = [str(message.get("content", "")) for message, _ in parts]
    assert not any(PLACEHOLDER.search(t) for t in texts), texts
    assert not any("[" in t for t in texts), texts  # not even a placeholder's first piece
    # One message, once: streamed token by token or arriving whole, never both.
    ids = {message["id"] for message, _ in parts}
    assert ids == {final["id"]}, (ids, final["id"])
    shown = "".join(texts)
    assert shown.strip() == record["answer"].strip() == str(final["content"]).strip()
    return shown


def test_a_ui_streaming_messages_tuple_sees_only_final_answers_once(
    server: str, cloud: StandInCloud
) -> None:
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=server)
    thread = client.threads.create()["thread_id"]

    # Turn 1: the model loads inside detect_modality (its warm-up must not show); the local
    # draft is replaced by the cloud's answer, which streams token by token.
    parts = _turn(client, thread, "Say hello to me.")
    values = client.threads.get_state(thread)["values"]
    record = values["turns"][-1]
    assert record["escalated"] and record["route"] == "cloud" and record["local_answer"]
    shown = _check_turn(parts, record, values["messages"][-1])
    assert shown == "Hello from the cloud, nice to meet you."
    assert len(parts) > 5  # streamed, not one message

    # Turn 2: the cloud was sent a placeholder and answers with it; the UI gets the answer
    # with the address put back, token by token, once.
    parts = _turn(client, thread, "Please send the recipe to anna@example.org tonight.")
    values = client.threads.get_state(thread)["values"]
    record = values["turns"][-1]
    assert record["escalated"] and record["redactions"] == {"email": 1}
    assert "[EMAIL_1]" in cloud.sent[-1] and "anna@example.org" not in cloud.sent[-1]
    shown = _check_turn(parts, record, values["messages"][-1])
    assert shown == "I will write to anna@example.org after dinner."
    assert {meta["langgraph_node"] for _, meta in parts} == {"answer_cloud"}
    assert len(parts) > 5  # streamed, not one message
    # The thread holds both turns, as the UI shows them.
    assert [m["type"] for m in values["messages"]] == ["human", "ai", "human", "ai"]
