"""RL policies (stable-baselines3 PPO / A2C / DQN) trained in the M4A1 simulator, as files.

A policy file is the SB3 zip (or, for the own planner, its pickled models); beside it,
``<file>.spec.json`` records what the policy sees
(views, tasks, window, budgets) and the scenario it was trained in, so loading it into a
graph with other views fails clearly instead of routing nonsense.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.observation import ObservationSpec
from tmo_graph.sim.data import Episode
from tmo_graph.sim.knn import ResponseModel
from tmo_graph.sim.world import SimSettings, World

ALGORITHMS = ("ppo", "a2c", "dqn", "own")
DEFAULT_STEPS = 30_000


def _algorithm(name: str) -> Any:
    import stable_baselines3 as sb3

    if name not in ALGORITHMS or name == "own":
        raise TmoGraphError(f"unknown RL algorithm {name!r}", "use one of: ppo, a2c, dqn")
    return {"ppo": sb3.PPO, "a2c": sb3.A2C, "dqn": sb3.DQN}[name]


@dataclass
class TrainedPolicy:
    """A trained SB3 model with the observation spec it expects."""

    model: Any
    spec: ObservationSpec
    algorithm: str
    settings: SimSettings

    def __call__(self, observation: np.ndarray, association: Sequence[float] = ()) -> int:
        """The policy's action; only the own planner reads the association scores."""
        if self.algorithm == "own":
            return int(self.model(observation, association or None))
        action, _ = self.model.predict(observation, deterministic=True)
        return int(action)

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.algorithm == "own":
            self.model._memo.clear()  # a cache, rebuilt on use
            path.write_bytes(pickle.dumps(self.model))
        else:
            self.model.save(path)
        meta = {
            "algorithm": self.algorithm,
            "spec": self.spec.to_dict(),
            "settings": self.settings.to_dict(),
        }
        spec_path(path).write_text(json.dumps(meta, indent=2))


def spec_path(path: Path) -> Path:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix == ".zip" else path
    return stem.with_name(stem.name + ".spec.json")


def train_policy(
    algorithm: str,
    episodes: Sequence[Episode],
    spec: ObservationSpec,
    settings: SimSettings,
    steps: int = DEFAULT_STEPS,
    seed: int | None = None,
    response: ResponseModel | None = None,
    progress_bar: bool = False,
    judge_dialogues: int | None = None,
) -> TrainedPolicy:
    """Train ``algorithm`` on ``episodes``; constrained when the spec includes budgets.

    ``judge_dialogues`` (own planner only): the size of the held-out set its actions will be
    scored on, when that is not ``episodes`` itself (see ``LookaheadPlanner.fit``).
    """
    if algorithm == "own":  # fitting the planner's models takes a second or two
        from tmo_graph.sim.planner import LookaheadPlanner

        planner = LookaheadPlanner.fit(episodes, spec, settings, judge_dialogues=judge_dialogues)
        return TrainedPolicy(planner, spec, "own", settings)
    import torch

    from tmo_graph.sim.gym_env import M4A1Env

    if steps < 1:
        raise TmoGraphError("steps must be >= 1", "e.g. --steps 30000")
    torch.set_num_threads(1)  # small MLPs: threads cost more than they give on 2 cores
    knn_spec = ObservationSpec(spec.n_views, spec.task_names, spec.time_span, with_budgets=False)
    world = World(spec, settings, response or ResponseModel(knn_spec, episodes))
    env = M4A1Env(world, episodes)
    model = _algorithm(algorithm)("MlpPolicy", env, device="cpu", seed=seed, verbose=0)
    model.learn(total_timesteps=steps, progress_bar=progress_bar)
    return TrainedPolicy(model=model, spec=spec, algorithm=algorithm, settings=settings)


def load_policy(path: Path, expect: ObservationSpec | None = None) -> TrainedPolicy:
    """Load a policy file; with ``expect``, its views, tasks and window must match."""
    path = Path(path)
    meta_file = spec_path(path)
    if not path.exists() or not meta_file.exists():
        raise TmoGraphError(
            f"policy {path} (with {meta_file.name}) not found",
            "train one with `tmo-graph train ... -o FILE`",
        )
    meta = json.loads(meta_file.read_text())
    spec = ObservationSpec.from_dict(meta["spec"])
    if expect is not None and (
        spec.n_views != expect.n_views
        or spec.task_names != expect.task_names
        or spec.time_span != expect.time_span
    ):
        raise TmoGraphError(
            f"policy {path} was trained for {spec.n_views} views, tasks {list(spec.task_names)}, "
            f"window {spec.time_span}; this graph has {expect.n_views} views, tasks "
            f"{list(expect.task_names)}, window {expect.time_span}",
            "train a policy for these views and tasks, or give the graph the policy's views",
        )
    if meta["algorithm"] == "own":
        model = pickle.loads(path.read_bytes())  # a file this package wrote: see save()
    else:
        model = _algorithm(meta["algorithm"]).load(path, device="cpu")
    return TrainedPolicy(model, spec, meta["algorithm"], SimSettings(**meta["settings"]))
