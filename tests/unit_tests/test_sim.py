"""The M4A1 simulator: loader checks, actions, observations, and parity with the paper's code."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.unit_tests.test_sim_data import M4A1, needs_m4a1
from tests.unit_tests.test_sim_parity import REFERENCE
from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.observation import (
    ObservationSpec,
    TurnFeatures,
    action_views,
    build_observation,
    n_actions,
    views_action,
)
from tmo_graph.policy.world import SimSettings
from tmo_graph.sim.bench import parse_seeds, run_benchmark
from tmo_graph.sim.data import load_m4a1


@needs_m4a1
def test_benchmark_runner_reproduces_the_published_baselines() -> None:
    """End to end through run_benchmark (re-seeding per method as each published run does)."""
    result = run_benchmark(
        load_m4a1(M4A1), [9139, 1355, 7826], ["local", "cloud", "random"], SimSettings()
    )
    for (method, seed), expected in REFERENCE.items():
        got = result["methods"][method]["per_seed"][str(seed)]
        keys = ("reward", "response", "association")
        assert [got[k] for k in keys] == pytest.approx(expected[:3], abs=1e-9)
        assert got["latency_s"] == pytest.approx(expected[3], abs=1e-6)
        assert got["usage_usd"] == pytest.approx(expected[4], abs=1e-8)
        assert got["overshoot_latency_s"] == pytest.approx(expected[5], abs=1e-6)
        assert got["overshoot_usage_usd"] == pytest.approx(expected[6], abs=1e-8)
        mix = got["actions"]
        assert (mix["local"], mix["cloud_text"], mix["cloud_views"]) == expected[7]
    assert result["methods"]["Local"]["mean"]["reward"] == pytest.approx(0.9267, abs=1e-4)


def test_actions_enumerate_view_subsets_by_size_then_order() -> None:
    assert n_actions(3) == 9
    assert [action_views(a, 3) for a in range(9)] == [
        (), (), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)
    ]  # fmt: skip
    assert all(views_action(action_views(a, 4), 4) == a for a in range(2, n_actions(4)))
    with pytest.raises(TmoGraphError, match="out of range"):
        action_views(9, 3)


def test_observation_stacks_the_window_and_pads_with_minus_one() -> None:
    spec = ObservationSpec(n_views=3, task_names=("a", "b"), time_span=3, with_budgets=True)
    history = [TurnFeatures(1, (0, 2)), TurnFeatures(0)]
    obs = build_observation(spec, history, [1, 0, 1], budget_left=(12.5, 0.01))
    assert obs.tolist() == pytest.approx(
        [-1, 0, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 1, 12.5, 0.01], abs=1e-6
    )
    first = build_observation(spec, [], [0], budget_left=(30, 0.05))
    assert first.tolist()[:10] == [-1] * 10 and first.shape == (spec.size,)
    assert ObservationSpec.from_dict(spec.to_dict()) == spec


def _episode(turns: int, views: int, tasks: list[str], rng: random.Random) -> dict[str, Any]:
    interactions = []
    for t in range(turns):
        action = rng.choice([0, 1])
        chosen = sorted(rng.sample(range(views), rng.randint(1, views))) if action else None
        interactions.append(
            {
                "question": f"q{t}",
                "task_cat": rng.choice(tasks),
                "action": action,
                "image_index": chosen,
                "answer": "fine" if rng.random() < 0.9 else "sorry, no",
                "score": round(rng.uniform(0, 3), 2),
            }
        )
    scores = [[round(rng.uniform(0.1, 0.3), 3) for _ in range(views)] for _ in range(turns)]
    return {"id": rng.randint(0, 10**6), "interactions": interactions, "association_score": scores}


def test_other_views_tasks_and_lengths_run_through_the_benchmark(tmp_path: Path) -> None:
    rng = random.Random(0)
    tasks = ["t1", "t2", "t3", "t4", "t5"]
    data = [_episode(rng.randint(2, 6), 4, tasks, rng) for _ in range(40)]
    path = tmp_path / "gen.json"
    path.write_text(json.dumps(data))
    dataset = load_m4a1(path)
    assert dataset.n_views == 4 and len(dataset.task_names) == 5
    settings = SimSettings(network="4G", latency_budget_s=40, usage_budget_usd=0.03, time_span=4)
    result = run_benchmark(dataset, [1, 2], ["local", "cloud", "random"], settings)
    cloud = result["methods"]["Cloud"]["mean"]
    assert cloud["actions"]["cloud_views"] > 0 and cloud["latency_s"] > 0
    # 4G uploads are slow: random cloud actions overdraw a 40 s budget in some dialogues.
    assert cloud["over_budget_share"] > 0
    assert result["methods"]["Local"]["mean"]["over_budget_share"] == 0


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d[1]["interactions"][0].pop("task_cat"),
            r"episode 1 .*interactions\[0\].task_cat",
        ),
        (lambda d: d[2]["interactions"][1].update(action=2), r"episode 2 .*action.* must be 0"),
        (lambda d: d[0]["association_score"].pop(), r"episode 0 .*association_score"),
        (lambda d: d[3]["interactions"][0].update(image_index=[7]), r"episode 3 .*image_index"),
        (lambda d: d[0]["interactions"][0].update(score="high"), r"episode 0 .*score"),
    ],
)
def test_broken_files_name_the_episode_and_field(tmp_path: Path, mutate: Any, message: str) -> None:
    rng = random.Random(1)
    data = [_episode(3, 3, ["a", "b"], rng) for _ in range(5)]
    for episode in data:  # fixed shapes, so each mutation breaks exactly one thing
        episode["interactions"][1]["action"] = 0
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TmoGraphError, match=message):
        load_m4a1(path)


def test_seeds_option() -> None:
    assert parse_seeds("3") == [9139, 1355, 7826]
    assert parse_seeds("9139,1355") == [9139, 1355]
    assert len(set(parse_seeds("5"))) == 5
    assert parse_seeds("9139,") == [9139]
    with pytest.raises(TmoGraphError):
        parse_seeds("many")
    with pytest.raises(TmoGraphError, match=r"'--seeds 9139,'"):
        parse_seeds("9139")  # one seed meant, not 9139 runs


def test_training_env_steps_and_zeroes_overdrawn_steps() -> None:
    from tmo_graph.policy.knn import ResponseModel
    from tmo_graph.policy.world import World
    from tmo_graph.sim.gym_env import M4A1Env

    rng = random.Random(3)
    path_data = [_episode(4, 3, ["a", "b"], rng) for _ in range(10)]
    from tmo_graph.sim.data import parse_episode

    episodes = [parse_episode(e, i, 3) for i, e in enumerate(path_data)]
    spec = ObservationSpec(n_views=3, task_names=("a", "b"), with_budgets=True)
    knn_spec = ObservationSpec(n_views=3, task_names=("a", "b"))
    world = World(spec, SimSettings(), ResponseModel(knn_spec, episodes))
    env = M4A1Env(world, episodes)
    random.seed(0)
    np.random.seed(0)
    obs, _ = env.reset()
    assert obs.shape == (spec.size,) and env.observation_space.contains(obs)
    total = 0.0
    done = False
    while not done:  # always the most expensive action: the sampled budget runs out
        obs, reward, done, _, _ = env.step(8)
        total += reward
    assert obs.tolist() == [-1.0] * spec.size
    assert env._left[0] < 0 or env._left[1] < 0


def _generated_split(tmp_path: Path, seed: int, dialogues: int) -> tuple[Any, list[Any], list[Any]]:
    """A generated 3-view, 3-task file of 2-5 turn dialogues, loaded and split 80/20."""
    from tmo_graph.sim.data import paper_split

    rng = random.Random(seed)
    data = [_episode(rng.randint(2, 5), 3, ["a", "b", "c"], rng) for _ in range(dialogues)]
    path = tmp_path / "gen.json"
    path.write_text(json.dumps(data))
    dataset = load_m4a1(path)
    train, test = paper_split(dataset.episodes, 1)
    return dataset, train, test


def test_own_planner_never_overdraws_a_tight_budget(tmp_path: Path) -> None:
    from tmo_graph.policy.knn import ResponseModel
    from tmo_graph.policy.observation import ObservationSpec as Spec
    from tmo_graph.policy.planner import LookaheadPlanner
    from tmo_graph.policy.world import World
    from tmo_graph.sim.evaluate import evaluate

    dataset, train, test = _generated_split(tmp_path, seed=2, dialogues=50)
    # 12 s and 2 cents for up to five turns: two or three cloud calls at most.
    settings = SimSettings(latency_budget_s=12.0, usage_budget_usd=0.02)
    spec = Spec(dataset.n_views, dataset.task_names, with_budgets=True)
    planner = LookaheadPlanner.fit(train, spec, settings, depth=1)
    judge = World(spec, settings, ResponseModel(Spec(3, dataset.task_names), train))
    result = evaluate(judge, test, planner)
    assert result["over_budget_share"] == 0.0
    assert result["actions"]["cloud_views"] + result["actions"]["cloud_text"] > 0
    greedy = LookaheadPlanner.fit(train, spec, settings, depth=0)
    assert result["reward"] >= evaluate(judge, test, greedy)["reward"] - 0.05


def test_planner_for_a_held_out_judge_plans_with_subset_models(tmp_path: Path) -> None:
    from tmo_graph.policy.knn import ResponseModel, SubsampleEnsemble
    from tmo_graph.policy.observation import ObservationSpec as Spec
    from tmo_graph.policy.observation import TurnFeatures
    from tmo_graph.policy.planner import LookaheadPlanner
    from tmo_graph.policy.world import World
    from tmo_graph.sim.evaluate import evaluate

    dataset, train, test = _generated_split(tmp_path, seed=3, dialogues=40)
    knn_spec = Spec(3, dataset.task_names)
    ensemble = SubsampleEnsemble(knn_spec, train, size=len(test), members=4)
    # The ensemble's score is the mean of its members', each fit on len(test) dialogues.
    state = [-1.0] * knn_spec.size
    state[-1] = 0.0
    action = TurnFeatures(1, (0,))
    members = [m.score(state, action) for m in ensemble.models]
    assert ensemble.score(state, action) == pytest.approx(float(np.mean(members)))
    assert all(len(m.pairs) < sum(len(e.turns) for e in train) for m in ensemble.models)

    settings = SimSettings(latency_budget_s=12.0, usage_budget_usd=0.02)
    spec = Spec(dataset.n_views, dataset.task_names, with_budgets=True)
    planner = LookaheadPlanner.fit(train, spec, settings, judge_dialogues=len(test))
    assert isinstance(planner.world.response, SubsampleEnsemble)
    judge = World(spec, settings, ResponseModel(knn_spec, test))
    assert evaluate(judge, test, planner)["over_budget_share"] == 0.0
    # The paper's protocol (or a judge as large as the training set) keeps the one model.
    same = LookaheadPlanner.fit(train, spec, settings, judge_dialogues=len(train))
    assert isinstance(same.world.response, ResponseModel)
    with pytest.raises(TmoGraphError, match="cannot be drawn"):
        SubsampleEnsemble(knn_spec, train, size=0)
