"""The confidence measurement on synthetic scored turns: orientation, refit, cache."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import pytest

from tmo_graph.context import DEFAULT_SYSTEM_PROMPT
from tmo_graph.errors import TmoGraphError
from tmo_graph.eval import metrics
from tmo_graph.eval.estimators import (
    ScoredTurn,
    evaluate_estimators,
    fit_combination,
    load_scored,
    local_turn_prompts,
    save_scored,
)
from tmo_graph.policy.confidence import combine
from tmo_graph.sim.data import Dataset, Episode, Turn


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


def test_a_cache_scored_under_another_system_prompt_is_refused(tmp_path: Path) -> None:
    turns = synthetic_turns(2)
    path = tmp_path / "scored.json"
    save_scored(turns, path, system_prompt="You are a pirate.")
    assert load_scored(path, system_prompt="You are a pirate.") == turns
    with pytest.raises(TmoGraphError, match="scored after the system prompt 'You are a pirate.'"):
        load_scored(path)  # the default prompt: these token scores do not apply
    path.write_text(json.dumps([asdict(t) for t in turns]))  # the old, unlabelled format
    with pytest.raises(TmoGraphError, match="not a file of scored turns") as info:
        load_scored(path)
    assert info.value.fix and "score the turns again" in info.value.fix


def test_the_scored_dialogue_starts_with_the_default_system_prompt() -> None:
    dataset = Dataset(
        episodes=(
            Episode(
                "d0",
                (
                    Turn("Lights on?", "Query", 0, None, "Done.", 2.0),
                    Turn("And the fan?", "Query", 1, None, "Fan on.", 3.0),
                    Turn("Thanks!", "Query", 0, None, "Welcome.", 1.0),
                ),
                ((0.0,), (0.0,), (0.0,)),
            ),
        ),
        n_views=1,
        task_names=("Query",),
    )
    jobs = local_turn_prompts(dataset)
    assert [(j[0], j[2], j[3]) for j in jobs] == [("d0", "Done.", 2.0), ("d0", "Welcome.", 1.0)]
    history = jobs[1][1]
    assert history[0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    assert [m["content"] for m in history[1:]] == [
        "Lights on?",
        "Done.",
        "And the fan?",
        "Fan on.",
        "Thanks!",
    ]
    with pytest.raises(TmoGraphError, match="system prompt is empty"):
        local_turn_prompts(dataset, system_prompt="  ")


def test_one_auroc_and_one_spearman() -> None:
    assert metrics.auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert math.isnan(metrics.auroc([0.1, 0.4], [True, True]))  # one class: undefined
    assert metrics.spearman([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0]) == pytest.approx(0.8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SciPy would warn on constant input; we give NaN
        assert math.isnan(metrics.spearman([0.0, 0.0, 0.0], [1.0, 2.0, 3.0]))
        assert math.isnan(metrics.spearman([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))
    assert metrics.r2([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0
    for fn in (metrics.auroc, metrics.spearman, metrics.r2):
        with pytest.raises(TmoGraphError, match="one label per value"):
            fn([0.1, 0.2], [1.0])


def test_eval_imports_nothing_of_the_graph() -> None:
    """eval/ and models/gap may import sim, models, policy..., never the graph or LangGraph."""
    code = (
        "import sys\n"
        "import tmo_graph.eval.agreement, tmo_graph.eval.calibrate, tmo_graph.eval.estimators\n"
        "import tmo_graph.eval.gap_fit, tmo_graph.eval.metrics, tmo_graph.models.gap\n"
        "bad = ('langgraph', 'tmo_graph.graph', 'tmo_graph.nodes', 'tmo_graph.services',\n"
        "       'tmo_graph.prompts', 'tmo_graph.state')\n"
        "print(sorted(m for m in sys.modules if m.startswith(bad)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_cache_scored_with_other_weights_is_refused(tmp_path: Path) -> None:
    turns = synthetic_turns(2)
    path = tmp_path / "scored.json"
    save_scored(turns, path, precision="float32")
    assert load_scored(path, precision="float32") == turns
    with pytest.raises(TmoGraphError, match="scored with float32 weights, not int4") as info:
        load_scored(path, precision="int4")
    assert info.value.fix and "local.precision: float32" in info.value.fix
    unlabelled = json.loads(path.read_text())
    del unlabelled["precision"]  # files from before the setting: scored in float32
    path.write_text(json.dumps(unlabelled))
    assert load_scored(path, precision="float32") == turns
    with pytest.raises(TmoGraphError, match="float32 weights"):
        load_scored(path, precision="int4")
