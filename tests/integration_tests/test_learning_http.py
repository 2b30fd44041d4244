"""Feedback and shadow judging on a served app (uvicorn, real HTTP) whose cloud is a
capturing OpenAI-compatible stand-in on 127.0.0.1: the labels land in the thread file's table,
and no request the judge makes carries a private message or personal data as typed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration_tests.test_server import Served
from tests.unit_tests.fakes import FakeLocal, fake_services
from tmo_graph.guards.audit import read_audit, read_feedback
from tmo_graph.guards.faults import reset_breakers
from tmo_graph.learning.shadow import GRADER
from tmo_graph.models.cloud import free_port, make_cloud_chat_model
from tmo_graph.server.app import create_app
from tmo_graph.settings import Settings
from tmo_graph.threads.labels import PostgresLabels, SqliteLabels, TurnLabel

PLACEHOLDER = re.compile(r"\[[A-Z]+_\d+\]")
EMAIL, CODE = "ann.lee@example.org", "door code 4711"
USAGE = {"prompt_tokens": 40, "completion_tokens": 6, "total_tokens": 46}


class GradingCloud:
    """Keeps every request body; grades a grading request "8", answers any other with the
    placeholders it was sent ("Noted: [EMAIL_1]."), streamed or not."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        cloud = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.loads(raw)
                with cloud.lock:
                    cloud.bodies.append(body)
                said = sorted(set(PLACEHOLDER.findall(raw.decode())))
                answer = "8" if cloud.grading(body) else f"Noted: {', '.join(said)}."
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._answer(answer, bool(body.get("stream")))

            def _answer(self, answer: str, stream: bool) -> None:
                if not stream:
                    data = json.dumps(
                        {
                            "id": "c",
                            "object": "chat.completion",
                            "created": 0,
                            "model": "m",
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": answer},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": USAGE,
                        }
                    ).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

                def event(choices: list[dict[str, Any]], **extra: Any) -> None:
                    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0}
                    payload = json.dumps({**chunk, "model": "m", "choices": choices, **extra})
                    data = f"data: {payload}\n\n".encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

                event([{"index": 0, "delta": {"content": answer}, "finish_reason": None}])
                event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
                event([], usage=USAGE)
                done = b"data: [DONE]\n\n"
                self.wfile.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def grading(body: dict[str, Any]) -> bool:
        messages = body.get("messages") or []
        return bool(messages) and messages[0].get("content") == GRADER

    def text(self) -> str:
        with self.lock:
            return json.dumps(self.bodies)


@pytest.fixture
def cloud() -> Iterator[GradingCloud]:
    reset_breakers()
    served = GradingCloud()
    yield served
    served.httpd.shutdown()
    reset_breakers()


