"""own-sim: the own planner given the simulator's response model, as the RL policies are
trained on it. Opt-in, labelled wherever it is printed, deterministic, inside its budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.unit_tests.test_sim_data import generated_dialogues, write
from tmo_graph.cli.app import app
from tmo_graph.cli.simulate import DEFAULT_METHOD_LIST, network_profile
from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.knn import ResponseModel
from tmo_graph.policy.observation import ObservationSpec, TurnFeatures, n_actions
from tmo_graph.policy.world import SimSettings
from tmo_graph.sim.bench import parse_methods, run_benchmark
from tmo_graph.sim.data import Dataset, load_m4a1, paper_split
from tmo_graph.sim.methods import DEFAULT_METHODS, METHOD_NAMES, METHOD_NOTES
from tmo_graph.sim.report import format_judges_table, format_table
from tmo_graph.sim.train import fit_sim_planner, train_policy

LABEL = "given the simulator's response model, as the RL policies are trained on it"
runner = CliRunner()


def _dataset(tmp_path: Path, n: int = 30, seed: int = 0) -> Dataset:
    return load_m4a1(
        write(tmp_path, generated_dialogues(n, n_views=3, n_tasks=4, n_turns=5, seed=seed))
    )


def _without_timings(result: dict[str, Any]) -> dict[str, Any]:
    """A benchmark result without its wall-clock fields (the only ones a rerun may change)."""
    rows = {
        name: {
            seed: {k: v for k, v in run.items() if k not in ("seconds", "train_seconds")}
            for seed, run in row["per_seed"].items()
        }
        for name, row in result["methods"].items()
    }
    return {"settings": result["settings"], "rows": rows}


def test_own_sim_is_registered_labelled_and_never_the_default() -> None:
    assert METHOD_NAMES["own-sim"] == "own-sim"
    assert "own-sim" not in DEFAULT_METHODS and "own" in DEFAULT_METHODS
    assert "own-sim" not in parse_methods(DEFAULT_METHOD_LIST)
    assert parse_methods("local,own-sim") == ["local", "own-sim"]
    assert LABEL in METHOD_NOTES["own-sim"]
    help_text = runner.invoke(app, ["bench", "m4a1", "--help"], env={"COLUMNS": "400"}).output
    assert "default: all but own-sim" in help_text
    # `train --algo` (what a deployment fits) does not offer it.
    result = runner.invoke(app, ["train", "--algo", "own-sim"])
    assert result.exit_code == 2 and "unknown --algo 'own-sim'" in result.stderr


def test_own_sim_plans_with_the_response_model_the_rl_policies_train_on(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    train, _ = paper_split(dataset.episodes, 9139)
    spec = ObservationSpec(dataset.n_views, dataset.task_names, with_budgets=True)
    knn_spec = ObservationSpec(dataset.n_views, dataset.task_names)
    planner = fit_sim_planner(train, spec, SimSettings())
    simulator = ResponseModel(knn_spec, train)  # what bench gives M4A1Env and the paper judge
    assert planner.name == "own-sim" and planner.info["response"] == "simulator"
    states = [
        [float(v) for v in (*[-1.0] * 5 * (t + 1), *[0.0, 0.0, 0.0, 0.0, 0.0] * (4 - t))]
        for t in range(5)
    ]
    states += [[float(t % 2), 1.0, 0.0, 1.0, float(t % 4)] * 5 for t in range(4)]
    for state in states:
        for action in range(n_actions(dataset.n_views)):
            features = TurnFeatures.from_action(action, dataset.n_views)
            assert planner.world.response.score(state, features) == simulator.score(state, features)
    with pytest.raises(TmoGraphError, match="no training dialogues"):
        fit_sim_planner([], spec, SimSettings())


def test_own_sim_is_deterministic_and_beats_local_on_its_own_model(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, 40)
    first = run_benchmark(dataset, [9139, 1355], ["local", "own-sim"], SimSettings())
    again = run_benchmark(dataset, [9139, 1355], ["local", "own-sim"], SimSettings())
    assert _without_timings(first) == _without_timings(again)
    row = first["methods"]["own-sim"]
    assert row["mean"]["over_budget_share"] == 0.0
    # Planning with the judge's model, it does better than never calling the cloud.
    assert row["mean"]["reward"] > first["methods"]["Local"]["mean"]["reward"]
    assert row["mean"]["actions"]["local"] < first["methods"]["Local"]["mean"]["actions"]["local"]
    assert row["per_seed"]["9139"]["planner"]["response"] == "simulator"
    table = format_table(first)
    assert table.splitlines()[-1] == METHOD_NOTES["own-sim"]
    without = run_benchmark(dataset, [9139], ["local"], SimSettings())
    assert METHOD_NOTES["own-sim"] not in format_table(without)


@pytest.mark.parametrize("network", ["Wired", "4G"])
def test_own_sim_never_overdraws_a_tight_budget(tmp_path: Path, network: str) -> None:
    dataset = _dataset(tmp_path, 40, seed=3)
    # Room for about one cloud call with views per dialogue on 4G, two on Wired.
    settings = SimSettings(network=network, latency_budget_s=20.0, usage_budget_usd=0.012)
    result = run_benchmark(dataset, [9139, 7826], ["cloud", "own-sim"], settings)
    own_sim, cloud = result["methods"]["own-sim"], result["methods"]["Cloud"]
    assert cloud["mean"]["over_budget_share"] > 0  # the budget binds: always-cloud overdraws
    for run in own_sim["per_seed"].values():
        assert run["over_budget_share"] == 0.0
        assert run["actions"]["cloud_views"] > 0  # and it still uses the cloud
        assert run["latency_s"] <= 20.0 and run["usage_usd"] <= 0.012


def test_own_sim_in_the_judge_battery_is_labelled(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, 40)
    result = run_benchmark(
        dataset,
        [9139],
        ["own-sim"],
        SimSettings(network="5G"),
        protocol="judges",
        judges=["knn:k=3", "loo"],
    )
    assert set(result["battery_mean"]) == {"Local", "own-sim"}
    assert format_judges_table(result).splitlines()[-1] == METHOD_NOTES["own-sim"]


def test_the_network_is_matched_without_regard_to_case() -> None:
    assert network_profile("4g") == "4G" and network_profile("5G") == "5G"
    assert network_profile("wired") == "Wired"
    with pytest.raises(TmoGraphError, match="unknown network profile '3g'"):
        network_profile("3g")
    result = runner.invoke(app, ["bench", "m4a1", "--network", "3g", "--data", "none.json"])
    assert result.exit_code == 2 and "unknown network profile '3g'" in result.stderr


def test_train_policy_gives_own_sim_as_the_own_planner(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    train, _ = paper_split(dataset.episodes, 9139)
    spec = ObservationSpec(dataset.n_views, dataset.task_names, with_budgets=True)
    policy = train_policy("own-sim", train, spec, SimSettings())
    assert policy.algorithm == "own"  # it reads the turn's association scores, as own does
    assert policy.model.name == "own-sim"
