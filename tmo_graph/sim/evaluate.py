"""Evaluation on the test split, the paper's way, and the benchmark table's numbers.

A policy is any callable ``(observation) -> action``. The test episodes are walked in order;
each next observation is built from the policy's own actions (one observation builder for
simulator and graph). An episode's reward, response and association are means over its turns;
its latency and usage are totals.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tmo_graph.policy.observation import TurnFeatures, build_observation, n_actions
from tmo_graph.sim.data import Episode
from tmo_graph.sim.world import World

# A policy maps the observation (and, for policies that use it, the current turn's view
# association scores) to an action id.
Policy = Callable[[np.ndarray, Sequence[float]], int]
METRICS = (
    "reward",
    "response",
    "association",
    "latency_s",
    "usage_usd",
    "overshoot_latency_s",
    "overshoot_usage_usd",
    "over_budget_share",
)


def local_policy(world: World) -> Policy:
    return lambda obs, association: 0


def cloud_policy(world: World) -> Policy:
    """A random cloud action per turn (Python's ``random``, as the published baseline)."""
    cloud_actions = list(range(1, n_actions(world.spec.n_views)))
    return lambda obs, association: random.choice(cloud_actions)


def random_policy(world: World) -> Policy:
    """Local with probability 1/2, else a uniformly random cloud action."""
    count = n_actions(world.spec.n_views)
    weights = [0.5] + [0.5 / (count - 1)] * (count - 1)
    actions = list(range(count))
    return lambda obs, association: random.choices(actions, weights=weights, k=1)[0]


BASELINES: dict[str, Callable[[World], Policy]] = {
    "Local": local_policy,
    "Cloud": cloud_policy,
    "Random": random_policy,
}


def _paper_overshoot(overshoots: Sequence[float | None]) -> float:
    """The published violation figure: mean overshoot over the episodes over budget, with a 0
    counted in front when the first episode stayed inside (its list starts as [0])."""
    values: list[float] = []
    for over in overshoots:
        if over is not None:
            values.append(over)
        if not values:
            values = [0.0]
    return float(np.mean(values)) if values else 0.0


def evaluate(world: World, episodes: Sequence[Episode], policy: Policy) -> dict[str, Any]:
    """Roll ``policy`` over ``episodes`` in order; the paper's metrics and the action mix."""
    spec, settings = world.spec, world.settings
    rewards, responses, associations, latencies, usages = [], [], [], [], []
    over_latency: list[float | None] = []
    over_usage: list[float | None] = []
    mix = {"local": 0, "cloud_text": 0, "cloud_views": 0}
    for episode in episodes:
        tasks = [spec.task_id(turn.task) for turn in episode.turns]
        history: list[TurnFeatures] = []
        left = (settings.latency_budget_s, settings.usage_budget_usd)
        ep_reward, ep_response, ep_assoc = [], [], []
        spent_s = spent_usd = 0.0
        for t in range(len(tasks)):
            obs = build_observation(spec, history, tasks[: t + 1], left)
            state = list(obs[: spec.per_step * spec.time_span])
            action = int(policy(obs, episode.association[t]))
            outcome = world.outcome(state, action, episode.association[t])
            features = TurnFeatures.from_action(action, spec.n_views)
            key = "local" if action == 0 else "cloud_views" if features.views_used else "cloud_text"
            mix[key] += 1
            ep_reward.append(outcome.reward)
            ep_response.append(outcome.response)
            ep_assoc.append(outcome.association)
            spent_s += outcome.latency_s
            spent_usd += outcome.usage_usd
            left = (left[0] - outcome.latency_s, left[1] - outcome.usage_usd)
            history.append(features)
        rewards.append(float(np.mean(ep_reward)))
        responses.append(float(np.mean(ep_response)))
        associations.append(float(np.mean(ep_assoc)))
        latencies.append(spent_s)
        usages.append(spent_usd)
        over_latency.append(
            spent_s - settings.latency_budget_s if spent_s > settings.latency_budget_s else None
        )
        over_usage.append(
            spent_usd - settings.usage_budget_usd if spent_usd > settings.usage_budget_usd else None
        )
    over_any = [
        a is not None or b is not None for a, b in zip(over_latency, over_usage, strict=True)
    ]
    return {
        "reward": float(np.mean(rewards)),
        "response": float(np.mean(responses)),
        "association": float(np.mean(associations)),
        "latency_s": float(np.mean(latencies)),
        "usage_usd": float(np.mean(usages)),
        "overshoot_latency_s": _paper_overshoot(over_latency),
        "overshoot_usage_usd": _paper_overshoot(over_usage),
        "over_budget_share": sum(over_any) / len(over_any),
        "actions": mix,
    }


def aggregate(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and (population) std over seeds of every metric, and the summed action mix."""
    runs = list(per_seed.values())
    mean: dict[str, Any] = {m: float(np.mean([r[m] for r in runs])) for m in METRICS}
    std = {m: float(np.std([r[m] for r in runs])) for m in METRICS}
    mean["actions"] = {
        k: statistics.mean(r["actions"][k] for r in runs) for k in runs[0]["actions"]
    }
    return {"per_seed": per_seed, "mean": mean, "std": std}
