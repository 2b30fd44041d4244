"""The paper's world model: action costs, the reward of a turn.

The simulator judges policies in it, and the own planner (:mod:`tmo_graph.policy.planner`)
plans in it at run time, so it lives in policy/ (a saved planner carries one). Costs come
from the one cost model, :meth:`tmo_graph.policy.budget.CostModel.paper`, whose numbers are
the published code's; training budgets are sampled in ``tmo_graph.sim.world``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from tmo_graph import costs
from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.base import LOCAL
from tmo_graph.policy.budget import CostModel
from tmo_graph.policy.knn import ResponseScorer
from tmo_graph.policy.observation import (
    ObservationSpec,
    TurnFeatures,
    profile_device_features,
    view_subsets,
)

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


def min_max(values: Sequence[float]) -> list[float]:
    """Values scaled to [0, 1] by their range (all 0 when they are equal), as the paper does."""
    low, high = min(values), max(values)
    if high == low:  # no spread: every option is as good as the others
        return [0.0] * len(values)
    return [(v - low) / (high - low) for v in values]


def _scale(value: float, values: Sequence[float]) -> float:
    """``value`` in the min-max normalisation of ``values`` (may fall outside [0, 1])."""
    low, high = min(values), max(values)
    return 0.0 if high == low else (value - low) / (high - low)


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
        x = spec.n_views
        self.cost_model = CostModel.paper(settings.device, settings.network, x)
        local = self.cost_model.expected(LOCAL, 0)
        cloud = self.cost_model.fixed_cloud or ()  # always set by CostModel.paper
        self.local_s, self.local_usd = local.latency_s, local.cost_usd
        self.cloud_s = [c.latency_s for c in cloud]
        self.cloud_usd = [c.cost_usd for c in cloud]
        # Normalised over [local, cloud k=0..X], as the paper does.
        self.norm_s = min_max([self.local_s, *self.cloud_s])
        self.norm_usd = min_max([self.local_usd, *self.cloud_usd])
        self.subsets = view_subsets(x)

    @property
    def device_features(self) -> tuple[float, float, float]:
        """What a policy observing the device sees here: the profile's idle device (a
        property, so worlds pickled in older planner files have it too)."""
        return profile_device_features(costs.device(self.settings.device))

    def cost(self, action: int) -> tuple[float, float]:
        """(latency s, usage USD) of one action."""
        if action == 0:
            return self.local_s, self.local_usd
        k = len(self.subsets[action - 1])
        return self.cloud_s[k], self.cloud_usd[k]

    def association(self, scores: Sequence[float]) -> list[float]:
        """Per action: the summed view scores it uploads (0 for local and text only)."""
        return [0.0] + [sum(scores[v] for v in subset) for subset in self.subsets]

    def outcome(
        self,
        state: Sequence[float],
        action: int,
        scores: Sequence[float],
        after_local: bool = False,
        response: ResponseScorer | None = None,
    ) -> StepOutcome:
        """The judged outcome of ``action`` in the window ``state``.

        ``response``: the judge scoring the answer (default: the world's own response model);
        a benchmark judging one rollout with several judges passes each in turn.

        ``after_local``: the cloud action escalates a local answer already made (a cascade).
        The turn is judged as the cloud action (its answer is the one kept) and pays both
        calls; the reward's cost terms take the summed cost through the same linear
        normalisation (so they can exceed 1: an escalation costs more than any one action).
        """
        if after_local and action == 0:
            raise TmoGraphError(
                "only a cloud action can escalate a local answer", "pass a cloud action"
            )
        features = TurnFeatures.from_action(action, self.spec.n_views)
        score = (response or self.response).score(state, features)
        assoc = self.association(scores)
        norm_index = 0 if action == 0 else 1 + len(self.subsets[action - 1])
        s = self.settings
        norm_s, norm_usd = self.norm_s[norm_index], self.norm_usd[norm_index]
        latency, usage = self.cost(action)
        if after_local:
            latency, usage = latency + self.local_s, usage + self.local_usd
            norm_s = _scale(latency, [self.local_s, *self.cloud_s])
            norm_usd = _scale(usage, [self.local_usd, *self.cloud_usd])
        reward = (
            s.alpha * score
            + s.beta_association * min_max(assoc)[action]
            - s.beta_latency * norm_s
            - s.beta_usage * norm_usd
        )
        return StepOutcome(score, assoc[action], latency, usage, reward)

    def budget_range(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """(min, max) latency and usage over a window: all local vs all max-cloud."""
        span = self.settings.time_span
        x = self.spec.n_views
        return (
            (self.local_s * span, self.cloud_s[x] * span),
            (self.local_usd * span, self.cloud_usd[x] * span),
        )
