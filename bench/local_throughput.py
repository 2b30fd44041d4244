"""Local tokens/s through the graph, against raw ``model.generate`` on the same prompt.

Both decode greedily the same prompt to the same tokens. Runs alternate (raw, graph, raw,
graph, ...) so machine noise hits both alike; medians are printed. The graph figure covers
the whole turn: routing, ChatHuggingFace generation with the token log-probs recorded for
the confidence check, and accounting.

python bench/local_throughput.py [--runs 5] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from langgraph.checkpoint.memory import InMemorySaver

from tmo_graph.context import DEFAULT_SYSTEM_PROMPT, Context
from tmo_graph.graph import build_graph
from tmo_graph.memory import TurnMemory
from tmo_graph.models.embeddings import local_embeddings
from tmo_graph.models.local import get_local_model
from tmo_graph.prompts import text_dialogue
from tmo_graph.services import Services
from tmo_graph.settings import LocalModelSettings, Settings

PROMPT = "Give me three tips for keeping fresh herbs fresh for longer in the kitchen."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    settings = Settings(local=LocalModelSettings(max_new_tokens=args.max_new_tokens))
    local = get_local_model(settings.local.source, args.max_new_tokens)
    from langchain_core.messages import HumanMessage

    messages = text_dialogue([HumanMessage(content=PROMPT)], [], DEFAULT_SYSTEM_PROMPT)
    with tempfile.TemporaryDirectory() as tmp:
        services = Services(
            settings=settings,
            local=local,
            cloud=None,
            embeddings=local_embeddings(),
            memory=TurnMemory(Path(tmp) / "chroma"),
        )
        graph = build_graph(services, checkpointer=InMemorySaver())
        context = Context(policy="always-local")
        raw_tps, graph_tps, chat_tps = [], [], []
        for run in range(args.runs + 1):  # the first round warms both paths up
            start = time.perf_counter()
            raw_text, _ = local.generate_raw(messages, args.max_new_tokens)
            raw_s = time.perf_counter() - start
            # Every path is counted alike: tokens of the answer text (the end token excluded).
            n_raw = len(local.tokenizer(raw_text.strip())["input_ids"])
            raw = n_raw / raw_s

            start = time.perf_counter()
            out = graph.invoke(
                {"messages": [("user", PROMPT)]},
                {"configurable": {"thread_id": f"bench-{run}"}},
                context=context,
            )
            turn_s = time.perf_counter() - start
            n_graph = len(local.tokenizer(out["turns"][-1]["answer"])["input_ids"])

            start = time.perf_counter()
            chat_text, _ = local.answer(messages, args.max_new_tokens)
            chat_s = time.perf_counter() - start
            n_chat = len(local.tokenizer(chat_text)["input_ids"])
            if run == 0:
                print(f"warm-up: raw {n_raw}, answer() {n_chat}, graph {n_graph} tokens")
                continue
            raw_tps.append(raw)
            graph_tps.append(n_graph / turn_s)
            chat_tps.append(n_chat / chat_s)

    raw_med, graph_med, chat_med = (statistics.median(v) for v in (raw_tps, graph_tps, chat_tps))
    print(
        f"\nlocal throughput, median of {args.runs} alternating runs, "
        f"{args.max_new_tokens} new tokens:"
    )
    print(f"  raw model.generate           {raw_med:6.2f} tokens/s")
    print(f"  LocalModel.answer (+scores)  {chat_med:6.2f} tokens/s", end="")
    print(f"   ratio {chat_med / raw_med:.3f}")
    print(f"  whole graph turn             {graph_med:6.2f} tokens/s", end="")
    print(f"   ratio {graph_med / raw_med:.3f}   target >= 0.95")


if __name__ == "__main__":
    main()
