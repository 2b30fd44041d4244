"""Routing overhead per turn: everything the graph does except model generation.

Real MiniLM embeddings (the prompt embedded once, shared by task, views and recall; the
turns leaving the recent window embedded into memory), the memory's Chroma store
(:class:`tmo_graph.memory.chroma_store.ChromaStore`) holding ``--stored`` turns, the rules
policy with budget masking, accounting and an in-memory checkpointer (LangGraph's default
durability: a checkpoint per step). The local and cloud models answer instantly, so what is
timed is the router itself. 8-turn dialogues, recall over all the user's stored turns
(``recall_scope="user"``).

Set-ups run interleaved in the same process on the same collection (which goes first
rotates per run), so a busy machine slows them alike:

- before: embeddings through sentence-transformers (``embeddings.backend:
  sentence-transformers``, float32, the process's 2 torch threads);
- now: the defaults (``backend: fast``: bfloat16 where the CPU has it, its own worker thread
  with 1 torch thread);
- now, durability=exit: the same graph invoked with one checkpoint per turn instead of one
  per step (what the per-step checkpoints cost; the surfaces keep them, a crashed turn
  resumes from them).

Each turn's wall time and its CPU time (the whole process's: what the turn costs the
machine; wall time on a busy machine is larger). Baselines measured in the same process,
interleaved: one bare MiniLM query embedding on each backend, one bare k=3 store search
(its query embedding included) with each. Medians of each run's p50, and of the per-run ratios.

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
from langchain_core.embeddings import Embeddings
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.base import BaseStore

from tmo_graph.context import Context
from tmo_graph.graph import build_graph
from tmo_graph.memory.chroma_store import ChromaStore
from tmo_graph.memory.clients import chroma_client
from tmo_graph.memory.recall import FIELDS, recall, remember, stored_turns
from tmo_graph.models.embeddings import local_embeddings
from tmo_graph.services import Services
from tmo_graph.settings import Settings

TARGETS_MS = {10_000: 15.0, 100_000: 20.0}


class FillEmbeddings(Embeddings):
    """``inner``, except for the texts in ``vectors``: the bench fills the store with
    jittered copies of a few hundred real embeddings instead of embedding every turn."""

    def __init__(self, inner: Embeddings) -> None:
        self.inner = inner
        self.vectors: dict[str, list[float]] = {}

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        unknown = [t for t in texts if t not in self.vectors]
        found = (
            dict(zip(unknown, self.inner.embed_documents(unknown), strict=True)) if unknown else {}
        )
        return [self.vectors.get(t) or found[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


def fill_memory(store: BaseStore, fill: FillEmbeddings, n: int) -> None:
    """``n`` stored turns: real embeddings of varied texts, jittered so every vector differs."""
    base_texts = [f"User: {p} (note {i})\nAssistant: Okay." for i, p in enumerate(PROMPTS * 40)]
    base = np.asarray(fill.inner.embed_documents(base_texts), dtype=np.float32)
    rng = np.random.default_rng(0)
    for start in range(0, n, 2000):
        rows = min(2000, n - start)
        idx = np.arange(start, start + rows) % len(base)
        vectors = base[idx] + rng.normal(0, 0.02, (rows, base.shape[1])).astype(np.float32)
        texts = [f"{base_texts[i]} #{start + row}" for row, i in enumerate(idx)]
        fill.vectors = dict(zip(texts, vectors.tolist(), strict=True))
        turns = list(zip(range(start, start + rows), texts, strict=True))
        remember(store, user_id="bench", thread_id="history", turns=turns)
    fill.vectors = {}


def routing_graph(embeddings: Any, store: BaseStore) -> Any:
    """The graph on instant models, real embeddings and memory, in-memory checkpoints."""
    services = Services(
        settings=Settings(),
        local=InstantLocal(),
        cloud=FakeListChatModel(responses=["Cloud answer."]),
        embeddings=embeddings,
        store=store,
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
    embedders: dict[str, Any], memories: dict[str, BaseStore], n: int
) -> tuple[dict[str, float], dict[str, float]]:
    """p50 (ms) of one bare query embedding per embedder and one bare k=3 search per store."""
    embed_s: dict[str, list[float]] = {name: [] for name in embedders}
    search_s: dict[str, list[float]] = {name: [] for name in memories}
    for i in range(n):
        for name, embeddings in embedders.items():
            start = time.perf_counter()
            embeddings.embed_query(f"baseline prompt number {i} ({name})")
            embed_s[name].append(time.perf_counter() - start)
        for name, store in memories.items():
            start = time.perf_counter()
            recall(store, user_id="bench", query=f"baseline search {i} ({name})", k=3)
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
        client = chroma_client(Path(tmp) / "chroma")
        fill = FillEmbeddings(fast)
        memory = ChromaStore(client, fill, fields=FIELDS)
        start = time.perf_counter()
        fill_memory(memory, fill, args.stored)
        seconds = time.perf_counter() - start
        count = len(stored_turns(memory, user_id="bench"))
        print(f"stored {count:,} turns in the Chroma store in {seconds:.1f} s")
        before = ChromaStore(client, sentence_transformers, fields=FIELDS)
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
            {"fast": memory, "sentence-transformers": before},
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
        f"(sentence-transformers); one k=3 store search p50 {search_p50['fast']:.2f} ms "
        f"(fast), {search_p50['sentence-transformers']:.2f} ms (sentence-transformers)"
    )


if __name__ == "__main__":
    main()
