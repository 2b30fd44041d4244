import math

import pytest

from tmo_graph.confidence import ESTIMATORS, confidence


def test_fluent_answer_is_confident() -> None:
    value, parts = confidence([-0.1, -0.2, -0.3], [0.5, 0.5, 0.5], "Boil it for nine minutes.")
    assert value == pytest.approx(math.exp(-0.2), abs=1e-3)
    assert parts["refusal"] == 0 and parts["repetition"] == 0


def test_refusal_halves_and_loops_shrink_confidence() -> None:
    sure = [-0.1] * 8
    refused, _ = confidence(sure, [0.1] * 8, "Sorry, I can't do that.")
    assert refused == pytest.approx(0.5 * math.exp(-0.1), abs=1e-3)
    loop = "I am glad you are here. " * 4
    looping, parts = confidence(sure, [0.1] * 8, loop)
    assert parts["repetition"] > 0.5 and looping < 0.5 * math.exp(-0.1)


def test_empty_answer_has_zero_confidence() -> None:
    assert confidence([], [], "")[0] == 0.0


def test_every_estimator_has_the_same_signature() -> None:
    for fn in ESTIMATORS.values():
        assert isinstance(fn([-0.5, -1.0], [1.0, 2.0], "an answer text here"), float)
