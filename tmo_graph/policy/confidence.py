"""How sure is the local model of its answer? Estimators and the combined confidence.

Each estimator maps (token log-probs, token entropies, answer text) to a number. The combined
confidence in [0, 1] is a small logistic model over two of them (mean token entropy and the
refusal marker), fitted on M4A1's scored local answers: the estimated probability that the
answer is better than the median local answer, with a guard against loops. So a threshold
of 0.5 escalates answers more likely worse than typical than better, 0.3 only the clearly
doubtful ones. The optional sampling-agreement score (:mod:`tmo_graph.eval.agreement`)
needs extra generations and is not part of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

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


# What later prompts get instead of an answer that looped or repeated an earlier one. A small
# model that copies it from the history has echoed it: the check counts it as an earlier answer.
LEFT_OUT_ANSWER = "(This answer repeated itself and is left out.)"


def mean_logprob(logprobs: Sequence[float], entropies: Sequence[float], text: str) -> float:
    return sum(logprobs) / len(logprobs) if logprobs else float("-inf")


def min_logprob(logprobs: Sequence[float], entropies: Sequence[float], text: str) -> float:
    return min(logprobs) if logprobs else float("-inf")


def quantile_logprob(logprobs: Sequence[float], entropies: Sequence[float], text: str) -> float:
    """A low quantile of the token log-probs, the quantile shrinking with the answer's length.

    q = 1 / sqrt(n), kept within [0.1, 0.5]: the median of a 4-token answer, the 10th
    percentile of a 100-token one. The minimum over-punishes long answers (one rare name
    somewhere is enough) and the mean hides a short run of guessed tokens; this sits between.
    """
    if not logprobs:
        return float("-inf")
    q = min(0.5, max(0.1, 1.0 / math.sqrt(len(logprobs))))
    ordered = sorted(logprobs)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


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
    "quantile_logprob": quantile_logprob,
    "mean_entropy": mean_entropy,
    "repetition": repetition,
    "refusal": refusal,
}


# The estimators the combined confidence reads, and a logistic regression over them
# (standardised), fitted on the 134 training-part turns of seed 9139's split by
# `tmo-graph eval confidence --data M4A1.json --fit-out FILE` (docs/results.md, "Confidence
# of the local answer").
# Of the combinations tried, this is the best by 5-fold cross-validation inside the training
# part (AUROC 0.699) among those whose weights keep their meaning; fits that add the mean
# log-prob or repetition score a little higher there but give the log-prob a negative
# weight and reward repetition (in M4A1, longer and more specific answers score higher),
# which would trust exactly the fluent loops a small model falls into.
COMBINED_FEATURES = ("mean_entropy", "refusal")
COMBINATION: dict[str, Any] = {
    "features": list(COMBINED_FEATURES),
    "means": [1.80419, 0.26866],
    "scales": [0.22679, 0.44326],
    "weights": [-0.77187, -0.41794],
    "bias": -0.06091,
}
# A loop guard outside what M4A1 can teach (its recorded answers repeat at most 16 % of
# their word trigrams): an answer repeating more than this is scaled by (1 - repetition).
LOOP_REPETITION = 0.3


def combine(parts: Mapping[str, float], combination: Mapping[str, Any] = COMBINATION) -> float:
    """The logistic combination of the estimator values in ``parts``, in [0, 1]."""
    z = float(combination["bias"])
    for name, mean, scale, weight in zip(
        combination["features"],
        combination["means"],
        combination["scales"],
        combination["weights"],
        strict=True,
    ):
        value = min(max(parts[name], -1e3), 1e3)  # empty answers give infinities
        z += weight * (value - mean) / scale
    return 1.0 / (1.0 + math.exp(-min(max(z, -60.0), 60.0)))


def _trigrams(text: str) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}


def echo(text: str, earlier_answers: Sequence[str]) -> float:
    """Share of the answer's word trigrams already said in an earlier answer of the dialogue.

    A small model that lost the thread repeats its previous answer, fluently and with low
    entropy; nothing in the tokens' scores gives that away.
    """
    grams = _trigrams(text)
    if not grams or not earlier_answers:
        return 0.0
    said = set().union(*(_trigrams(answer) for answer in earlier_answers))
    return len(grams & said) / len(grams)


# Echo guard: an answer more than half made of an earlier answer is scaled by (1 - echo).
ECHO_LIMIT = 0.5


def degenerate(parts: Mapping[str, float]) -> bool:
    """Whether the loop or the echo guard tripped on an answer's estimator values: such an
    answer is escalated where the policy escalates, and never fed back into later prompts."""
    return parts.get("repetition", 0.0) > LOOP_REPETITION or parts.get("echo", 0.0) > ECHO_LIMIT


def degenerate_text(text: str, earlier_answers: Sequence[str] = ()) -> bool:
    """:func:`degenerate` from the answer's text alone (the guards need no token scores)."""
    return degenerate({"repetition": repetition((), (), text), "echo": echo(text, earlier_answers)})


def confidence(
    logprobs: Sequence[float],
    entropies: Sequence[float],
    text: str,
    earlier_answers: Sequence[str] = (),
) -> tuple[float, dict[str, float]]:
    """The combined confidence in [0, 1] and every estimator's value.

    The confidence is the estimated probability that this answer is better than the median
    local answer (M4A1's quality scores), from the estimators by :data:`COMBINATION`.
    An empty answer has confidence 0. With ``earlier_answers`` (the dialogue's previous
    replies), an answer that mostly repeats one of them is scaled down too (:func:`echo`).
    """
    parts = {name: round(fn(logprobs, entropies, text), 4) for name, fn in ESTIMATORS.items()}
    if not logprobs or not text.strip():
        return 0.0, parts
    combined = combine(parts)
    if parts["repetition"] > LOOP_REPETITION:
        combined *= 1.0 - parts["repetition"]
    if earlier_answers:
        parts["echo"] = round(echo(text, earlier_answers), 4)
        if parts["echo"] > ECHO_LIMIT:
            combined *= 1.0 - parts["echo"]
    return round(combined, 4), parts
