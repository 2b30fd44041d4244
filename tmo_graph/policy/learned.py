"""A policy trained in the simulator, routing live turns through the same observation builder.

The dialogue's device views, in the order they were given, are the policy's views 0..X-1;
each finished turn's record gives the previous action and the views it sent; the budget
left is the dialogue's. Inline images are not part of a learned policy's action space.

Policy files are read here, not in the simulator, so the live graph loads every policy
without ``tmo_graph.sim``: an SB3 zip (PPO / A2C / DQN) or the own planner (a pickle of
:mod:`tmo_graph.policy.planner` objects), each with ``<file>.spec.json`` beside it recording
what the policy sees (views, tasks, window, budgets) and the scenario it was trained in.
Training (``tmo_graph.sim.train``) writes them.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.base import LOCAL, Action, RouteInput
from tmo_graph.policy.observation import (
    ObservationSpec,
    TurnFeatures,
    action_views,
    build_observation,
    device_features,
)
from tmo_graph.policy.world import SimSettings

if TYPE_CHECKING:  # type only: state.py pulls in LangGraph, which policy/ must not need
    from tmo_graph.state import Candidate, TurnRecord

SB3_ALGORITHMS = ("ppo", "a2c", "dqn")


def sb3_class(name: str) -> Any:
    """The stable-baselines3 class of ``name`` (ppo, a2c, dqn)."""
    if name not in SB3_ALGORITHMS:
        raise TmoGraphError(f"unknown RL algorithm {name!r}", "use one of: ppo, a2c, dqn")
    import stable_baselines3 as sb3

    return {"ppo": sb3.PPO, "a2c": sb3.A2C, "dqn": sb3.DQN}[name]


@dataclass
class TrainedPolicy:
    """A trained policy (SB3 model, or the own planner) with the observation spec it expects."""

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
    """The spec sidecar of a policy file: ``x.zip`` -> ``x.spec.json``, ``x`` -> ``x.spec.json``."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix == ".zip" else path
    return stem.with_name(stem.name + ".spec.json")


# Planner files written before the planner moved to policy/ name its classes in sim/.
_MOVED_MODULES = {
    "tmo_graph.sim.planner": "tmo_graph.policy.planner",
    "tmo_graph.sim.world": "tmo_graph.policy.world",
    "tmo_graph.sim.knn": "tmo_graph.policy.knn",
}


class _PlannerUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(_MOVED_MODULES.get(module, module), name)


