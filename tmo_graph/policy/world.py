"""The paper's world model: action costs, the reward of a turn.

The simulator judges policies in it, and the own planner (:mod:`tmo_graph.policy.planner`)
plans in it at run time, so it lives in policy/ (a saved planner carries one). Costs come
from the one cost model, :meth:`tmo_graph.policy.budget.CostModel.paper`, whose numbers are
the published code's; training budgets are sampled in ``tmo_graph.sim.budgets``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from tmo_graph.costs import profiles
from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.base import LOCAL, Action
from tmo_graph.policy.budget import CostModel
from tmo_graph.policy.knn import ResponseScorer
from tmo_graph.policy.observation import (
    ObservationSpec,
    TurnFeatures,
    modality_names,
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
    # Seconds of every audio clip a cloud call sends (prices its upload and tokens).
    audio_clip_s: float = profiles.AUDIO_CLIP_S

    def __post_init__(self) -> None:
        profiles.device(self.device)
        profiles.network(self.network)
        if not self.audio_clip_s > 0:
            raise TmoGraphError(
                f"audio clips must last > 0 s, got {self.audio_clip_s!r}", "e.g. 10.0"
            )
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
        self._price_actions()

    def _price_actions(self) -> None:
        spec, settings = self.spec, self.settings
        kinds = spec.kinds
        names = modality_names(kinds)
        clip_s = getattr(settings, "audio_clip_s", profiles.AUDIO_CLIP_S)  # older pickles
        # The audio clips by name, with their length: what a call sending one pays for it.
        self.audio_s = {n: clip_s for n, kind in zip(names, kinds, strict=True) if kind == "audio"}
        self.cost_model = CostModel.paper(settings.device, settings.network, kinds.count("image"))
        local = self.cost_model.expected(LOCAL, 0)
        cloud = self.cost_model.fixed_cloud or ()  # always set by CostModel.paper
        self.local_s, self.local_usd = local.latency_s, local.cost_usd
        # By number of images sent (k = 0..images), the paper's table.
        self.cloud_s = [c.latency_s for c in cloud]
        self.cloud_usd = [c.cost_usd for c in cloud]
        self.subsets = view_subsets(spec.n_views)
        # Per action id: an audio clip costs differently from an image (costs.audio_clip_*).
        priced = [local] + [
            self.cost_model.expected(
                Action("cloud", tuple(names[v] for v in subset)), 0, audio_s=self.audio_s
            )
            for subset in self.subsets
        ]
        self.action_s = [c.latency_s for c in priced]
        self.action_usd = [c.cost_usd for c in priced]
        # Normalised over every action's cost, per action id. With images only the values
        # are the paper's [local, cloud k=0..X] (every k occurs), so min and max, and every
        # normalised number, are the published code's bit for bit.
        self.norm_s = min_max(self.action_s)
        self.norm_usd = min_max(self.action_usd)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A planner saved before audio pickled a World without per-action prices.
        self.__dict__.update(state)
        if "audio_s" not in state:
            self._price_actions()

    @property
    def device_features(self) -> tuple[float, float, float]:
        """What a policy observing the device sees here: the profile's idle device (a
        property, so worlds pickled in older planner files have it too)."""
        return profile_device_features(profiles.device(self.settings.device))

    def cost(self, action: int) -> tuple[float, float]:
        """(latency s, usage USD) of one action."""
        return self.action_s[action], self.action_usd[action]

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
        s = self.settings
        norm_s, norm_usd = self.norm_s[action], self.norm_usd[action]
        latency, usage = self.cost(action)
        if after_local:
            latency, usage = latency + self.local_s, usage + self.local_usd
            norm_s = _scale(latency, self.action_s)
            norm_usd = _scale(usage, self.action_usd)
        reward = (
            s.alpha * score
            + s.beta_association * min_max(assoc)[action]
            - s.beta_latency * norm_s
            - s.beta_usage * norm_usd
        )
        return StepOutcome(score, assoc[action], latency, usage, reward)

    def budget_range(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """(min, max) latency and usage over a window: all local vs all max-cloud (the
        action sending every modality, the last one; with images only the paper's k = X)."""
        span = self.settings.time_span
        return (
            (self.local_s * span, self.action_s[-1] * span),
            (self.local_usd * span, self.action_usd[-1] * span),
        )
