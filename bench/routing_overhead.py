"""Routing overhead per turn: everything the graph does except model generation.

Real MiniLM embeddings (the prompt embedded once, shared by task, views and recall; the
turns leaving the recent window embedded into memory), a real Chroma collection holding
``--stored`` turns, the rules policy with budget masking, accounting and an in-memory
checkpointer (LangGraph's default durability: a checkpoint per step). The local and cloud
models answer instantly, so what is timed is the router itself. 8-turn dialogues, recall
over all the user's stored turns (``recall_scope="user"``).

Set-ups run interleaved in the same process on the same collection (which goes first
rotates per run), so a busy machine slows them alike:

- before: embeddings through sentence-transformers (``embeddings.backend:
  sentence-transformers``, float32, the process's 2 torch threads), a ``count()`` call
  before every memory search and Chroma's HNSW query (``memory.search: chroma``), as the
  graph ran until now;
- now: the defaults (``backend: fast``: bfloat16 where the CPU has it, its own worker thread
  with 1 torch thread; the memory searched in this process, ``memory.search: in-process``);
- now, durability=exit: the same graph invoked with one checkpoint per turn instead of one
  per step (what the per-step checkpoints cost; the surfaces keep them, a crashed turn
  resumes from them).

Each turn's wall time and its CPU time (the whole process's: what the turn costs the
machine; wall time on a busy machine is larger). Baselines measured in the same process,
interleaved: one bare MiniLM query embedding on each backend, one bare k=3 search of each
memory. Medians of each run's p50, and of the per-run ratios.

python bench/routing_overhead.py [--runs 5] [--turns 40] [--stored 10000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from instant import (  # bench/instant.py
    PROMPTS,
    InstantLocal,
    Timed,
    load_average,
    median,
    ms,
    routing_turns,
    runs_line,
)
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langgraph.checkpoint.memory import InMemorySaver

from tmo_graph.context import Context
from tmo_graph.graph import build_graph
from tmo_graph.memory.turns import TurnMemory
from tmo_graph.models.embeddings import local_embeddings
from tmo_graph.services import Services
from tmo_graph.settings import Settings
from tmo_graph.state import Recalled

TARGETS_MS = {10_000: 15.0, 100_000: 20.0}


class CountFirstMemory(TurnMemory):
    """The memory as it searched before: a ``count()`` call ahead of every query."""

    def search(self, **kwargs: Any) -> list[Recalled]:
        if kwargs.get("k", 0) > 0 and self.count(kwargs["user_id"]) == 0:
            return []
        return super().search(**kwargs)


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


def routing_graph(embeddings: Any, memory: TurnMemory) -> Any:
    """The graph on instant models, real embeddings and memory, in-memory checkpoints."""
    services = Services(
        settings=Settings(),
        local=InstantLocal(),
        cloud=FakeListChatModel(responses=["Cloud answer."]),
        embeddings=embeddings,
        memory=memory,
    )
    return build_graph(services, checkpointer=InMemorySaver())


# Recall across the user's dialogues: every turn searches all the stored turns.
CONTEXT = Context(policy="rules", user_id="bench", recent_turns=4, recall_k=3, recall_scope="user")


Setup = tuple[Any, dict[str, Any]]  # a graph and extra graph.invoke arguments


def compare(
    setups: dict[str, Setup], runs: int, turns: int, tag: str = "r"
) -> dict[str, list[Timed]]:
    """Each set-up's turns per run; the order of the set-ups rotates per run."""
    names = list(setups)
    for name in names:  # warm-up
        graph, invoke = setups[name]
        routing_turns(graph, CONTEXT, 5, f"{tag}-warm-{name}", **invoke)
    times: dict[str, list[Timed]] = {name: [] for name in names}
    for run in range(runs):
        order = names[run % len(names) :] + names[: run % len(names)]
        for name in order:
            graph, invoke = setups[name]
            times[name].append(routing_turns(graph, CONTEXT, turns, f"{tag}{run}-{name}", **invoke))
    return times


