"""The confidence measurement on synthetic scored turns: orientation, refit, cache."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tmo_graph.confidence import combine
from tmo_graph.errors import TmoGraphError
from tmo_graph.sim.confidence_eval import (
    ScoredTurn,
    evaluate_estimators,
    fit_combination,
    load_scored,
    save_scored,
)


def synthetic_turns(n_dialogues: int = 60) -> list[ScoredTurn]:
    """Answers whose quality follows the model's certainty, with noise."""
    rng = random.Random(4)
    turns = []
    for d in range(n_dialogues):
        for _ in range(3):
            certainty = rng.uniform(-3.0, -0.1)
            score = min(max((certainty + 3) / 3 + rng.gauss(0, 0.15), 0.0), 1.0)
            n = rng.randint(5, 30)
            lps = [certainty + rng.gauss(0, 0.3) for _ in range(n)]
            words = " ".join(f"word{rng.randint(0, 50)}" for _ in range(n))
            turns.append(ScoredTurn(f"d{d}", score, words, lps, [-c for c in lps]))
    return turns


def test_estimators_are_oriented_and_the_refit_predicts_quality() -> None:
    result = evaluate_estimators(synthetic_turns(), seed=1)
    rows = result["estimators"]
    assert rows["mean_logprob"]["direction"] == "higher is better"
    assert rows["mean_entropy"]["direction"] == "lower is better"
    assert rows["mean_logprob"]["auroc"] > 0.8
    assert rows["refit now (logistic, train part)"]["auroc"] > 0.8
    assert result["turns"]["train"] + result["turns"]["test"] == 180
    refit = result["refit"]
    assert refit["features"][0] == "mean_entropy" and refit["weights"][0] < 0


def test_refit_combination_is_what_combine_reads() -> None:
    turns = synthetic_turns(20)
    fitted = fit_combination(turns, median=0.5)
    low = combine(turns[0].features | {"mean_entropy": 3.0}, fitted)
    high = combine(turns[0].features | {"mean_entropy": 0.1}, fitted)
    assert 0.0 <= low < high <= 1.0


def test_scored_turns_round_trip_and_bad_cache(tmp_path: Path) -> None:
    turns = synthetic_turns(2)
    path = tmp_path / "scored.json"
    save_scored(turns, path)
    assert load_scored(path) == turns
    path.write_text('[{"episode": 1}]')
    with pytest.raises(TmoGraphError, match="not a file of scored turns"):
        load_scored(path)
