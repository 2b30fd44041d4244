"""What the OpenAI-compatible server adds to a turn: p50 latency of one
``/v1/chat/completions`` call (official openai client, uvicorn on 127.0.0.1 in this process)
against the same turn through ``graph.invoke`` in this process.

The models answer instantly and embeddings are deterministic fakes, so what is timed is the
graph's own work plus, for the server, HTTP, JSON, the async stream of the turn and the read
of the turn's token usage. Every call starts a new thread (one user message, always-local).
Runs alternate invoke / astream_turn / plain / stream so drift hits all alike; the medians of the
per-run p50s are printed, with the ratio and the difference.

python bench/server_overhead.py [--calls 40] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import uvicorn
from instant import InstantLocal  # bench/instant.py
from langchain_core.embeddings import DeterministicFakeEmbedding
from langgraph.checkpoint.memory import InMemorySaver
from openai import OpenAI

from tmo_graph.context import Context
from tmo_graph.conversation import astream_turn
from tmo_graph.graph import build_graph
from tmo_graph.models.cloud import free_port
from tmo_graph.server.app import create_app
from tmo_graph.services import Services
from tmo_graph.settings import Settings

QUESTION = "How long should I boil an egg?"
MODEL = "tmo-always-local"


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def time_invoke(graph: Any, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        config = {"configurable": {"thread_id": uuid.uuid4().hex}}
        start = time.perf_counter()
        graph.invoke(
            {"messages": [("user", QUESTION)]}, config, context=Context(policy="always-local")
        )
        out.append(time.perf_counter() - start)
    return out


def time_astream(graph: Any, calls: int) -> list[float]:
    """The server's own path without HTTP: the async turn stream on one event loop."""

    async def run() -> list[float]:
        out = []
        for _ in range(calls):
            start = time.perf_counter()
            async for _event in astream_turn(
                graph,
                {"messages": [("user", QUESTION)]},
                uuid.uuid4().hex,
                Context(policy="always-local"),
            ):
                pass
            out.append(time.perf_counter() - start)
        return out

    return asyncio.run(run())


def time_server(client: OpenAI, calls: int, stream: bool) -> list[float]:
    out = []
    messages: Any = [{"role": "user", "content": QUESTION}]
    for _ in range(calls):
        start = time.perf_counter()
        if stream:
            text = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(model=MODEL, messages=messages, stream=True)
                if c.choices
            )
        else:
            reply = client.chat.completions.create(model=MODEL, messages=messages)
            text = reply.choices[0].message.content or ""
        out.append(time.perf_counter() - start)
        assert text == "Done.", text
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40, help="calls per run and method")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        services = Services(
            settings=Settings(),
            local=InstantLocal(),
            cloud=None,
            embeddings=DeterministicFakeEmbedding(size=32),
            media_dir=Path(tmp) / "media",
        )
        graph = build_graph(services, checkpointer=InMemorySaver())
        port = free_port()
        config = uvicorn.Config(
            create_app(graph, services.settings, no_auth=True),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        try:
            # Warm-up: first-call imports and caches on every path.
            time_invoke(graph, 5)
            time_server(client, 5, False)
            time_server(client, 5, True)
            time_astream(graph, 5)
            runs: dict[str, list[float]] = {"invoke": [], "astream": [], "plain": [], "stream": []}
            for _ in range(args.runs):
                runs["invoke"].append(p50_ms(time_invoke(graph, args.calls)))
                runs["astream"].append(p50_ms(time_astream(graph, args.calls)))
                runs["plain"].append(p50_ms(time_server(client, args.calls, False)))
                runs["stream"].append(p50_ms(time_server(client, args.calls, True)))
        finally:
            client.close()
            server.should_exit = True
            thread.join(timeout=20)

    base = statistics.median(runs["invoke"])
    print(f"p50 per turn, median of {args.runs} runs x {args.calls} calls (instant fake models)")
    print(f"{'path':<34}{'p50 ms':>9}{'x invoke':>10}{'+ ms':>8}   per-run p50s (ms)")
    rows = [
        ("graph.invoke (in process)", "invoke"),
        ("astream_turn (in process, async)", "astream"),
        ("POST /v1/chat/completions", "plain"),
        ("POST /v1/chat/completions stream", "stream"),
    ]
    for label, key in rows:
        value = statistics.median(runs[key])
        each = " ".join(f"{v:.1f}" for v in runs[key])
        print(f"{label:<34}{value:>9.1f}{value / base:>10.2f}{value - base:>8.1f}   {each}")


if __name__ == "__main__":
    main()
