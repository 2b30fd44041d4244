"""The gymnasium environment the RL policies train in, as the paper trains them.

As in the published code: each reset picks a random training episode (Python's ``random``);
the dialogue follows its recorded actions whatever the policy does (the policy's action only
sets the reward); with budgets in the observation, each episode's budgets are sampled and a
step that overdraws them earns 0.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from tmo_graph.policy.knn import recorded_features
from tmo_graph.policy.observation import n_actions, window_state
from tmo_graph.policy.world import World
from tmo_graph.sim.budgets import sample_budgets
from tmo_graph.sim.data import Episode


class M4A1Env(gym.Env):
    def __init__(self, world: World, episodes: Sequence[Episode]) -> None:
        super().__init__()
        self.world = world
        self.episodes = list(episodes)
        spec = world.spec
        self.action_space = gym.spaces.Discrete(n_actions(spec.n_views))
        self.observation_space = gym.spaces.Box(
            low=-1.0, high=np.inf, shape=(spec.size,), dtype=np.float32
        )
        self._episode = self.episodes[0]
        self._states: list[list[float]] = []
        self._t = 0
        self._left = (0.0, 0.0)

    def _obs(self) -> np.ndarray:
        values = list(self._states[self._t])
        if self.world.spec.with_budgets:
            values += list(self._left)
        if self.world.spec.with_device:
            values += list(self.world.device_features)
        return np.asarray(values, dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        spec = self.world.spec
        self._episode = self.episodes[random.randint(0, len(self.episodes) - 1)]
        features = recorded_features(self._episode)
        tasks = [spec.task_id(turn.task) for turn in self._episode.turns]
        self._states = [window_state(spec, features[:t], tasks[: t + 1]) for t in range(len(tasks))]
        self._t = 0
        if spec.with_budgets:
            self._left = sample_budgets(self.world)
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = int(action)
        scores = self._episode.association[self._t]
        outcome = self.world.outcome(self._states[self._t], action, scores)
        reward = outcome.reward
        if self.world.spec.with_budgets:
            self._left = (self._left[0] - outcome.latency_s, self._left[1] - outcome.usage_usd)
            if self._left[0] < 0 or self._left[1] < 0:
                reward = 0.0
        self._t += 1
        done = self._t >= len(self._states)
        obs = np.full(self.world.spec.size, -1.0, dtype=np.float32) if done else self._obs()
        return obs, float(reward), done, False, {}
