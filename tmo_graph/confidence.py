"""How sure is the local model of its answer? Estimators and the combined confidence.

Each estimator maps (token log-probs, token entropies, answer text) to a number; the combined
confidence in [0, 1] is the geometric-mean token probability (``exp(mean log-prob)``: how
likely, on average per token, the model found its own answer), times the share of the
answer that does not repeat itself (a looping answer is fluent but worthless), halved when
the answer contains a refusal or deferral marker, since small models say "sorry" fluently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

REFUSAL_MARKERS = (
    "sorry",
    "i can't",
    "i cannot",
    "can't",
    "i don't have",
    "i do not have",
    "as an ai",
    "i'm not able",
    "i am unable",
    "i'm unable",
    "not sure",
)


def mean_logprob(logprobs: Sequence[float], entropies: Sequence[float], text: str) -> float:
    return sum(logprobs) / len(logprobs) if logprobs else float("-inf")


def min_logprob(logprobs: Sequence[float], entropies: Sequence[float], text: str) -> float:
    return min(logprobs) if logprobs else float("-inf")


def mean_entropy(logprobs: Sequence[float], entropies: Sequence[float], text: str) -> float:
    return sum(entropies) / len(entropies) if entropies else float("inf")


def repetition(logprobs: Sequence[float], entropies: Sequence[float], text: str) -> float:
    """Share of word trigrams that repeat an earlier one: small models loop confidently."""
    words = text.lower().split()
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def refusal(logprobs: Sequence[float], entropies: Sequence[float], text: str) -> float:
    """1.0 when the answer refuses or defers, else 0.0."""
    lowered = text.lower().replace("\u2019", "'")
    return 1.0 if any(marker in lowered for marker in REFUSAL_MARKERS) else 0.0


ESTIMATORS = {
    "mean_logprob": mean_logprob,
    "min_logprob": min_logprob,
    "mean_entropy": mean_entropy,
    "repetition": repetition,
    "refusal": refusal,
}


def confidence(
    logprobs: Sequence[float], entropies: Sequence[float], text: str
) -> tuple[float, dict[str, float]]:
    """The combined confidence in [0, 1] and every estimator's value."""
    parts = {name: round(fn(logprobs, entropies, text), 4) for name, fn in ESTIMATORS.items()}
    if not logprobs or not text.strip():
        return 0.0, parts
    combined = math.exp(parts["mean_logprob"]) * (1.0 - parts["repetition"])
    combined *= 0.5 if parts["refusal"] else 1.0
    return round(min(max(combined, 0.0), 1.0), 4), parts