def load_policy(path: Path, expect: ObservationSpec | None = None) -> TrainedPolicy:
    """Load a policy file; with ``expect``, its views, tasks and window must match."""
    path = Path(path)
    meta_file = spec_path(path)
    if not path.exists() or not meta_file.exists():
        raise TmoGraphError(
            f"policy {path} (with {meta_file.name}) not found",
            "train one with `tmo-graph train ... -o FILE`",
        )
    try:
        meta = json.loads(meta_file.read_text())
        spec = ObservationSpec.from_dict(meta["spec"])
        algorithm = str(meta["algorithm"])
        settings = SimSettings(**meta["settings"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise TmoGraphError(
            f"{meta_file} is not a policy spec ({exc!r})",
            "use a policy file written by `tmo-graph train`, or retrain it",
        ) from None
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
    if expect is not None and spec.kinds != expect.kinds:  # a clip is not an image
        raise TmoGraphError(
            f"policy {path} was trained for modalities {list(spec.kinds)}; this graph has "
            f"{list(expect.kinds)}",
            "train a policy for these modalities (images and audio clips in this order)",
        )
    if algorithm == "own":
        # A file this package wrote (see save()); never load planner files from strangers.
        model = _PlannerUnpickler(io.BytesIO(path.read_bytes())).load()
    else:
        model = sb3_class(algorithm).load(path, device="cpu")
    return TrainedPolicy(model, spec, algorithm, settings)


def history_features(records: Sequence[TurnRecord], views: list[str]) -> list[TurnFeatures]:
    """Finished turns as the simulator sees them: local / cloud and the view indices sent."""
    out = []
    for record in records:
        if record["route"] == "local":
            out.append(TurnFeatures(0))
        else:
            sent = tuple(views.index(v) for v in record["views_sent"] if v in views)
            out.append(TurnFeatures(1, tuple(sorted(sent))))
    return out


@dataclass
class LearnedPolicy:
    """Wraps a trained policy (any callable observation -> action id) and its spec."""

    policy: Any
    spec: ObservationSpec
    name: str = "learned"
    escalates: bool = False  # it decides before generating, as in the paper

    def devices(self, route_input: RouteInput) -> list[Candidate]:
        """The dialogue's device modalities in the order the policy was trained on: its
        i-th modality is the dialogue's next one of the same kind (camera view or clip), so
        a microphone listed first still takes the trained microphone's place."""
        devices = [c for c in route_input.candidates if c["kind"] == "device"]
        names = ", ".join(c["name"] for c in devices) or "none"
        if len(devices) != self.spec.n_views:
            raise TmoGraphError(
                f"the policy was trained for {self.spec.n_views} views; this dialogue has "
                f"{len(devices)} ({names})",
                "give the dialogue the views the policy was trained with, or train another",
            )
        by_kind: dict[str, list[Candidate]] = {"image": [], "audio": []}
        for candidate in devices:
            by_kind["audio" if candidate.get("audio") else "image"].append(candidate)
        if any(len(by_kind[k]) != self.spec.kinds.count(k) for k in by_kind):
            raise TmoGraphError(
                f"the policy was trained for modalities {list(self.spec.kinds)}; this dialogue "
                f"has {len(by_kind['image'])} images and {len(by_kind['audio'])} audio clips "
                f"({names})",
                "give the dialogue the camera views and microphones the policy was trained "
                "with, or train another",
            )
        return [by_kind[kind].pop(0) for kind in self.spec.kinds]

    def observation(self, route_input: RouteInput) -> Any:
        views = [c["name"] for c in self.devices(route_input)]
        records = list(route_input.history)
        tasks = [self.spec.task_id(r["task"]) for r in records]
        tasks.append(self.spec.task_id(route_input.task))
        budget = (route_input.budget_left["latency_s"], route_input.budget_left["cost_usd"])
        device = None
        if self.spec.with_device:
            if route_input.device is None:
                raise TmoGraphError(
                    "this policy observes the device, and the turn has no device reading",
                    "run it in the graph (the route reads the device), or retrain without it",
                )
            device = device_features(route_input.device)
        return build_observation(
            self.spec,
            history_features(records, views),
            tasks,
            budget if self.spec.with_budgets else None,
            device,
        )

    def decide(self, route_input: RouteInput) -> Action:
        devices = self.devices(route_input)
        association = [c["score"] for c in devices]  # read by policies that use it
        action = int(self.policy(self.observation(route_input), association))
        if action == 0:
            return LOCAL
        views = [c["name"] for c in devices]
        return Action("cloud", tuple(views[i] for i in action_views(action, self.spec.n_views)))


def load_learned(path: str) -> Any:
    """A saved policy file as a graph policy: a `tmo-graph train` file, or a `tmo-graph fit`
    file (:class:`tmo_graph.policy.refit.RefitPolicy`). Loaded once per process and file
    version: a file rewritten in place (a new fit) is loaded again on its next use."""
    try:
        stamp = Path(path).stat().st_mtime_ns
    except OSError:
        stamp = 0  # load_policy says what is missing
    return _load_learned(path, stamp)


@lru_cache(maxsize=8)
def _load_learned(path: str, stamp: int) -> Any:
    from tmo_graph.policy.refit import RefitModel, RefitPolicy, is_refit_file

    if is_refit_file(Path(path)):
        return RefitPolicy(RefitModel.load(Path(path)))
    trained = load_policy(Path(path))
    return LearnedPolicy(policy=trained, spec=trained.spec)
