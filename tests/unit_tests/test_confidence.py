import math
import random

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding

from tmo_graph.errors import TmoGraphError
from tmo_graph.eval.agreement import sampling_agreement
from tmo_graph.policy.confidence import (
    COMBINATION,
    ESTIMATORS,
    combine,
    confidence,
    quantile_logprob,
)

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


ENTROPIES = [4.0, 3.0, 2.4, 2.0, 1.8, 1.6, 1.2, 0.8, 0.4, 0.1]
REFUSING = "Sorry, I can't say how long to boil the eggs for you right now."


def monotone_in_what_the_rule_reads() -> bool:
    """Does the combined confidence fall as mean entropy rises, and does refusing lower it?

    Strictly, at every step of ``ENTROPIES``, with or without a refusal, whatever the
    log-probs (the rule does not read them; a real model's log-probs fall as entropy rises).
    """
    for logprob in (-2.5, -0.6, -0.05):
        answered = [confidence([logprob] * 10, [h] * 10, FLUENT)[0] for h in ENTROPIES]
        refused = [confidence([logprob] * 10, [h] * 10, REFUSING)[0] for h in ENTROPIES]
        for values in (answered, refused):
            if any(low >= high for low, high in zip(values, values[1:], strict=False)):
                return False
        if any(r >= a for r, a in zip(refused, answered, strict=True)):
            return False
    return True


def test_confidence_is_monotone_in_entropy_and_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ESTIMATORS["refusal"]([], [], REFUSING) == 1.0  # the refusal case does refuse
    assert ESTIMATORS["refusal"]([], [], FLUENT) == 0.0
    assert ESTIMATORS["repetition"]([], [], REFUSING) == 0.0  # no loop guard involved
    assert monotone_in_what_the_rule_reads()
    # The check can fail: a rule rewarding entropy, or ignoring refusals, is caught.
    weights = list(COMBINATION["weights"])
    entropy, refusal = (COMBINATION["features"].index(n) for n in ("mean_entropy", "refusal"))
    for broken in (-1.0, 0.0):
        wrong = list(weights)
        wrong[entropy] = broken * weights[entropy]
        monkeypatch.setitem(COMBINATION, "weights", wrong)
        assert not monotone_in_what_the_rule_reads(), wrong
    wrong = list(weights)
    wrong[refusal] = 0.0
    monkeypatch.setitem(COMBINATION, "weights", wrong)
    assert not monotone_in_what_the_rule_reads(), wrong


def test_refusal_markers_include_deferrals() -> None:
    for text in (
        "As an AI language model, I have no access to your calendar.",
        "I\u2019m not able to see the camera right now.",
        "I cannot tell from here.",
    ):
        assert ESTIMATORS["refusal"]([-0.2], [0.5], text) == 1.0, text
    assert ESTIMATORS["refusal"]([-0.2], [0.5], "The oven is at 180 degrees.") == 0.0


def test_confidence_stays_in_the_unit_interval() -> None:
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(1, 60)
        logprobs = [-rng.expovariate(rng.uniform(0.2, 5.0)) for _ in range(n)]
        entropies = [rng.uniform(0.0, 8.0) for _ in range(n)]
        words = rng.choices(["sorry", "the", "eggs", "boil", "as an AI", "now", "ok"], k=n)
        value, parts = confidence(logprobs, entropies, " ".join(words))
        assert 0.0 <= value <= 1.0 and set(parts) == set(ESTIMATORS)
    assert 0.0 <= confidence([-1e9] * 3, [1e9] * 3, "x y z")[0] <= 1.0
    assert 0.0 <= confidence([0.0] * 3, [0.0] * 3, "x y z")[0] <= 1.0


def test_a_fluent_loop_is_not_trusted() -> None:
    calm = [-0.1] * 30, [0.6] * 30
    looping = " ".join(["turn the lights on"] * 8)
    value, parts = confidence(*calm, looping)
    assert parts["repetition"] > 0.5 and value < 0.5 < confidence(*calm, FLUENT)[0]


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


def test_quantile_logprob_spares_short_answers() -> None:
    # One unlikely token in a 4-token answer is what the minimum reports; the median is not.
    short = [-0.2, -0.3, -0.25, -6.0]
    assert quantile_logprob(short, [], "") == -0.25 and min(short) == -6.0
    # q = 1/sqrt(n) within [0.1, 0.5]: 9 tokens -> the third lowest (index 3 of 9).
    nine = [-float(i) for i in range(9)]
    assert quantile_logprob(nine, [], "") == -5.0
    # Never above the median, never below the minimum; the order of tokens does not matter.
    rng = random.Random(3)
    for n in (1, 2, 5, 17, 64, 400):
        lps = [-rng.expovariate(1.0) for _ in range(n)]
        value = quantile_logprob(lps, [], "")
        assert min(lps) <= value <= sorted(lps)[n // 2]
        assert quantile_logprob(list(reversed(lps)), [], "") == value


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
    """A fake local backend: scripted samples, or seed-driven guesses when none are given."""

    def __init__(self, samples: list[str] | None = None) -> None:
        self.samples = samples
        self.calls: list[tuple[int, int, int]] = []

    def sample(
        self,
        messages: list[dict[str, str]],
        n: int,
        temperature: float = 0.8,
        seed: int = 0,
        max_new_tokens: int = 48,
    ) -> list[str]:
        self.calls.append((n, seed, max_new_tokens))
        if self.samples is not None:
            return self.samples[:n]
        rng = random.Random(seed)
        return [f"maybe {rng.randint(0, 10**6)} minutes" for _ in range(n)]


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


def test_sampling_agreement_ranks_a_sure_backend_above_a_guessing_one() -> None:
    embeddings = DeterministicFakeEmbedding(size=64)
    messages = [{"role": "user", "content": "How long do I boil an egg?"}]
    sure, guessing = ScriptedSampler([FLUENT] * 4), ScriptedSampler()
    high = sampling_agreement(sure, messages, FLUENT, embeddings, k=4, seed=5)
    low = sampling_agreement(guessing, messages, FLUENT, embeddings, k=4, seed=5)
    assert high == pytest.approx(1.0) and 0.0 <= low < high
    assert sure.calls == [(4, 5, 48)]  # k samples in one call, short, with the given seed
    assert low == sampling_agreement(guessing, messages, FLUENT, embeddings, k=4, seed=5)


def test_an_answer_echoing_an_earlier_one_is_not_trusted() -> None:
    calm = [-0.1] * 12, [0.6] * 12
    earlier = ["I'm so glad you're having dinner tonight, I'm Sam and I will cook."]
    echoed = "I'm so glad you're having dinner tonight, I'm Sam and I will cook."
    alone, _ = confidence(*calm, echoed)
    value, parts = confidence(*calm, echoed, earlier)
    assert parts["echo"] == 1.0 and value == 0.0 < alone
    fresh, parts = confidence(*calm, FLUENT, earlier)
    assert parts["echo"] == 0.0 and fresh == confidence(*calm, FLUENT)[0]
