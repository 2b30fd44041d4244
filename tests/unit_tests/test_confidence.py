import math

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding

from tmo_graph.agreement import sampling_agreement
from tmo_graph.confidence import (
    COMBINATION,
    ESTIMATORS,
    combine,
    confidence,
    quantile_logprob,
)
from tmo_graph.errors import TmoGraphError

FLUENT = "Boil the eggs for nine minutes, then cool them in cold water."


def test_confidence_rises_as_token_entropy_falls() -> None:
    values = [confidence([-0.5] * 12, [h] * 12, FLUENT)[0] for h in (3.0, 2.2, 1.6, 0.8)]
    assert values == sorted(values) and values[-1] - values[0] > 0.2
    assert all(0.0 <= v <= 1.0 for v in values)


def test_uncertain_tokens_lower_confidence() -> None:
    calm, _ = confidence([-0.3] * 12, [0.5] * 12, FLUENT)
    unsure, _ = confidence([-0.3] * 12, [4.0] * 12, FLUENT)  # same log-probs, high entropy
    assert unsure < calm


def test_refusal_lowers_confidence() -> None:
    sure = [-0.2] * 8
    answered, _ = confidence(sure, [0.5] * 8, "The timer is set for ten minutes now.")
    refused, parts = confidence(sure, [0.5] * 8, "Sorry, as an AI I can't set timers.")
    assert parts["refusal"] == 1.0 and refused < answered


def test_empty_answer_has_zero_confidence() -> None:
    assert confidence([], [], "")[0] == 0.0
    assert confidence([-0.1], [0.1], "   ")[0] == 0.0


def test_quantile_logprob_adapts_to_length() -> None:
    assert quantile_logprob([-1.0, -2.0, -3.0, -4.0], [], "") == -2.0  # short: the median
    long_answer = [-0.1] * 99 + [-9.0]
    assert quantile_logprob(long_answer, [], "") == -0.1  # one rare token does not decide
    assert min(long_answer) == -9.0
    guessed_run = [-0.1] * 80 + [-3.0] * 20
    assert quantile_logprob(guessed_run, [], "") == -3.0  # a run of guesses does
    assert quantile_logprob([], [], "") == -math.inf


def test_combine_is_the_documented_logistic() -> None:
    combination = {
        "features": ["mean_logprob", "refusal"],
        "means": [-1.0, 0.0],
        "scales": [0.5, 1.0],
        "weights": [2.0, -1.0],
        "bias": 0.5,
    }
    z = 0.5 + 2.0 * (-0.5 + 1.0) / 0.5 - 1.0 * 1.0
    assert combine({"mean_logprob": -0.5, "refusal": 1.0}, combination) == pytest.approx(
        1 / (1 + math.exp(-z))
    )
    assert combine({"mean_logprob": -math.inf, "refusal": 0.0}, combination) == pytest.approx(0.0)
    assert set(COMBINATION["features"]) <= set(ESTIMATORS)


def test_every_estimator_has_the_same_signature() -> None:
    for fn in ESTIMATORS.values():
        assert isinstance(fn([-0.5, -1.0], [1.0, 2.0], "an answer text here"), float)


class ScriptedSampler:
    def __init__(self, samples: list[str]) -> None:
        self.samples = samples

    def sample(
        self,
        messages: list[dict[str, str]],
        n: int,
        temperature: float = 0.8,
        seed: int = 0,
        max_new_tokens: int = 48,
    ) -> list[str]:
        return self.samples[:n]


def test_sampling_agreement_is_high_when_samples_repeat_the_answer() -> None:
    embeddings = DeterministicFakeEmbedding(size=64)
    messages = [{"role": "user", "content": "How long do I boil an egg?"}]
    same = sampling_agreement(ScriptedSampler([FLUENT] * 3), messages, FLUENT, embeddings, k=3)
    assert same == pytest.approx(1.0)
    wandering = ScriptedSampler(["Seven minutes.", "Ask a chef.", "Twenty!"])
    assert sampling_agreement(wandering, messages, FLUENT, embeddings, k=3) < 0.5
    assert sampling_agreement(wandering, messages, "", embeddings) == 0.0
    with pytest.raises(TmoGraphError, match="k >= 1"):
        sampling_agreement(wandering, messages, FLUENT, embeddings, k=0)