def _labels_of(db: Path, url: str | None, thread: str) -> list[TurnLabel]:
    """The thread's labels as the app stored them: in the SQLite file, or in PostgreSQL."""
    if url is None:
        return asyncio.run(SqliteLabels(db).of_thread(thread))

    async def read() -> list[TurnLabel]:
        labels = await PostgresLabels.connect(url)
        try:
            return await labels.of_thread(thread)
        finally:
            await labels.aclose()

    return asyncio.run(read())


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_feedback_and_shadow_labels_over_http(
    tmp_path: Path, cloud: GradingCloud, store: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pgvector").fresh().url if store == "postgres" else None
    settings = Settings(
        threads={"url": url},
        cloud={"mode": "remote", "timeout_s": 10.0, "max_attempts": 1, "max_tokens": 32},
        learning={"shadow_rate": 1.0, "ledger": tmp_path / "shadow.sqlite"},
        audit={"path": tmp_path / "audit.jsonl"},
        device={"state_path": tmp_path / "device.json", "live": False},
    )
    model = make_cloud_chat_model(cloud.base_url, "grading-model", "sk-test", 10.0, 32)
    answers = ["Paris is lovely in spring.", "Noted, I will not repeat it.", "Sunny, mostly."]
    services = fake_services(tmp_path, FakeLocal(answers, logprob=-0.01), model, settings=settings)
    db = tmp_path / "threads.sqlite"
    app = create_app(
        settings=settings, services=services, db=db if url is None else None, no_auth=True
    )
    served = Served(app)
    try:
        client = httpx.Client(base_url=served.url, timeout=30)

        def ask(text: str, thread: str | None, private: bool = False) -> httpx.Response:
            message: dict[str, Any] = {"role": "user", "content": text}
            if private:
                message["private"] = True
            reply = client.post(
                "/v1/chat/completions",
                headers={"x-tmo-thread-id": thread} if thread else {},
                json={"model": "tmo-cascade", "messages": [message]},
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["tmo"]["route"] == "local"
            return reply

        first = ask(f"Write to {EMAIL} about Paris", None)
        thread = first.headers["x-tmo-thread-id"]
        deadline = time.monotonic() + 15  # the app's table, beside the threads
        while not _labels_of(db, url, thread) and time.monotonic() < deadline:
            time.sleep(0.05)
        ask(CODE, thread, private=True)  # kept on the device: never shadowed
        ask("and the weather there?", thread)  # the dialogue now holds a private message
        time.sleep(0.5)  # time for any (wrong) shadow request to arrive

        fed = client.post(
            "/v1/feedback",
            json={"thread_id": thread, "turn": 0, "score": 1, "comment": f"thanks {EMAIL}"},
        )
        assert fed.status_code == 201, fed.text
    finally:
        served.stop()

    got = _labels_of(db, url, thread)
    assert [(x.turn, x.source, x.score) for x in got] == [(0, "shadow", 0.8), (0, "feedback", 1.0)]
    sent = cloud.text()
    assert len(cloud.bodies) == 2  # turn 0's shadow question and its grading; nothing after
    assert EMAIL not in sent and "4711" not in sent and "[EMAIL_1]" in sent
    purposes = [e.get("purpose") for e in read_audit(tmp_path / "audit.jsonl")]
    assert purposes == ["shadow", "judge"]
    feedback = read_feedback(tmp_path / "audit.jsonl")
    assert [(f["turn"], f["comment_chars"]) for f in feedback] == [(0, len(f"thanks {EMAIL}"))]
    assert EMAIL not in (tmp_path / "audit.jsonl").read_text()


def test_a_configured_judge_endpoint_grades(tmp_path: Path, cloud: GradingCloud) -> None:
    from langchain_core.messages import HumanMessage

    from tests.unit_tests.learning_fakes import JudgingCloud, learning_services
    from tmo_graph.context import Context
    from tmo_graph.graph import build_graph
    from tmo_graph.learning.shadow import AnsweredTurn, ShadowJudge
    from tmo_graph.threads.labels import MemoryLabels

    answering = JudgingCloud(grade="1")  # would grade 0.1: it must not be asked to grade
    services = learning_services(
        tmp_path,
        FakeLocal(["Paris is lovely in spring."], logprob=-0.01),
        answering,
        judge_base_url=cloud.base_url,
        judge_model="grader",
    )
    graph = build_graph(services)
    state = graph.invoke({"messages": [HumanMessage(content=f"Mail {EMAIL} about Paris")]})
    context = Context(user_id="ann", policy="cascade")
    judge = ShadowJudge(services, MemoryLabels())
    label = judge.label(AnsweredTurn.of(state["turns"][-1], state, "j1", context))
    assert label is not None and (label.source, label.score) == ("shadow", 0.8)
    assert len(answering.answers()) == 1 and answering.gradings() == []
    assert len(cloud.bodies) == 1 and cloud.grading(cloud.bodies[0])
    assert cloud.bodies[0]["model"] == "grader" and EMAIL not in cloud.text()
    lines = read_audit(tmp_path / "audit.jsonl")
    assert [(e.get("purpose"), e["endpoint"]) for e in lines][-1] == (
        "judge",
        cloud.base_url.removeprefix("http://").removesuffix("/v1"),
    )
