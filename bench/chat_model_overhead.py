"""What TMOChatModel adds to a turn: p50 of one turn through ``TMOChatModel.invoke`` against
the same turn through ``graph.invoke``, in the same process, on the same graph.

Instant fake models and deterministic fake embeddings, an in-memory checkpointer, the rules
policy with three described views; 8-turn dialogues. The chat model is called as an LCEL
chain calls it, with the whole history each turn (it reads the thread to send only the new
question) and streams the turn internally (``stream_turn``); ``graph.invoke`` gets only
the new question. Runs alternate which side goes first; each run's medians are printed,
then the median over runs.

python bench/chat_model_overhead.py [--runs 5] [--turns 40]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

from instant import PROMPTS, VIEWS, InstantLocal  # bench/instant.py
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from tmo_graph.chat_model import TMOChatModel
from tmo_graph.context import Context
from tmo_graph.graph import build_graph
from tmo_graph.services import Services
from tmo_graph.settings import Settings

DIALOGUE_TURNS = 8


def graph_turns(graph: Any, context: Context, turns: int, tag: str) -> list[float]:
    times = []
    for i in range(turns):
        start = time.perf_counter()
        graph.invoke(
            {"messages": [("user", f"{PROMPTS[i % len(PROMPTS)]} ({i})")], "views": VIEWS},
            {"configurable": {"thread_id": f"{tag}-{i // DIALOGUE_TURNS}"}},
            context=context,
        )
        times.append(time.perf_counter() - start)
    return times


def chat_turns(model: TMOChatModel, turns: int, tag: str) -> list[float]:
    times: list[float] = []
    history: list[BaseMessage] = []
    for i in range(turns):
        if i % DIALOGUE_TURNS == 0:
            history = []
        question: BaseMessage = HumanMessage(f"{PROMPTS[i % len(PROMPTS)]} ({i})")
        start = time.perf_counter()
        reply = model.invoke(
            [*history, question], {"configurable": {"thread_id": f"{tag}-{i // DIALOGUE_TURNS}"}}
        )
        times.append(time.perf_counter() - start)
        history += [question, AIMessage(str(reply.content))]
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--turns", type=int, default=40)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory():
        services = Services(
            settings=Settings(),
            local=InstantLocal(),
            cloud=FakeListChatModel(responses=["Cloud answer."]),
            embeddings=DeterministicFakeEmbedding(size=384),
        )
        graph = build_graph(services, checkpointer=InMemorySaver())
        context = Context(policy="rules", user_id="bench")
        model = TMOChatModel(graph=graph, context=context, views=VIEWS)
        graph_turns(graph, context, 8, "warm-g")  # warm-up: imports, caches, first Chroma use
        chat_turns(model, 8, "warm-c")

        graph_p50, chat_p50 = [], []
        for run in range(args.runs):
            order = ["graph", "chat"] if run % 2 == 0 else ["chat", "graph"]
            for side in order:
                if side == "graph":
                    times = graph_turns(graph, context, args.turns, f"g{run}")
                    graph_p50.append(statistics.median(times))
                else:
                    chat_p50.append(statistics.median(chat_turns(model, args.turns, f"c{run}")))
            print(
                f"run {run + 1}: graph.invoke p50 {1000 * graph_p50[-1]:6.1f} ms   "
                f"TMOChatModel.invoke p50 {1000 * chat_p50[-1]:6.1f} ms   "
                f"ratio {chat_p50[-1] / graph_p50[-1]:.2f}"
            )

    g, c = statistics.median(graph_p50), statistics.median(chat_p50)
    print(f"\nchat-model overhead per turn, {args.runs} runs x {args.turns} turns (medians):")
    print(f"  graph.invoke          p50 {1000 * g:6.1f} ms")
    print(f"  TMOChatModel.invoke   p50 {1000 * c:6.1f} ms   (+{1000 * (c - g):.1f} ms)")
    ratios = sorted(cp / gp for cp, gp in zip(chat_p50, graph_p50, strict=True))
    print(f"  ratio of the medians  {c / g:.2f}")
    print(f"  per-run ratios        median {statistics.median(ratios):.2f}", end="")
    print(f"   min {ratios[0]:.2f}   max {ratios[-1]:.2f}")


if __name__ == "__main__":
    main()
