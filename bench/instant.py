"""What the overhead benchmarks share: prompts, described views, a model that answers at once."""

from __future__ import annotations

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
