"""The judge battery: spec parsing, judges that never saw what they judge, paired errors, JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.unit_tests.test_sim_data import generated_dialogues
from tmo_graph.cli.app import app
from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.knn import ResponseModel, response_rows
from tmo_graph.policy.observation import ObservationSpec, TurnFeatures
from tmo_graph.policy.world import SimSettings
from tmo_graph.sim.bench import run_benchmark
from tmo_graph.sim.data import Dataset, load_m4a1, paper_split
from tmo_graph.sim.judges import (
    DEFAULT_BATTERY,
    MeanScorer,
    RegressorScorer,
    build_judge,
    paired_difference,
    parse_judge,
    parse_judges,
)


def _dataset(tmp_path: Path, n_episodes: int = 40, marked: bool = False) -> Dataset:
    """Generated 3-view dialogues; ``marked``: every label of episode e is 100 + e."""
    data = generated_dialogues(n_episodes=n_episodes, n_views=3, n_tasks=3, n_turns=4, seed=5)
    if marked:
        for e, episode in enumerate(data):
            for turn in episode["interactions"]:
                turn["answer"], turn["score"] = "Sure.", 100.0 + e
    path = tmp_path / "gen.json"
    path.write_text(json.dumps(data))
    return load_m4a1(path)


def test_specs_parse_with_their_defaults() -> None:
    knn = parse_judge("knn:k=3")
    assert (knn.kind, knn.get("k"), knn.get("weights")) == ("knn", "3", "distance")
    assert parse_judge("knn:k=10,weights=uniform").get("weights") == "uniform"
    cross = parse_judge("cross:folds=2,repeats=10")
    assert (cross.get("folds"), cross.get("repeats"), cross.get("k")) == ("2", "10", "5")
    assert parse_judge("loo").get("k") == "5"
    assert parse_judge("sklearn:linear_model.Ridge").get("class") == "linear_model.Ridge"
    assert [j.text for j in parse_judges(None)] == list(DEFAULT_BATTERY)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("knn:k=0", "k=0 is not a whole number >= 1"),
        ("knn:k=five", "k=five is not a whole number"),
        ("knn:n=3", "'n=3' is not a setting of knn"),
        ("knn:k=3,weights=gaussian", "weights=gaussian is not a KNN weighting"),
        ("cross:folds=1,repeats=3", "folds=1 is not a whole number >= 2"),
        ("cross:folds=2,repeats=0", "repeats=0 is not a whole number >= 1"),
        ("loo:k", "'k' is not a setting of loo"),
        ("forest", "unknown judge 'forest'"),
        ("sklearn:Ridge", "does not name a scikit-learn class"),
        ("sklearn:linear_models.Ridge", "there is no module sklearn.linear_models"),
        ("sklearn:cluster.KMeans", "is not a regressor"),
        ("sklearn:linear_model.Nothing", "is not a regressor"),
        ("sklearn:ensemble.StackingRegressor", "cannot be made with default settings"),
    ],
)
def test_bad_specs_say_what_was_wrong(text: str, message: str) -> None:
    with pytest.raises(TmoGraphError, match=message) as error:
        parse_judge(text)
    assert error.value.fix  # and how to fix it


def test_a_judge_given_twice_is_refused() -> None:
    with pytest.raises(TmoGraphError, match="given twice"):
        parse_judges(["loo", "knn:k=3", "loo"])


@pytest.mark.parametrize("text", ["loo", "cross:folds=2,repeats=3", "cross:folds=4,repeats=2"])
def test_cross_and_loo_judges_never_saw_the_dialogue_they_judge(tmp_path: Path, text: str) -> None:
    dataset = _dataset(tmp_path, marked=True)
    _, test = paper_split(dataset.episodes, 1)
    knn_spec = ObservationSpec(3, dataset.task_names)
    judge = build_judge(parse_judge(text), knn_spec, test, seed=1)
    marks = {float(e.turns[0].label) for e in test}
    for i, episode in enumerate(test):
        scorer = judge(i)
        models = scorer.scorers if isinstance(scorer, MeanScorer) else [scorer]
        assert isinstance(models[0], ResponseModel)
        seen = {float(v) for m in models for v in m.labels}  # type: ignore[attr-defined]
        assert episode.turns[0].label not in seen
        assert seen < marks  # only test dialogues, never a training one
    if text.startswith("cross"):  # every repeat judges every dialogue once
        repeats = int(parse_judge(text).get("repeats"))
        assert all(len(judge(i).scorers) == repeats for i in range(len(test)))  # type: ignore[attr-defined]
        assert len({id(m) for i in range(len(test)) for m in judge(i).scorers}) == repeats * int(  # type: ignore[attr-defined]
            parse_judge(text).get("folds")
        )


def test_knn_judges_fit_every_test_row_and_uniform_weights_average(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    _, test = paper_split(dataset.episodes, 1)
    knn_spec = ObservationSpec(3, dataset.task_names)
    judge = build_judge(parse_judge("knn:k=3,weights=uniform"), knn_spec, test, seed=1)
    model = judge(0)
    assert model is judge(len(test) - 1) and isinstance(model, ResponseModel)
    assert len(model.pairs) == sum(len(e.turns) for e in test)
    state = [-1.0] * knn_spec.size
    state[-1] = 1.0
    action = TurnFeatures(1, (0, 2))
    _, indices = model._nn.kneighbors([state + [1.0, 1.0, 0.0, 1.0]])
    assert model.score(state, action) == pytest.approx(float(model.labels[indices].mean()))


def test_an_sklearn_judge_is_the_regressor_fit_on_the_knn_rows(tmp_path: Path) -> None:
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import Ridge

    dataset = _dataset(tmp_path)
    _, test = paper_split(dataset.episodes, 1)
    knn_spec = ObservationSpec(3, dataset.task_names)
    pairs, labels = response_rows(knn_spec, test)
    state = [-1.0] * knn_spec.size
    state[-1] = 2.0
    row = [state + [1.0, 0.0, 1.0, 0.0]]
    ridge = build_judge(parse_judge("sklearn:linear_model.Ridge"), knn_spec, test, seed=1)(0)
    expected = float(Ridge().fit(pairs, labels).predict(row)[0])
    assert ridge.score(state, TurnFeatures(1, (1,))) == pytest.approx(expected)
    forest = RegressorScorer(knn_spec, test, RandomForestRegressor)
    assert forest.estimator.get_params()["random_state"] == 0
    again = RandomForestRegressor(random_state=0).fit(pairs, labels)
    assert forest.score(state, TurnFeatures(1, (1,))) == pytest.approx(again.predict(row)[0])


def test_paired_difference_and_its_standard_error() -> None:
    got = paired_difference([1.0, 2.0, 4.0, 3.0], [0.5, 2.0, 3.0, 3.5])
    diffs = np.array([0.5, 0.0, 1.0, -0.5])
    assert got["mean"] == pytest.approx(0.25)
    assert got["se"] == pytest.approx(diffs.std(ddof=1) / 2)  # sample std / sqrt(4)
    assert got["n"] == 4
    with pytest.raises(TmoGraphError, match="paired rewards of 2 and 3"):
        paired_difference([1.0, 2.0], [1.0, 2.0, 3.0])


def test_the_battery_json_and_its_agreement_with_the_held_out_protocol(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    settings = SimSettings()
    judges = ["knn:k=5", "loo", "sklearn:linear_model.Ridge"]
    result = run_benchmark(
        dataset, [1, 2], ["cloud", "random"], settings, protocol="judges", judges=judges
    )
    json.dumps(result, allow_nan=False)  # what --json writes
    assert set(result) >= {"judges", "battery_mean"} and list(result["judges"]) == judges
    for block in result["judges"].values():
        # Local is always run: the reference of the paired differences.
        assert list(block["methods"]) == ["Local", "Cloud", "Random"]
        for row in block["methods"].values():
            assert set(row) >= {"mean", "per_seed", "vs_local"} and list(row["per_seed"]) == [
                "1",
                "2",
            ]
            # 2 seeds x 8 test dialogues, paired one to one.
            assert row["vs_local"]["n"] == 16
        assert block["methods"]["Local"]["vs_local"] == {"mean": 0.0, "se": 0.0, "n": 16}
        cloud = block["methods"]["Cloud"]
        local_rewards = [
            r for run in block["methods"]["Local"]["per_seed"].values()
            for r in run["dialogue_rewards"]
        ]  # fmt: skip
        cloud_rewards = [r for run in cloud["per_seed"].values() for r in run["dialogue_rewards"]]
        assert cloud["vs_local"]["mean"] == pytest.approx(
            np.mean(cloud_rewards) - np.mean(local_rewards)
        )
    for name, mean in result["battery_mean"].items():
        per_judge = [result["judges"][j]["methods"][name]["mean"]["reward"] for j in judges]
        assert mean == pytest.approx(float(np.mean(per_judge)))
    # The knn:k=5 judge is the held-out protocol's: the same rollouts score the same.
    heldout = run_benchmark(
        dataset, [1, 2], ["local", "cloud", "random"], settings, protocol="heldout"
    )
    for name, row in heldout["methods"].items():
        same = result["judges"]["knn:k=5"]["methods"][name]
        assert same["per_seed"]["1"]["reward"] == pytest.approx(row["per_seed"]["1"]["reward"])
        assert same["mean"]["reward"] == pytest.approx(row["mean"]["reward"])
    # Judges disagree: a leave-one-out judge is another model.
    loo = result["judges"]["loo"]["methods"]["Cloud"]["mean"]["reward"]
    assert not math.isclose(loo, heldout["methods"]["Cloud"]["mean"]["reward"])


def test_judges_only_with_the_battery(tmp_path: Path) -> None:
    with pytest.raises(TmoGraphError, match="--judge is for the judge battery"):
        run_benchmark(_dataset(tmp_path), [1], ["local"], SimSettings(), judges=["loo"])


def test_cli_battery_table_and_json(tmp_path: Path) -> None:
    dataset_file = tmp_path / "gen.json"
    _dataset(tmp_path)
    out = tmp_path / "judges.json"
    args = ["bench", "m4a1", "--data", str(dataset_file), "--protocol", "judges"]
    args += ["--seeds", "1", "--methods", "local,cloud", "--judge", "knn:k=3"]
    result = CliRunner().invoke(app, [*args, "--judge", "loo", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "knn:k=3" in result.stdout and "battery mean" in result.stdout
    data: dict[str, Any] = json.loads(out.read_text())
    assert set(data["judges"]) == {"knn:k=3", "loo"}
    assert set(data["battery_mean"]) == {"Local", "Cloud"}
    bad = CliRunner().invoke(app, [*args, "--judge", "knn:k=-1"])
    assert bad.exit_code == 2 and "k=-1 is not a whole number >= 1" in bad.stderr
    plot = CliRunner().invoke(app, [*args, "--plot", str(tmp_path / "x.png")])
    assert plot.exit_code == 2 and "--plot draws one judge's table" in plot.stderr
    paper = ["bench", "m4a1", "--data", str(dataset_file), "--seeds", "1", "--methods", "local"]
    stray = CliRunner().invoke(app, [*paper, "--judge", "loo"])
    assert stray.exit_code == 2 and "add --protocol judges" in stray.stderr
