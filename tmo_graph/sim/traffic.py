"""Traffic with a known truth: a deployment unlike M4A1, whose true quality gap is stated.

The deployment (:data:`DEPLOYMENT`): a phone (device profile ``iPhone 15 Pro``) on ``4G``,
no camera views; its users ask mostly Recommendation (45 %) and Message Editing (35 %), the
rest Query (12 %) and Assistive System (8 %) (M4A1's task names; M4A1 itself is mostly
Query). Dialogues last 3 to 8 turns.

The true model, per turn ``t`` (0-based) of a dialogue with task ``k``:

- quality gap ``g = clip(BASE[k] + SLOPE[k] * t + N(0, 0.08), 0, 1)``: how much worse the
  device's answer is than the cloud's (a judge scores the device's answer ``1 - g``);
  BASE = Recommendation 0.80, Message Editing 0.08, Query 0.45, Assistive System 0.15;
  SLOPE = +0.02 a turn for every task (longer dialogues outgrow the small model);
- the device's shipped confidence (the M4A1-fit combination of its token entropies):
  ``sigmoid(3 * (0.5 - g) + BIAS[k] + N(0, 0.6))``; BIAS = Recommendation +1.6 (fluent,
  sure-sounding and often wrong), Message Editing -1.6 (rewrites spread their tokens' mass:
  unsure-sounding and usually right), Query 0, Assistive System 0. So the shipped
  threshold (0.5) keeps bad recommendations and escalates good edits;
- prompts: Recommendation prompts are short (6-12 words) so the default ``rules`` policy
  (long Recommendation / Query prompts to the cloud) seldom sends them up front.

This module is the truth only (no graph): ``bench/learning_curve.py`` and the tests run it
through the live graph with fakes that answer by it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

TASKS = ("Assistive System", "Message Editing", "Query", "Recommendation")
MIX = {"Recommendation": 0.45, "Message Editing": 0.35, "Query": 0.12, "Assistive System": 0.08}
BASE_GAP = {
    "Recommendation": 0.80,
    "Message Editing": 0.08,
    "Query": 0.45,
    "Assistive System": 0.15,
}
GAP_SLOPE = 0.02
GAP_NOISE = 0.08
CONFIDENCE_BIAS = {
    "Recommendation": 1.6,
    "Message Editing": -1.6,
    "Query": 0.0,
    "Assistive System": 0.0,
}
CONFIDENCE_NOISE = 0.6
DEVICE = "iPhone 15 Pro"
NETWORK = "4G"

_WORDS = {
    "Recommendation": [
        "recommend",
        "suggest",
        "which",
        "best",
        "dinner",
        "wine",
        "snack",
        "recipe",
        "dessert",
        "pan",
    ],
    "Message Editing": [
        "write",
        "edit",
        "message",
        "reply",
        "note",
        "draft",
        "email",
        "text",
        "polite",
        "shorter",
    ],
    "Query": ["how", "many", "where", "what", "when", "boiling", "fresh", "long", "who", "which"],
    "Assistive System": [
        "turn",
        "set",
        "timer",
        "lights",
        "oven",
        "remind",
        "play",
        "temperature",
        "on",
        "off",
    ],
}


@dataclass(frozen=True)
class TruthTurn:
    """One turn of the generated traffic with its truth."""

    prompt: str
    task: str
    gap: float  # the device's answer is this much worse than the cloud's (0..1)
    confidence: float  # what the device's token scores make of it (shipped combination)

    @property
    def judged(self) -> float:
        """The judge's score of the device's answer against the cloud's."""
        return 1.0 - self.gap


@dataclass(frozen=True)
class TruthDialogue:
    thread_id: str
    turns: tuple[TruthTurn, ...]


def true_gap(task: str, turn: int, noise: float) -> float:
    """The stated true gap of ``task`` at ``turn``, with the turn's noise draw."""
    return min(max(BASE_GAP[task] + GAP_SLOPE * turn + noise, 0.0), 1.0)


def shipped_confidence(task: str, gap: float, noise: float) -> float:
    """The confidence the shipped combination gives such a draft (see the module)."""
    z = 3.0 * (0.5 - gap) + CONFIDENCE_BIAS[task] + noise
    return 1.0 / (1.0 + math.exp(-z))


def generate(n_turns: int, seed: int = 0, prefix: str = "d") -> list[TruthDialogue]:
    """Dialogues of this deployment totalling ``n_turns`` turns (the last one cut short)."""
    if n_turns < 1:
        raise ValueError(f"n_turns must be >= 1, got {n_turns}")
    rng = random.Random(seed)
    tasks, weights = list(MIX), list(MIX.values())
    dialogues: list[TruthDialogue] = []
    made = 0
    while made < n_turns:
        length = min(rng.randint(3, 8), n_turns - made)
        thread_id = f"{prefix}{seed}-{len(dialogues):05d}"
        task = rng.choices(tasks, weights)[0]
        turns = []
        for t in range(length):
            if t and rng.random() < 0.3:  # a dialogue sometimes changes subject
                task = rng.choices(tasks, weights)[0]
            gap = true_gap(task, t, rng.gauss(0.0, GAP_NOISE))
            conf = shipped_confidence(task, gap, rng.gauss(0.0, CONFIDENCE_NOISE))
            words = _WORDS[task]
            n = rng.randint(6, 12)
            body = " ".join(rng.choice(words) for _ in range(n - 1))
            turns.append(TruthTurn(f"{body} ({thread_id} turn {t})?", task, gap, conf))
        dialogues.append(TruthDialogue(thread_id, tuple(turns)))
        made += length
    return dialogues
