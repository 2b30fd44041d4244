"""A streamed turn's first byte: the role chunk at once, keep-alive comments while a cascade
decides its draft, then the answer (a real server on 127.0.0.1, read with httpx)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.integration_tests.test_server import Served, SlowLocal, _graph
from tmo_graph.server.app import create_app
from tmo_graph.settings import Settings

pytestmark = pytest.mark.integration


def test_a_stream_sends_the_role_then_keep_alives_while_the_draft_is_decided(
    tmp_path: Path,
) -> None:
    local = SlowLocal(["the kettle is on"], logprob=-0.01)  # sure: the draft is kept
    local.delay = 1.2
    graph, _ = _graph(tmp_path, local)
    settings = Settings(server={"keepalive_s": 0.2})
    served = Served(create_app(graph, settings, no_auth=True))
    start = time.monotonic()
    lines: list[tuple[float, str]] = []
    try:
        with httpx.stream(
            "POST",
            f"{served.url}/v1/chat/completions",
            json={
                "model": "tmo-cascade",
                "stream": True,
                "messages": [{"role": "user", "content": "Is the kettle on?"}],
            },
            timeout=20,
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line:
                    lines.append((time.monotonic() - start, line))
    finally:
        served.stop()
    texts = [line for _, line in lines]
    first = json.loads(texts[0].removeprefix("data: "))
    assert first["choices"][0]["delta"]["role"] == "assistant"
    answer_at = next(i for i, t in enumerate(texts) if "the kettle is on" in t)
    keepalives = [i for i, t in enumerate(texts) if t == ": keep-alive"]
    # The role came long before the local model finished; comments kept the line busy.
    assert lines[0][0] < local.delay / 2
    assert len(keepalives) >= 3 and all(0 < i < answer_at for i in keepalives)
    assert texts[-1] == "data: [DONE]"


def test_a_turn_that_fails_after_the_role_chunk_ends_in_an_error_event(tmp_path: Path) -> None:
    local = SlowLocal(["ok"])
    local.delay = 1.0
    graph, _ = _graph(tmp_path, local)
    served = Served(create_app(graph, thread_wait_s=0.05, no_auth=True))
    body = {
        "model": "tmo-always-local",
        "stream": True,
        "messages": [{"role": "user", "content": "one"}],
    }
    headers = {"x-tmo-thread-id": "busy"}
    try:
        with httpx.stream(
            "POST", f"{served.url}/v1/chat/completions", json=body, headers=headers, timeout=20
        ) as holder:
            lines = holder.iter_lines()
            next(lines)  # the first turn runs: the thread is busy
            second = httpx.post(
                f"{served.url}/v1/chat/completions", json=body, headers=headers, timeout=20
            )
            assert "data: [DONE]" in list(lines)  # the first turn is answered all the same
    finally:
        served.stop()
    events = [line for line in second.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[0].removeprefix("data: "))["choices"][0]["delta"]["role"]
    error = json.loads(events[-1].removeprefix("data: "))
    assert error["error"]["code"] == "thread_busy"
