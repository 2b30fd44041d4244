"""Routing overhead per turn: everything the graph does except model generation.

Real MiniLM embeddings (modality + task scoring, recall query), a real Chroma collection
holding 10,000 stored turns, the rules policy with budget masking, accounting and an
in-memory checkpointer. The local and cloud models answer instantly, so what is timed is
the router itself. Baselines measured in the same process: one bare MiniLM query
embedding, and one bare Chroma k=3 query.

python bench/routing_overhead.py [--turns 40] [--stored 10000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from instant import PROMPTS, VIEWS, InstantLocal  # bench/instant.py
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langgraph.checkpoint.memory import InMemorySaver

from tmo_graph.context import Context
from tmo_graph.graph import build_graph
from tmo_graph.memory import TurnMemory
from tmo_graph.models.embeddings import local_embeddings
from tmo_graph.services import Services
from tmo_graph.settings import Settings


def fill_memory(memory: TurnMemory, embeddings: Any, n: int) -> None:
    """``n`` stored turns: real embeddings of varied texts, jittered so every vector differs."""
    base_texts = [f"User: {p} (note {i})\nAssistant: Okay." for i, p in enumerate(PROMPTS * 40)]
    base = np.asarray(embeddings.embed_documents(base_texts), dtype=np.float32)
    rng = np.random.default_rng(0)
    for start in range(0, n, 2000):
        rows = min(2000, n - start)
        idx = np.arange(start, start + rows) % len(base)
        vectors = base[idx] + rng.normal(0, 0.02, (rows, base.shape[1])).astype(np.float32)
        memory.add(
            user_id="bench",
            thread_id="history",
            turns=list(range(start, start + rows)),
            texts=[base_texts[i] for i in idx],
            vectors=vectors.tolist(),
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--stored", type=int, default=10_000)
    args = parser.parse_args()

    embeddings = local_embeddings()
    with tempfile.TemporaryDirectory() as tmp:
        memory = TurnMemory(Path(tmp) / "chroma")
        t0 = time.perf_counter()
        fill_memory(memory, embeddings, args.stored)
        print(f"stored {memory.count('bench')} turns in Chroma in {time.perf_counter() - t0:.1f} s")
        services = Services(
            settings=Settings(),
            local=InstantLocal(),
            cloud=FakeListChatModel(responses=["Cloud answer."]),
            embeddings=embeddings,
            memory=memory,
        )
        graph = build_graph(services, checkpointer=InMemorySaver())
        # Recall across the user's dialogues: every turn searches all 10,000 stored turns.
        context = Context(
            policy="rules", user_id="bench", recent_turns=4, recall_k=3, recall_scope="user"
        )

        def one_turn(i: int) -> float:
            prompt = f"{PROMPTS[i % len(PROMPTS)]} ({i})"  # new text: no embedding cache hits
            start = time.perf_counter()
            graph.invoke(
                {"messages": [("user", prompt)], "views": VIEWS},
                {"configurable": {"thread_id": f"t{i // 8}"}},  # 8-turn dialogues
                context=context,
            )
            return time.perf_counter() - start

        for i in range(5):  # warm-up
            one_turn(10_000 + i)
        turn_s = [one_turn(i) for i in range(args.turns)]
        embed_s, query_s = [], []
        for i in range(args.turns):
            start = time.perf_counter()
            vector = embeddings.embed_query(f"baseline prompt number {i}")
            embed_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            memory.search(user_id="bench", vector=vector, k=3)
            query_s.append(time.perf_counter() - start)

    def ms(values: list[float], q: float) -> float:
        return 1000 * float(np.quantile(values, q))

    print(f"\nrouting overhead per turn, {args.turns} turns, {args.stored} stored turns:")
    print(f"  graph turn (no generation)   p50 {ms(turn_s, 0.5):7.1f} ms", end="")
    print(f"   p90 {ms(turn_s, 0.9):7.1f} ms   target p50 <= 50 ms")
    print(f"  baseline: one MiniLM query  p50 {ms(embed_s, 0.5):7.1f} ms")
    print(f"  baseline: one Chroma k=3     p50 {ms(query_s, 0.5):7.1f} ms")
    ratio = statistics.median(turn_s) / statistics.median(embed_s)
    print(f"  turn / MiniLM query ratio    {ratio:.2f}")


if __name__ == "__main__":
    main()
