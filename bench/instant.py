"""What the benchmarks share: prompts, described views, a model that answers at once, turns
of the routing graph, and how the figures are printed (medians, the machine's load)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PROMPTS = [
    "Please turn on the lights above the counter.",
    "Is the pot on the stove boiling yet?",
    "Write a message to Sam that dinner is at seven.",
    "What can I cook with the tomatoes on the board?",
    "How long should I boil an egg?",
]
VIEWS: dict[str, Any] = {
    "first_person": {"description": "the user's hands and the cutting board"},
    "overhead": {"description": "overhead camera above the stove"},
    "side": {"description": "side camera facing the fridge"},
}
DIALOGUE_TURNS = 8  # turns per dialogue in the routing benchmarks


@dataclass
class InstantStats:
    logprobs: list[float]
    entropies: list[float]


class InstantLocal:
    """A local model that answers at once, surely: only the graph's own work is timed."""

    def answer(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int | None = None,
        tags: list[str] | None = None,
        max_time_s: float | None = None,
    ) -> tuple[str, InstantStats]:
        return "Done.", self.score_answer(messages, "Done.")

    def score_answer(self, messages: list[dict[str, str]], answer: str) -> InstantStats:
        return InstantStats([-0.1, -0.2], [0.5, 0.4])


@dataclass
class Timed:
    """Each turn's wall time and CPU time (seconds). CPU time is the whole process's, all its
    threads: what a turn costs the machine, which other work on it does not inflate."""

    wall: list[float]
    cpu: list[float]


def routing_turns(graph: Any, context: Any, turns: int, tag: str, **invoke: Any) -> Timed:
    """``turns`` turns through ``graph.invoke`` in 8-turn dialogues; every prompt is new text
    (tagged), so no embedding cache answers it."""
    timed = Timed([], [])
    for i in range(turns):
        prompt = f"{PROMPTS[i % len(PROMPTS)]} ({tag} {i})"
        start, cpu = time.perf_counter(), time.process_time()
        graph.invoke(
            {"messages": [("user", prompt)], "views": VIEWS},
            {"configurable": {"thread_id": f"{tag}-{i // DIALOGUE_TURNS}"}},
            context=context,
            **invoke,
        )
        timed.wall.append(time.perf_counter() - start)
        timed.cpu.append(time.process_time() - cpu)
    return timed


def ms(values: Sequence[float], q: float = 0.5) -> float:
    """The ``q`` quantile of ``values`` (seconds) in milliseconds."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return 1000 * (ordered[low] + (ordered[high] - ordered[low]) * (pos - low))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def load_average() -> str:
    """The 1-minute load average of this machine and its cores, for the noise in view."""
    try:
        one = os.getloadavg()[0]
    except OSError:
        return "load unknown"
    return f"load {one:.1f} on {os.cpu_count()} cores"


def runs_line(label: str, values: Sequence[float], unit: str = "ms") -> str:
    """``label``, each run's figure and their median."""
    each = " ".join(f"{v:7.2f}" for v in values)
    return f"  {label:<44s} median {median(values):7.2f} {unit}   (runs: {each})"