def bare_baselines(
    embedders: dict[str, Any], memories: dict[str, TurnMemory], n: int
) -> tuple[dict[str, float], dict[str, float]]:
    """p50 (ms) of one bare query embedding per embedder and one bare k=3 search per memory."""
    embed_s: dict[str, list[float]] = {name: [] for name in embedders}
    search_s: dict[str, list[float]] = {name: [] for name in memories}
    for i in range(n):
        vector: list[float] = []
        for name, embeddings in embedders.items():
            start = time.perf_counter()
            vector = embeddings.embed_query(f"baseline prompt number {i} ({name})")
            embed_s[name].append(time.perf_counter() - start)
        for name, memory in memories.items():
            start = time.perf_counter()
            memory.search(user_id="bench", vector=vector, k=3)
            search_s[name].append(time.perf_counter() - start)
    return (
        {name: ms(v) for name, v in embed_s.items()},
        {name: ms(v) for name, v in search_s.items()},
    )


def report(times: dict[str, list[Timed]], stored: int) -> None:
    p50 = {name: [ms(run.wall) for run in per_run] for name, per_run in times.items()}
    for name, per_run in times.items():
        print(runs_line(f"{name}: p50", p50[name]))
        print(runs_line(f"{name}: p90", [ms(run.wall, 0.9) for run in per_run]))
        print(runs_line(f"{name}: CPU time p50", [ms(run.cpu) for run in per_run]))
    if "before" in p50 and "now" in p50:
        ratios = [now / before for now, before in zip(p50["now"], p50["before"], strict=True)]
        print(runs_line("now / before (p50 per run)", ratios, unit="x"))
    target = TARGETS_MS.get(stored)
    if target is not None and "now" in p50:
        verdict = "met" if median(p50["now"]) <= target else "NOT met"
        print(f"  target: p50 <= {target:g} ms at {stored:,} stored turns: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--stored", type=int, default=10_000)
    args = parser.parse_args()

    fast = local_embeddings()
    sentence_transformers = local_embeddings(backend="sentence-transformers")
    with tempfile.TemporaryDirectory() as tmp:
        memory = TurnMemory(Path(tmp) / "chroma")
        start = time.perf_counter()
        fill_memory(memory, fast, args.stored)
        seconds = time.perf_counter() - start
        print(f"stored {memory.count('bench'):,} turns in Chroma in {seconds:.1f} s")
        before = CountFirstMemory(Path(tmp) / "chroma", search="chroma")
        now = routing_graph(fast, memory)
        setups: dict[str, Setup] = {
            "before": (routing_graph(sentence_transformers, before), {}),
            "now": (now, {}),
            # What LangGraph's checkpoint per step costs: one checkpoint per turn instead.
            "now, durability=exit": (now, {"durability": "exit"}),
        }
        load_before = load_average()
        times = compare(setups, args.runs, args.turns)
        embed_p50, search_p50 = bare_baselines(
            {"fast": fast, "sentence-transformers": sentence_transformers},
            {"in-process": memory, "chroma": before},
            args.turns,
        )
        load_after = load_average()

    print(
        f"\nrouting overhead per turn (no generation), {args.stored:,} stored turns, "
        f"{args.runs} runs x {args.turns} turns, interleaved; {load_before} -> {load_after}:"
    )
    report(times, args.stored)
    dtype = getattr(fast, "dtype_name", "?")
    print(
        f"  baselines, same process: one MiniLM query p50 {embed_p50['fast']:.1f} ms (fast, "
        f"{dtype}, 1 thread), {embed_p50['sentence-transformers']:.1f} ms "
        f"(sentence-transformers); one k=3 memory search p50 {search_p50['in-process']:.2f} ms "
        f"(in-process), {search_p50['chroma']:.2f} ms (Chroma)"
    )


if __name__ == "__main__":
    main()
