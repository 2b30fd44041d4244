"""The simulated world of the paper: action costs, the reward, training budgets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from tmo_graph import costs
from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.observation import ObservationSpec, TurnFeatures, view_subsets
from tmo_graph.sim.knn import ResponseScorer

BudgetDistribution = Literal["normal", "uniform", "extreme_aware"]


@dataclass(frozen=True)
class SimSettings:
    """The scenario: device, network, reward weights and budgets (the paper's defaults)."""

    device: str = "Jetson TX2"
    network: str = "Wired"
    alpha: float = 1.0
    beta_association: float = 1 / 3
    beta_latency: float = 1 / 3
    beta_usage: float = 1 / 3
    latency_budget_s: float = 30.0
    usage_budget_usd: float = 0.05
    time_span: int = 5
    budget_distribution: BudgetDistribution = "normal"

    def __post_init__(self) -> None:
        costs.device(self.device)
        costs.network(self.network)
        if self.latency_budget_s <= 0 or self.usage_budget_usd <= 0:
            raise TmoGraphError("budgets must be > 0", "pass positive --latency/usage-budget")
        if self.time_span < 1:
            raise TmoGraphError("time_span must be >= 1", "use e.g. 5")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _normalise(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    if high == low:  # no spread: every option is as good as the others
        return [0.0] * len(values)
    return [(v - low) / (high - low) for v in values]


@dataclass(frozen=True)
class StepOutcome:
    response: float
    association: float  # raw: summed view scores of the uploaded subset
    latency_s: float
    usage_usd: float
    reward: float


class World:
    """Costs and reward of any action in any state, for one dataset's views and tasks."""

    def __init__(self, spec: ObservationSpec, settings: SimSettings, response: ResponseScorer):
        self.spec = spec
        self.settings = settings
        self.response = response
        device = costs.device(settings.device)
        network = costs.network(settings.network)
        x = spec.n_views
        self.local_s = costs.local_time_s(device)
        self.local_usd = costs.local_cost_usd(device)
        self.cloud_s = [costs.cloud_time_s(network, k) for k in range(x + 1)]
        self.cloud_usd = [costs.cloud_cost_usd(k) for k in range(x + 1)]
        # Normalised over [local, cloud k=0..X], as the paper does.
        self.norm_s = _normalise([self.local_s, *self.cloud_s])
        self.norm_usd = _normalise([self.local_usd, *self.cloud_usd])
        self.subsets = view_subsets(x)

    def cost(self, action: int) -> tuple[float, float]:
        """(latency s, usage USD) of one action."""
        if action == 0:
            return self.local_s, self.local_usd
        k = len(self.subsets[action - 1])
        return self.cloud_s[k], self.cloud_usd[k]

    def association(self, scores: Sequence[float]) -> list[float]:
        """Per action: the summed view scores it uploads (0 for local and text only)."""
        return [0.0] + [sum(scores[v] for v in subset) for subset in self.subsets]

    def outcome(self, state: Sequence[float], action: int, scores: Sequence[float]) -> StepOutcome:
        features = TurnFeatures.from_action(action, self.spec.n_views)
        response = self.response.score(state, features)
        assoc = self.association(scores)
        norm_index = 0 if action == 0 else 1 + len(self.subsets[action - 1])
        s = self.settings
        reward = (
            s.alpha * response
            + s.beta_association * _normalise(assoc)[action]
            - s.beta_latency * self.norm_s[norm_index]
            - s.beta_usage * self.norm_usd[norm_index]
        )
        latency, usage = self.cost(action)
        return StepOutcome(response, assoc[action], latency, usage, reward)

    def budget_range(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """(min, max) latency and usage over a window: all local vs all max-cloud."""
        span = self.settings.time_span
        x = self.spec.n_views
        return (
            (self.local_s * span, self.cloud_s[x] * span),
            (self.local_usd * span, self.cloud_usd[x] * span),
        )


def sample_budgets(world: World) -> tuple[float, float]:
    """Training budgets per episode, from numpy's global RNG as the published code does."""
    (lat_lo, lat_hi), (use_lo, use_hi) = world.budget_range()

    def uniform(lo: float, hi: float) -> float:
        return float(np.random.uniform(lo, hi))

    def normal(lo: float, hi: float) -> float:
        value = np.random.normal(0.5 * (lo + hi), max((hi - lo) / 6.0, 1e-8))
        return float(np.clip(value, lo, hi))

    def edge(lo: float, hi: float) -> float:
        band = max(0.1 * (hi - lo), 1e-8)
        if np.random.rand() < 0.5:
            value = lo + np.random.exponential(scale=band)
        else:
            value = hi - np.random.exponential(scale=band)
        return float(np.clip(value, lo, hi))

    kind = world.settings.budget_distribution
    if kind == "normal":
        return normal(lat_lo, lat_hi), normal(use_lo, use_hi)
    if kind == "uniform":
        return uniform(lat_lo, lat_hi), uniform(use_lo, use_hi)
    r = np.random.rand()  # extreme-aware: mostly ordinary budgets, some near the edges
    if r < 0.5:
        return normal(lat_lo, lat_hi), normal(use_lo, use_hi)
    if r < 0.8:
        return uniform(lat_lo, lat_hi), uniform(use_lo, use_hi)
    if r < 0.9:
        if np.random.rand() < 0.5:
            return edge(lat_lo, lat_hi), uniform(use_lo, use_hi)
        usage = edge(use_lo, use_hi)  # drawn first, as in the published code
        return uniform(lat_lo, lat_hi), usage
    return edge(lat_lo, lat_hi), edge(use_lo, use_hi)
