"""Cloud faults end to end: a real ChatOpenAI against a fault-injecting OpenAI-compatible
server on 127.0.0.1, the real graph with a scripted device model, threads in SQLite.

Each request the server receives takes the next step of its script: an answer, a 500, a 429
with Retry-After, a sleep beyond the client's timeout, a stream cut mid-answer, a slow
first token. Every turn must be answered (by the cloud, or by the device after the fault)
and persisted, and its record must list the attempts, their faults and the breaker state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langgraph.checkpoint.sqlite import SqliteSaver

from tests.unit_tests.fakes import FakeLocal
from tmo_graph.context import Context
from tmo_graph.graph import build_graph
from tmo_graph.guards.faults import CIRCUIT_OPEN, reset_breakers
from tmo_graph.models.cloud import free_port, make_cloud_chat_model
from tmo_graph.services import Services
from tmo_graph.settings import Settings

pytestmark = pytest.mark.integration

CLOUD_ANSWER = "The cloud says the pot is boiling."
LOCAL_ANSWER = "The device says it may be boiling."
API_KEY = "sk-test-do-not-log-0123456789"
SECRET_PROMPT = "my secret recipe question"


class FaultServer:
    """An OpenAI-compatible chat endpoint whose every request follows the next script step.

    Steps: ``"ok"``, ``"500"``, ``("429", retry_after_s)``, ``("sleep", s)`` (then answer:
    a timeout when s exceeds the client's, else a slow first token), ``"cut"`` (the body is
    cut mid-answer: a stream without its end, or a JSON body shorter than announced). An
    empty script answers ``"ok"``.
    """

    def __init__(self) -> None:
        self.script: list[Any] = []
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    step = server.script.pop(0) if server.script else "ok"
                    server.requests.append({"step": step, "stream": bool(body.get("stream"))})
                # The client may give up (timeout) before the answer.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    server.serve(self, step, bool(body.get("stream")))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def serve(self, h: BaseHTTPRequestHandler, step: Any, stream: bool) -> None:
        if isinstance(step, tuple) and step[0] == "sleep":
            time.sleep(step[1])
            step = "ok"
        if step == "500":
            return self._json(h, 500, {"error": {"message": "internal error", "type": "server"}})
        if isinstance(step, tuple) and step[0] == "429":
            error = {"error": {"message": "slow down", "type": "rate_limit"}}
            return self._json(h, 429, error, {"Retry-After": str(step[1])})
        if stream:
            return self._stream(h, cut=step == "cut")
        answer = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "fault-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": CLOUD_ANSWER},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20},
        }
        if step == "cut":
            data = json.dumps(answer).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return None
        return self._json(h, 200, answer)

    @staticmethod
    def _json(
        h: BaseHTTPRequestHandler, status: int, obj: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def _stream(h: BaseHTTPRequestHandler, cut: bool) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def chunk(payload: str) -> None:
            data = f"data: {payload}\n\n".encode()
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        def delta(content: str | None, finish: str | None = None) -> str:
            d = {"content": content} if content is not None else {}
            return json.dumps(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "fault-model",
                    "choices": [{"index": 0, "delta": d, "finish_reason": finish}],
                }
            )

        words = CLOUD_ANSWER.split(" ")
        for i, word in enumerate(words):
            chunk(delta(word if i == 0 else " " + word))
            if cut and i == 2:  # mid-answer: no end of the stream, the connection drops
                h.close_connection = True
                h.connection.shutdown(2)
                return
        chunk(delta(None, "stop"))
        usage = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
        chunk(
            json.dumps(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "fault-model",
                    "choices": [],
                    "usage": usage,
                }
            )
        )
        chunk("[DONE]")
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FaultServer]:
    reset_breakers()
    with FaultServer() as s:
        yield s
    reset_breakers()


def _settings(**cloud: Any) -> Settings:
    # Small expected costs, so the route never masks the cloud within the test budgets.
    base = {"timeout_s": 1.0, "max_attempts": 2, "breaker_failures": 3, "tokens_per_s": 1000.0}
    return Settings(
        cloud={**base, **cloud, "max_tokens": 16, "mode": "remote"},
        # The fake device reads the prompt instantly and writes 64 tokens a second.
        local={"tokens_per_s": 64.0, "prefill_tokens_per_s": 1e6},
    )


def _graph(tmp_path: Path, base_url: str, settings: Settings, saver: SqliteSaver) -> Any:
    cfg = settings.cloud
    cloud = make_cloud_chat_model(base_url, "fault-model", API_KEY, cfg.timeout_s, cfg.max_tokens)
    services = Services(
        settings=settings,
        local=FakeLocal(answers=[LOCAL_ANSWER]),
        cloud=cloud,
        embeddings=DeterministicFakeEmbedding(size=32),
        media_dir=tmp_path / "media",
    )
    return build_graph(services, checkpointer=saver)


@pytest.fixture
def saver(tmp_path: Path) -> Iterator[SqliteSaver]:
    conn = sqlite3.connect(tmp_path / "threads.sqlite", check_same_thread=False)
    yield SqliteSaver(conn)
    conn.close()


CTX = Context(policy="always-cloud", latency_budget_s=600.0, cost_budget_usd=1.0)


def _turn(graph: Any, thread: str, text: str = SECRET_PROMPT, ctx: Context = CTX) -> Any:
    out = graph.invoke(
        {"messages": [("user", text)]}, {"configurable": {"thread_id": thread}}, context=ctx
    )
    return out["turns"][-1]


def _outcomes(record: dict[str, Any]) -> list[str]:
    return [a["outcome"] for a in record["cloud_attempts"]]


def _persisted(graph: Any, thread: str, n: int) -> None:
    """The thread's stored state holds all ``n`` turns, each answered."""
    values = graph.get_state({"configurable": {"thread_id": thread}}).values
    assert len(values["turns"]) == n
    assert all(t["answer"] in (CLOUD_ANSWER, LOCAL_ANSWER) for t in values["turns"])
    assert values["turn_count"] == n  # (older messages move to the memory store)
    last = values["messages"][-1]
    assert last.type == "ai" and last.content == values["turns"][-1]["answer"]


