"""A policy trained in the simulator, routing live turns through the same observation builder.

The dialogue's device views, in the order they were given, are the policy's views 0..X-1;
each finished turn's record gives the previous action and the views it sent; the budget
left is the dialogue's. Inline images are not part of a learned policy's action space.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.base import LOCAL, Action, RouteInput
from tmo_graph.policy.observation import (
    ObservationSpec,
    TurnFeatures,
    action_views,
    build_observation,
)
from tmo_graph.state import TurnRecord


def history_features(records: list[TurnRecord], views: list[str]) -> list[TurnFeatures]:
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

    def observation(self, route_input: RouteInput) -> Any:
        views = [c["name"] for c in route_input.candidates if c["kind"] == "device"]
        if len(views) != self.spec.n_views:
            raise TmoGraphError(
                f"the policy was trained for {self.spec.n_views} views; this dialogue has "
                f"{len(views)} ({', '.join(views) or 'none'})",
                "give the dialogue the views the policy was trained with, or train another",
            )
        records = list(route_input.history)
        tasks = [self.spec.task_id(r["task"]) for r in records]
        tasks.append(self.spec.task_id(route_input.task))
        budget = (route_input.budget_left["latency_s"], route_input.budget_left["cost_usd"])
        return build_observation(
            self.spec,
            history_features(records, views),
            tasks,
            budget if self.spec.with_budgets else None,
        )

    def decide(self, route_input: RouteInput) -> Action:
        devices = [c for c in route_input.candidates if c["kind"] == "device"]
        association = [c["score"] for c in devices]  # read by policies that use it
        action = int(self.policy(self.observation(route_input), association))
        if action == 0:
            return LOCAL
        views = [c["name"] for c in devices]
        return Action("cloud", tuple(views[i] for i in action_views(action, self.spec.n_views)))


@lru_cache(maxsize=8)
def load_learned(path: str) -> LearnedPolicy:
    """A saved policy file as a graph policy (loaded once per process)."""
    from tmo_graph.sim.train import load_policy

    trained = load_policy(Path(path))
    return LearnedPolicy(policy=trained, spec=trained.spec)
