"""The routing decision: actions, what a policy sees, and the Policy protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:  # types only: state.py pulls in LangGraph, which policy/ must not need
    from tmo_graph.state import Budget, Candidate, TurnRecord


@dataclass(frozen=True)
class Action:
    """Answer locally, or in the cloud with a subset of the candidate views."""

    route: Literal["local", "cloud"]
    views: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        if self.route == "local":
            return "local"
        return "cloud+" + ",".join(self.views) if self.views else "cloud-text"


LOCAL = Action("local")


@dataclass(frozen=True)
class Cost:
    """Expected latency and money of an action, before it runs."""

    latency_s: float
    cost_usd: float

    def fits(self, budget: Budget) -> bool:
        return self.latency_s <= budget["latency_s"] and self.cost_usd <= budget["cost_usd"]


@dataclass(frozen=True)
class RouteInput:
    """Everything a policy may look at for one turn."""

    prompt: str
    task: str
    turn: int
    candidates: Sequence[Candidate]
    history: Sequence[TurnRecord]
    budget_left: Budget
    # Actions within the budget, each with its expected cost. LOCAL is among them unless its
    # full answer does not fit while a whole cloud answer does (the live graph only).
    allowed: dict[Action, Cost] = field(default_factory=dict)
    # Predicted score of the cloud answer minus that of the local answer (M4A1's units), made
    # before any answer by the services' gap predictor; None when there is none.
    quality_gap: float | None = None
    # The device now (tmo_graph.costs.device.DeviceReading: CPU load, free memory, measured speeds);
    # None in the simulator and where nothing was read.
    device: Mapping[str, Any] | None = None


class Policy(Protocol):
    """Maps a turn's RouteInput to an Action.

    ``escalates``: whether a local answer from this policy goes through the confidence check
    and may be escalated to the cloud.
    """

    name: str
    escalates: bool

    def decide(self, observation: RouteInput) -> Action: ...
