"""Evaluation on the test split, the paper's way, and the benchmark table's numbers.

A policy is any callable ``(observation) -> action`` (:func:`evaluate`), or any live
``Policy`` deciding on a ``RouteInput`` (:func:`evaluate_route_policy`, via
:mod:`tmo_graph.sim.routing`). The test episodes are walked in order;
each next observation is built from the policy's own actions (one observation builder for
simulator and graph). An episode's reward, response and association are means over its turns;
its latency and usage are totals.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.knn import ResponseScorer
from tmo_graph.policy.observation import TurnFeatures, build_observation, n_actions, window_state
from tmo_graph.policy.world import StepOutcome, World
from tmo_graph.sim.data import Episode
from tmo_graph.sim.routing import RoutePolicyRunner

if TYPE_CHECKING:  # types only: state.py pulls in LangGraph, which the simulator must not need
    from tmo_graph.state import Budget, TurnRecord

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


class _Tally:
    """The paper's metrics over episodes: per-episode means of reward, response and
    association, totals of latency and usage, overshoots, and the action mix."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.rewards: list[float] = []
        self.responses: list[float] = []
        self.associations: list[float] = []
        self.latencies: list[float] = []
        self.usages: list[float] = []
        self.over_latency: list[float | None] = []
        self.over_usage: list[float | None] = []
        self.mix = {"local": 0, "cloud_text": 0, "cloud_views": 0}
        # With audio modalities, also the cloud calls sending a clip (each also
        # counted under cloud_views, which counts calls sending any modality).
        kinds = world.spec.kinds
        self.audio = {i for i, kind in enumerate(kinds) if kind == "audio"}
        if self.audio:
            self.mix["audio"] = 0

    def start(self) -> None:
        self.ep_reward: list[float] = []
        self.ep_response: list[float] = []
        self.ep_assoc: list[float] = []
        self.spent_s = self.spent_usd = 0.0

    def add(self, action: int, outcome: StepOutcome) -> TurnFeatures:
        features = TurnFeatures.from_action(action, self.world.spec.n_views)
        key = "local" if action == 0 else "cloud_views" if features.views_used else "cloud_text"
        self.mix[key] += 1
        if self.audio & set(features.views_used):
            self.mix["audio"] += 1
        self.ep_reward.append(outcome.reward)
        self.ep_response.append(outcome.response)
        self.ep_assoc.append(outcome.association)
        self.spent_s += outcome.latency_s
        self.spent_usd += outcome.usage_usd
        return features

    def finish(self) -> None:
        settings = self.world.settings
        spent_s, spent_usd = self.spent_s, self.spent_usd
        self.rewards.append(float(np.mean(self.ep_reward)))
        self.responses.append(float(np.mean(self.ep_response)))
        self.associations.append(float(np.mean(self.ep_assoc)))
        self.latencies.append(spent_s)
        self.usages.append(spent_usd)
        self.over_latency.append(
            spent_s - settings.latency_budget_s if spent_s > settings.latency_budget_s else None
        )
        self.over_usage.append(
            spent_usd - settings.usage_budget_usd if spent_usd > settings.usage_budget_usd else None
        )

    def result(self) -> dict[str, Any]:
        over_any = [
            a is not None or b is not None
            for a, b in zip(self.over_latency, self.over_usage, strict=True)
        ]
        return {
            "reward": float(np.mean(self.rewards)),
            "response": float(np.mean(self.responses)),
            "association": float(np.mean(self.associations)),
            "latency_s": float(np.mean(self.latencies)),
            "usage_usd": float(np.mean(self.usages)),
            "overshoot_latency_s": _paper_overshoot(self.over_latency),
            "overshoot_usage_usd": _paper_overshoot(self.over_usage),
            "over_budget_share": sum(over_any) / len(over_any),
            "actions": dict(self.mix),
            # Per test dialogue, in order: what paired comparisons between methods need.
            "dialogue_rewards": list(self.rewards),
        }


# Which judge scores test episode ``i`` (a cross-judge or leave-one-out judge scores each
# dialogue with a model fit without it).
EpisodeJudge = Callable[[int], ResponseScorer]


class _Judged:
    """One tally per judge over the same rollout: a policy's actions (and so its costs and
    budget left) never depend on the judge, so a rollout is made once and judged by each."""

    def __init__(self, world: World, judges: Mapping[str, EpisodeJudge]) -> None:
        if not judges:
            raise TmoGraphError("no judge to score the rollout with", "give at least one judge")
        self.world = world
        self.judges = judges
        self.tallies = {name: _Tally(world) for name in judges}

    def start(self, index: int) -> None:
        self.scorers = {name: judge(index) for name, judge in self.judges.items()}
        for tally in self.tallies.values():
            tally.start()

    def add(
        self, state: Sequence[float], action: int, scores: Sequence[float], after_local: bool
    ) -> tuple[TurnFeatures, StepOutcome]:
        outcome: StepOutcome | None = None
        features = TurnFeatures(0)
        for name, tally in self.tallies.items():
            outcome = self.world.outcome(
                state, action, scores, after_local=after_local, response=self.scorers[name]
            )
            features = tally.add(action, outcome)
        assert outcome is not None  # at least one judge (checked in __init__)
        return features, outcome

    def finish(self) -> None:
        for tally in self.tallies.values():
            tally.finish()


