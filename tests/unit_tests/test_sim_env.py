"""The simulated world and the gymnasium training environment, against the published env."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from tests.unit_tests.test_sim_data import M4A1, generated_dialogues, needs_m4a1
from tmo_graph.costs import profiles
from tmo_graph.policy.knn import ResponseModel, recorded_features
from tmo_graph.policy.observation import ObservationSpec, TurnFeatures, n_actions, window_state
from tmo_graph.policy.world import SimSettings, World
from tmo_graph.sim.data import Episode, load_m4a1, paper_split
from tmo_graph.sim.gym_env import M4A1Env

TASKS = tuple(f"task {i}" for i in range(5))

# The published M4A1_Env on M4A1, seed 9139's training split, after random.seed(0) and
# np.random.seed(0): 400 steps of action (3 i + i // 9) % 9, resetting when done.
# (sum of rewards, first three rewards, first three episodes' budgets, steps earning 0)
PUBLISHED_TRACES = {
    (False, "normal"): (343.9784418191676, [0.37333333333333335, 1.034598331543078, 0.8934352875307285], [], 0),  # noqa: E501
    (True, "normal"): (245.32560170690644, [0.37333333333333335, 1.034598331543078, 0.8934352875307285], [(27.73105239868164, 0.03876180946826935), (23.169239044189453, 0.059746187180280685), (28.332305908203125, 0.02305905893445015)], 127),  # noqa: E501
    (True, "uniform"): (204.77027644177403, [0.37333333333333335, 1.034598331543078, 0.8934352875307285], [(19.185163497924805, 0.048918962478637695), (21.065500259399414, 0.03727002814412117), (14.822956085205078, 0.044179171323776245)], 178),  # noqa: E501
    (True, "extreme_aware"): (214.34118067151005, [0.37333333333333335, 1.034598331543078, 0.8934352875307285], [(24.983928680419922, 0.04122903198003769), (14.822956085205078, 0.044179171323776245), (24.838603973388672, 0.02843303047120571)], 160),  # noqa: E501
}  # fmt: skip


def _episodes(tmp_path: Path) -> list[Episode]:
    path = tmp_path / "gen.json"
    path.write_text(json.dumps(generated_dialogues(n_episodes=30)))
    return list(load_m4a1(path).episodes)


def _world(episodes: list[Episode], budgets: bool, **settings: object) -> World:
    spec = ObservationSpec(n_views=4, task_names=TASKS, with_budgets=budgets)
    knn_spec = ObservationSpec(n_views=4, task_names=TASKS)
    return World(spec, SimSettings(**settings), ResponseModel(knn_spec, episodes))  # type: ignore[arg-type]


def _minmax(values: list[float]) -> list[float]:
    return [(v - min(values)) / (max(values) - min(values)) for v in values]


def test_reward_is_the_weighted_sum_of_normalised_terms(tmp_path: Path) -> None:
    episodes = _episodes(tmp_path)
    settings = {"network": "5G", "device": "Jetson Nano", "alpha": 0.7, "beta_usage": 0.5}
    world = _world(episodes, budgets=False, **settings)
    nano, net = profiles.device("Jetson Nano"), profiles.network("5G")
    latency = [profiles.local_time_s(nano)] + [profiles.cloud_time_s(net, k) for k in range(5)]
    usage = [profiles.local_cost_usd(nano)] + [profiles.cloud_cost_usd(k) for k in range(5)]
    scores = [0.21, 0.3, 0.18, 0.25]
    state = window_state(world.spec, [TurnFeatures(1, (1,))], [0, 3])
    per_action_assoc = [0.0, 0.0, 0.21, 0.3, 0.18, 0.25, 0.51, 0.39, 0.46, 0.48, 0.55, 0.43]
    for action in (0, 1, 2, 7, 16):
        outcome = world.outcome(state, action, scores)
        k = len(TurnFeatures.from_action(action, 4).views_used)
        cost_index = 0 if action == 0 else 1 + k
        assoc = [0.0, 0.0] + [sum(scores[v] for v in subset) for subset in world.subsets[1:]]
        assert assoc[:12] == pytest.approx(per_action_assoc)
        response = world.response.score(state, TurnFeatures.from_action(action, 4))
        expected = (
            0.7 * response
            + (1 / 3) * _minmax(assoc)[action]
            - (1 / 3) * _minmax(latency)[cost_index]
            - 0.5 * _minmax(usage)[cost_index]
        )
        assert outcome.reward == pytest.approx(expected, rel=1e-12)
        assert outcome.association == pytest.approx(assoc[action])
        assert (outcome.latency_s, outcome.usage_usd) == (latency[cost_index], usage[cost_index])


def test_training_env_follows_the_recorded_dialogue(tmp_path: Path) -> None:
    episodes = _episodes(tmp_path)
    world = _world(episodes, budgets=False)
    env = M4A1Env(world, episodes)
    assert env.action_space == gym.spaces.Discrete(n_actions(4)) == gym.spaces.Discrete(17)
    random.seed(3)
    obs, _ = env.reset()
    episode = env._episode
    features = recorded_features(episode)
    tasks = [world.spec.task_id(t.task) for t in episode.turns]
    for t in range(len(episode.turns)):
        # The next window is the recorded one whatever the policy did: the published env
        # trains on recorded trajectories and only scores the chosen action.
        assert obs.tolist() == window_state(world.spec, features[:t], tasks[: t + 1])
        assert env.observation_space.contains(obs)
        action = (5 * t) % 17
        expected = world.outcome(obs.tolist(), action, episode.association[t]).reward
        obs, reward, done, truncated, _ = env.step(np.int64(action))
        assert reward == pytest.approx(expected, rel=1e-12) and not truncated
        assert done == (t == len(episode.turns) - 1)
    assert obs.tolist() == [-1.0] * world.spec.size


def test_constrained_env_samples_budgets_and_zeroes_overdrawn_steps(tmp_path: Path) -> None:
    episodes = _episodes(tmp_path)
    for distribution in ("normal", "uniform", "extreme_aware"):
        world = _world(episodes, budgets=True, budget_distribution=distribution)
        (lat_lo, lat_hi), (use_lo, use_hi) = world.budget_range()
        assert lat_hi == pytest.approx(5 * profiles.cloud_time_s(profiles.network("Wired"), 4))
        assert use_lo == pytest.approx(5 * profiles.local_cost_usd(profiles.device("Jetson TX2")))
        env = M4A1Env(world, episodes)
        random.seed(1)
        np.random.seed(1)
        zeroed = 0
        for _ in range(20):
            obs, _ = env.reset()
            left = obs[-2:].astype(np.float64)
            assert lat_lo <= left[0] <= lat_hi and use_lo * 0.999 <= left[1] <= use_hi * 1.001
            done = False
            while not done:
                before = env._left
                obs, reward, done, _, _ = env.step(16)  # all four views: the dearest action
                latency, usage = world.cost(16)
                assert env._left == pytest.approx((before[0] - latency, before[1] - usage))
                if env._left[0] < 0 or env._left[1] < 0:
                    assert reward == 0.0
                    zeroed += 1
                else:
                    assert reward != 0.0
        assert zeroed > 0, distribution


def test_the_env_passes_the_stable_baselines3_checker(tmp_path: Path) -> None:
    from stable_baselines3.common.env_checker import check_env

    episodes = _episodes(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(M4A1Env(_world(episodes, budgets=True), episodes), warn=False)


@needs_m4a1
@pytest.mark.parametrize(("constrained", "distribution"), list(PUBLISHED_TRACES))
def test_training_env_equals_the_published_env_step_for_step(
    constrained: bool, distribution: str
) -> None:
    dataset = load_m4a1(M4A1)
    train, _ = paper_split(dataset.episodes, 9139)
    spec = ObservationSpec(3, dataset.task_names, with_budgets=constrained)
    knn = ResponseModel(ObservationSpec(3, dataset.task_names), train)
    settings = SimSettings(budget_distribution=distribution)  # type: ignore[arg-type]
    env = M4A1Env(World(spec, settings, knn), train)
    random.seed(0)
    np.random.seed(0)
    obs, _ = env.reset()
    budgets = [tuple(obs[-2:].tolist())] if constrained else []
    rewards = []
    for i in range(400):
        obs, reward, done, _, _ = env.step((3 * i + i // 9) % 9)
        rewards.append(reward)
        if done:
            obs, _ = env.reset()
            if constrained:
                budgets.append(tuple(obs[-2:].tolist()))
    total, first, first_budgets, zeroed = PUBLISHED_TRACES[(constrained, distribution)]
    assert sum(rewards) == pytest.approx(total, rel=1e-12)
    assert rewards[:3] == pytest.approx(first, rel=1e-12)
    assert budgets[:3] == [pytest.approx(b, rel=1e-7) for b in first_budgets]
    assert sum(r == 0 for r in rewards) == zeroed