def test_fault_matrix_every_turn_answered_and_recorded(
    tmp_path: Path,
    server: FaultServer,
    saver: SqliteSaver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tmo_graph.cloud")
    # A breaker that never opens here: this test looks at the attempts alone.
    graph = _graph(tmp_path, server.base_url, _settings(breaker_failures=100), saver)
    # (script, expected attempt outcomes, expected status codes, answered by, requests)
    matrix: list[tuple[list[Any], list[str], list[int | None], str, int]] = [
        (["ok"], ["ok"], [None], "cloud", 1),
        (["500", "ok"], ["server error", "ok"], [500, None], "cloud", 2),
        (["500", "500"], ["server error", "server error"], [500, 500], "local", 2),
        ([("429", 0.3), "ok"], ["rate limited", "ok"], [429, None], "cloud", 2),
        ([("sleep", 1.6), ("sleep", 1.6)], ["timeout", "timeout"], [None, None], "local", 2),
        (["cut", "ok"], ["stream cut", "ok"], [None, None], "cloud", 2),
        (["cut", "cut"], ["stream cut", "stream cut"], [None, None], "local", 2),
        ([("sleep", 0.4)], ["ok"], [None], "cloud", 1),  # slow first token, within timeout
    ]
    for i, (script, outcomes, statuses, where, requests) in enumerate(matrix):
        before = server.count
        server.script = list(script)
        record = _turn(graph, "matrix")
        assert record["route"] == where, (i, record)
        assert record["answer"] == (CLOUD_ANSWER if where == "cloud" else LOCAL_ANSWER)
        assert _outcomes(record) == outcomes, (i, record)
        assert [a.get("status") for a in record["cloud_attempts"]] == statuses
        assert record["breaker"] == "closed"
        assert server.count - before == requests
        assert (record["fallback"] is None) == (where == "cloud")
        assert record["latency_s"] >= sum(a["seconds"] for a in record["cloud_attempts"])
        if outcomes[0] == "timeout":  # each attempt stopped at the 1 s timeout
            assert all(0.9 <= a["seconds"] < 1.5 for a in record["cloud_attempts"])
        if script[0] == ("429", 0.3):
            assert record["latency_s"] >= 0.3  # the Retry-After was waited
        if script[0] == ("sleep", 0.4):
            assert record["cloud_attempts"][0]["seconds"] >= 0.4
    _persisted(graph, "matrix", len(matrix))
    # A Retry-After longer than the latency left is not waited: the device answers.
    server.script = [("429", 30)]
    tight = Context(policy="always-cloud", latency_budget_s=10.0, cost_budget_usd=1.0)
    start = time.perf_counter()
    record = _turn(graph, "retry-after", ctx=tight)
    assert time.perf_counter() - start < 5.0
    assert (record["route"], _outcomes(record), record["cloud_attempts"][0]["status"]) == (
        "local",
        ["rate limited"],
        429,
    )
    assert "Retry-After 30 s does not fit" in record["fallback"]
    _persisted(graph, "retry-after", 1)
    logged = [r for r in caplog.records if r.name == "tmo_graph.cloud"]
    failed_attempts = sum(o != "ok" for m in matrix for o in m[1]) + 1
    assert len(logged) == failed_attempts and all(r.levelno == logging.WARNING for r in logged)
    text = "\n".join(r.getMessage() for r in logged)
    assert API_KEY not in text and SECRET_PROMPT not in text and CLOUD_ANSWER not in text


def test_breaker_opens_skips_half_opens_and_closes(
    tmp_path: Path, server: FaultServer, saver: SqliteSaver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tmo_graph.cloud")
    settings = _settings(breaker_failures=3, breaker_cooldown_s=0.5)
    graph = _graph(tmp_path, server.base_url, settings, saver)
    server.script = ["500"] * 3
    first = _turn(graph, "b")  # 2 failed attempts: still closed
    assert (_outcomes(first), first["breaker"], server.count) == (
        ["server error"] * 2,
        "closed",
        2,
    )
    second = _turn(graph, "b")  # the 3rd failure opens it; the retry is skipped
    assert (_outcomes(second), second["breaker"], server.count) == (["server error"], "open", 3)
    assert second["fallback"].endswith(CIRCUIT_OPEN)
    third = _turn(graph, "b")  # open: no request arrives, the device answers at once
    assert (third["cloud_attempts"], third["breaker"], third["fallback"]) == (
        [],
        "open",
        CIRCUIT_OPEN,
    )
    assert server.count == 3 and third["answer"] == LOCAL_ANSWER
    assert third["latency_s"] < 0.2

    time.sleep(0.6)  # the cool-down: the next call is the half-open trial; it fails
    server.script = ["500"]
    fourth = _turn(graph, "b")
    assert (_outcomes(fourth), fourth["breaker"], server.count) == (["server error"], "open", 4)
    assert _turn(graph, "b")["cloud_attempts"] == [] and server.count == 4  # re-opened

    time.sleep(0.6)  # a successful trial closes it
    fifth = _turn(graph, "b")
    assert (_outcomes(fifth), fifth["breaker"], fifth["route"]) == (["ok"], "closed", "cloud")
    sixth = _turn(graph, "b")
    assert (sixth["route"], server.count) == ("cloud", 6)
    _persisted(graph, "b", 7)
    moves = [r.getMessage() for r in caplog.records if "circuit" in r.getMessage()]
    assert [m.split(": ", 1)[1].split(" (")[0] for m in moves] == [
        "closed -> open",
        "open -> half-open",
        "half-open -> open",
        "open -> half-open",
        "half-open -> closed",
    ]


def test_connection_refused_falls_back_and_opens_the_breaker(
    tmp_path: Path, saver: SqliteSaver
) -> None:
    reset_breakers()
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nobody listens there
    graph = _graph(tmp_path, dead, _settings(breaker_failures=3, breaker_cooldown_s=30.0), saver)
    records = [_turn(graph, "dead") for _ in range(3)]
    assert [r["answer"] for r in records] == [LOCAL_ANSWER] * 3
    assert [_outcomes(r) for r in records] == [["connection"] * 2, ["connection"], []]
    assert [r["breaker"] for r in records] == ["closed", "open", "open"]
    assert records[2]["fallback"] == CIRCUIT_OPEN
    _persisted(graph, "dead", 3)
    reset_breakers()


def test_attempt_timeout_is_cut_to_the_latency_budget_left(
    tmp_path: Path, server: FaultServer, saver: SqliteSaver
) -> None:
    # A 60 s configured timeout, a server that sleeps 5 s and a dialogue with 2.5 s left:
    # the local answer's share (64 tokens at 64/s: 1 s) is kept, so the attempt gets ~1.5 s,
    # and no second attempt is made (nothing is left for it).
    graph = _graph(tmp_path, server.base_url, _settings(timeout_s=60.0), saver)
    server.script = [("sleep", 5.0)] * 2
    ctx = Context(policy="always-cloud", latency_budget_s=2.5, cost_budget_usd=1.0)
    start = time.perf_counter()
    record = _turn(graph, "tight", ctx=ctx)
    assert time.perf_counter() - start < 2.5
    assert _outcomes(record) == ["timeout"] and server.count == 1
    assert 1.3 <= record["cloud_attempts"][0]["seconds"] <= 1.7
    assert record["answer"] == LOCAL_ANSWER and record["latency_s"] <= 2.5
    _persisted(graph, "tight", 1)


def test_a_stream_cut_mid_answer_is_retried_when_streaming(
    tmp_path: Path, server: FaultServer, saver: SqliteSaver
) -> None:
    graph = _graph(tmp_path, server.base_url, _settings(), saver)
    server.script = ["cut", ("sleep", 0.3)]  # cut, then an answer after a slow first token
    config = {"configurable": {"thread_id": "s"}}
    tokens = [
        chunk.content
        for chunk, _ in graph.stream(
            {"messages": [("user", "Is it boiling?")]}, config, context=CTX, stream_mode="messages"
        )
    ]
    assert all(r["stream"] for r in server.requests) and server.count == 2
    assert "".join(tokens).endswith(CLOUD_ANSWER)  # the whole answer came on the retry
    record = graph.get_state(config).values["turns"][-1]
    assert _outcomes(record) == ["stream cut", "ok"] and record["route"] == "cloud"
    assert record["cloud_attempts"][1]["seconds"] >= 0.3
    _persisted(graph, "s", 1)