def evaluate(world: World, episodes: Sequence[Episode], policy: Policy) -> dict[str, Any]:
    """Roll ``policy`` over ``episodes`` in order; the paper's metrics and the action mix."""
    judges: dict[str, EpisodeJudge] = {"": lambda i: world.response}
    return evaluate_judged(world, episodes, policy, judges)[""]


def evaluate_judged(
    world: World,
    episodes: Sequence[Episode],
    policy: Policy,
    judges: Mapping[str, EpisodeJudge],
) -> dict[str, dict[str, Any]]:
    """As :func:`evaluate`, one rollout scored by every judge: ``{judge name: result}``.

    ``world`` gives the observations' spec, the costs and the budgets; ``judges[name](i)``
    scores the answers of ``episodes[i]``.
    """
    spec, settings = world.spec, world.settings
    judged = _Judged(world, judges)
    for index, episode in enumerate(episodes):
        tasks = [spec.task_id(turn.task) for turn in episode.turns]
        history: list[TurnFeatures] = []
        left = (settings.latency_budget_s, settings.usage_budget_usd)
        judged.start(index)
        for t in range(len(tasks)):
            obs = build_observation(spec, history, tasks[: t + 1], left, world.device_features)
            state = list(obs[: spec.per_step * spec.time_span])
            action = int(policy(obs, episode.association[t]))
            features, outcome = judged.add(state, action, episode.association[t], False)
            left = (left[0] - outcome.latency_s, left[1] - outcome.usage_usd)
            history.append(features)
        judged.finish()
    return {name: tally.result() for name, tally in judged.tallies.items()}


def evaluate_route_policy(
    world: World, episodes: Sequence[Episode], runner: RoutePolicyRunner
) -> dict[str, Any]:
    """Roll a hand-written policy (``runner``) over ``episodes`` in order, as :func:`evaluate`.

    The window state the judge scores is built from the actions kept (an escalated turn
    counts as its cloud action). The action mix adds ``escalated``: turns answered locally,
    checked unsure and escalated (each also counted under its cloud action).
    """
    judges: dict[str, EpisodeJudge] = {"": lambda i: world.response}
    return evaluate_route_policy_judged(world, episodes, runner, judges)[""]


def evaluate_route_policy_judged(
    world: World,
    episodes: Sequence[Episode],
    runner: RoutePolicyRunner,
    judges: Mapping[str, EpisodeJudge],
) -> dict[str, dict[str, Any]]:
    """As :func:`evaluate_route_policy`, one rollout scored by every judge."""
    spec, settings = world.spec, world.settings
    judged = _Judged(world, judges)
    escalated = 0
    for index, episode in enumerate(episodes):
        tasks = [spec.task_id(turn.task) for turn in episode.turns]
        history: list[TurnFeatures] = []
        records: list[TurnRecord] = []
        left: Budget = {
            "latency_s": settings.latency_budget_s,
            "cost_usd": settings.usage_budget_usd,
        }
        judged.start(index)
        for t in range(len(tasks)):
            state = window_state(spec, history, tasks[: t + 1])
            decision = runner.decide(episode, t, records, left)
            features, outcome = judged.add(
                state, decision.action, episode.association[t], decision.escalated
            )
            escalated += decision.escalated
            left = {
                "latency_s": left["latency_s"] - outcome.latency_s,
                "cost_usd": left["cost_usd"] - outcome.usage_usd,
            }
            history.append(features)
            records.append(
                runner.record(episode, t, decision, outcome.latency_s, outcome.usage_usd, left)
            )
        judged.finish()
    results = {name: tally.result() for name, tally in judged.tallies.items()}
    for result in results.values():
        result["actions"] = {**result["actions"], "escalated": escalated}
    return results


def aggregate(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and (population) std over seeds of every metric, and the summed action mix."""
    runs = list(per_seed.values())
    mean: dict[str, Any] = {m: float(np.mean([r[m] for r in runs])) for m in METRICS}
    std = {m: float(np.std([r[m] for r in runs])) for m in METRICS}
    mean["actions"] = {
        k: statistics.mean(r["actions"][k] for r in runs) for k in runs[0]["actions"]
    }
    return {"per_seed": per_seed, "mean": mean, "std": std}
