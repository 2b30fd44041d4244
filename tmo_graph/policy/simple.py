"""Hand-written policies: always-local, always-cloud, random, rules and the cascade."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.base import LOCAL, Action, Cost, Policy, RouteInput

if TYPE_CHECKING:  # types only: state.py pulls in LangGraph, which policy/ must not need
    from tmo_graph.state import Budget

# Tasks whose longer prompts usually need the larger model's knowledge or reasoning.
_CLOUD_TASKS = ("Recommendation", "Query")


# What a cloud call is worth before any view: the larger model reading the text. Small next
# to a relevant view (association >= min_score, 0.3 by default), so an affordable relevant
# view beats text alone unless it eats a much larger share of the budget.
CLOUD_BASE_GAIN = 0.1
# Floor of a cost share, so a free action does not divide by zero.
_MIN_SHARE = 1e-9


def budget_share(cost: Cost, budget: Budget) -> float:
    """The larger of the shares of the seconds and of the dollars left that ``cost`` takes."""
    shares = []
    for spent, left in ((cost.latency_s, budget["latency_s"]), (cost.cost_usd, budget["cost_usd"])):
        if left > 0:
            shares.append(spent / left)
        else:
            shares.append(0.0 if spent <= 0 else float("inf"))
    return max(max(shares), _MIN_SHARE)


def best_cloud_action(
    observation: RouteInput, min_score: float, base_gain: float = CLOUD_BASE_GAIN
) -> Action | None:
    """The affordable cloud action with the best expected gain per unit of budget.

    Only relevant views may be sent: inline images of the message (always candidates), and
    device views whose association with the prompt is at least ``min_score``. Private views
    never reach here: they are not candidates. For each affordable cloud action sending only
    relevant views (text-only included):

    - gain = ``base_gain`` + the association of the views it sends (negative scores count 0);
    - cost = the share of the budget left it takes, ``max(latency_s / seconds left,
      cost_usd / dollars left)``, so whichever budget is tighter prices it;
    - the action with the highest gain / cost wins (higher gain, then fewer dollars, on ties).

    A view is therefore added only when its association per extra share of the budget beats
    the gain per share of the call without it: a barely relevant view that costs a lot is left
    out, and as the budget tightens each image takes a larger share, so fewer views are sent
    (beyond the mask, which already removes what does not fit at all). None when no cloud
    action is affordable.
    """
    relevant = {
        c["name"]: max(c["score"], 0.0)
        for c in observation.candidates
        if c["kind"] == "inline" or c["score"] >= min_score
    }
    options = {
        action: base_gain + sum(relevant[v] for v in action.views)
        for action in observation.allowed
        if action.route == "cloud" and set(action.views) <= relevant.keys()
    }
    if not options:
        return None

    def value(action: Action) -> tuple[float, float, float]:
        cost = observation.allowed[action]
        gain = options[action]
        return gain / budget_share(cost, observation.budget_left), gain, -cost.cost_usd

    return max(options, key=value)


def escalation(observation: RouteInput, min_score: float) -> Action | None:
    """Where an unsure local answer goes: the best affordable cloud action (views by
    association within the budget), None when no cloud action fits. ``observation`` must be
    built for the budget left after the local call. The confidence check and the simulator
    both escalate by this rule."""
    cloud_only = {a: cost for a, cost in observation.allowed.items() if a.route == "cloud"}
    return best_cloud_action(replace(observation, allowed=cloud_only), min_score)


@dataclass
class AlwaysLocal:
    name: str = "always-local"
    escalates: bool = False

    def decide(self, observation: RouteInput) -> Action:
        return LOCAL


@dataclass
class AlwaysCloud:
    """Cloud every turn, with the relevant views it can afford (local once nothing fits)."""

    min_score: float = 0.3
    name: str = "always-cloud"
    escalates: bool = False

    def decide(self, observation: RouteInput) -> Action:
        return best_cloud_action(observation, self.min_score) or LOCAL


@dataclass
class RandomPolicy:
    """Uniform over the affordable actions; reproducible per (seed, turn)."""

    seed: int = 0
    name: str = "random"
    escalates: bool = False

    def decide(self, observation: RouteInput) -> Action:
        rng = random.Random(f"{self.seed}:{observation.turn}")
        return rng.choice(list(observation.allowed))


@dataclass
class Cascade:
    """Local first; the confidence check escalates unsure answers."""

    name: str = "cascade"
    escalates: bool = True

    def decide(self, observation: RouteInput) -> Action:
        return LOCAL


@dataclass
class Rules:
    """Heuristics: images or view-related prompts go to the cloud with those views; long
    recommendation / query prompts to the cloud as text; the rest is local, with escalation.

    With a predicted quality gap (``observation.quality_gap``, cloud minus local score from
    :mod:`tmo_graph.models.gap`), the gap replaces the task / length rule for prompts without
    a relevant view: cloud as text when the gap is at least ``gap_margin``, else local.
    """

    min_score: float = 0.3
    long_prompt_words: int = 14
    # In M4A1 score points: the cloud answer must be expected to score a point more. On M4A1's
    # held-out prompts (seed 9139) the predicted gap has median 0.38 and 90th percentile 1.48,
    # so 18 % of them would go to the cloud up front; the rest still escalate on low
    # confidence.
    gap_margin: float = 1.0
    name: str = "rules"
    escalates: bool = True

    def decide(self, observation: RouteInput) -> Action:
        with_views = best_cloud_action(observation, self.min_score)
        if with_views is not None and with_views.views:
            return with_views
        text_only = Action("cloud")
        if observation.quality_gap is not None:
            if observation.quality_gap >= self.gap_margin and text_only in observation.allowed:
                return text_only
            return LOCAL
        if (
            observation.task in _CLOUD_TASKS
            and len(observation.prompt.split()) >= self.long_prompt_words
            and text_only in observation.allowed
        ):
            return text_only
        return LOCAL


def make_policy(context: Context) -> Policy:
    """The policy named by ``context.policy``."""
    policies: dict[str, Policy] = {
        "always-local": AlwaysLocal(),
        "always-cloud": AlwaysCloud(min_score=context.min_view_score),
        "random": RandomPolicy(seed=context.seed),
        "cascade": Cascade(),
        "rules": Rules(min_score=context.min_view_score),
    }
    if context.policy == "learned" and context.policy_file:
        from tmo_graph.policy.learned import load_learned

        return load_learned(context.policy_file)
    if context.policy not in policies:
        raise TmoGraphError(
            f"unknown policy {context.policy!r}", f"use one of: {', '.join(policies)}"
        )
    return policies[context.policy]
