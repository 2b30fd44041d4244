"""Training RL policies (stable-baselines3 PPO / A2C / DQN) and the own planner in M4A1.

What a trained policy is, and how its file is written and read, lives in
:mod:`tmo_graph.policy.learned` (the live graph loads policies without the simulator);
it is re-exported here for the training code and its callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.knn import ResponseModel
from tmo_graph.policy.learned import TrainedPolicy, load_policy, sb3_class, spec_path
from tmo_graph.policy.observation import ObservationSpec
from tmo_graph.policy.world import SimSettings, World
from tmo_graph.sim.data import Episode
from tmo_graph.sim.methods import ALGORITHMS

if TYPE_CHECKING:
    from tmo_graph.policy.planner import LookaheadPlanner

__all__ = [
    "DEFAULT_STEPS",
    "TrainedPolicy",
    "fit_sim_planner",
    "load_policy",
    "spec_path",
    "train_policy",
]

DEFAULT_STEPS = 30_000


def _algorithm(name: str) -> Any:
    if name not in ALGORITHMS or name == "own":
        raise TmoGraphError(f"unknown RL algorithm {name!r}", "use one of: ppo, a2c, dqn")
    return sb3_class(name)


def fit_sim_planner(
    episodes: Sequence[Episode], spec: ObservationSpec, settings: SimSettings
) -> LookaheadPlanner:
    """The own planner given the simulator's response model (bench method ``own-sim``).

    The RL policies train against the response model of their training dialogues (the
    inverse-distance 5-NN, :class:`ResponseModel`); this planner plans with that same model,
    so the two are compared on equal terms. Under the paper protocol that model is also the
    judge; the planner reads nothing of the test split. Otherwise it is the shipped
    planner: the same lookahead, dialogue model, budget guard and association scores.
    """
    from tmo_graph.policy.planner import LookaheadPlanner

    if not episodes:
        raise TmoGraphError("no training dialogues to fit own-sim on", "pass the training split")
    planner = LookaheadPlanner.fit(episodes, spec, settings)
    planner.name = "own-sim"
    planner.info = {"response": "simulator", "model": "training-split 5-NN (ResponseModel)"}
    return planner


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

    The own planner is told nothing about its judge: it plans against an ensemble of
    response models, its one knob chosen by cross-validation inside ``episodes``
    (:mod:`tmo_graph.sim.robust`; ``seed`` draws the ensemble's subsets and the folds).
    ``judge_dialogues`` instead fits the planner told how many dialogues its
    judge is fit on (``LookaheadPlanner.fit``), kept for comparison. ``own-sim``: the
    planner given the simulator's response model (:func:`fit_sim_planner`).
    """
    if algorithm == "own-sim":  # the planner given the simulator's response model
        return TrainedPolicy(fit_sim_planner(episodes, spec, settings), spec, "own", settings)
    if algorithm == "own":  # seconds: the models and the cross-validated risk
        from tmo_graph.policy.planner import LookaheadPlanner
        from tmo_graph.sim.robust import fit_own_planner

        planner = (
            fit_own_planner(episodes, spec, settings, seed=seed or 0)
            if judge_dialogues is None
            else LookaheadPlanner.fit(episodes, spec, settings, judge_dialogues=judge_dialogues)
        )
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
