"""Hand-written policies: always-local, always-cloud, random, rules and the cascade."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.base import LOCAL, Action, Policy, RouteInput

# Tasks whose longer prompts usually need the larger model's knowledge or reasoning.
_CLOUD_TASKS = ("Recommendation", "Query")


def best_cloud_action(observation: RouteInput, min_score: float) -> Action | None:
    """The affordable cloud action sending the most relevant views.

    Relevant views: inline images of the message, and device views whose association with
    the prompt is at least ``min_score``. Among affordable subsets of them, the one with the
    highest total association wins (cheaper on ties), so a tight budget sends fewer views.
    """
    relevant = {
        c["name"]: c["score"]
        for c in observation.candidates
        if c["kind"] == "inline" or c["score"] >= min_score
    }
    options = [
        action
        for action in observation.allowed
        if action.route == "cloud" and set(action.views) <= relevant.keys()
    ]
    if not options:
        return None
    return max(
        options,
        key=lambda a: (sum(relevant[v] for v in a.views), -observation.allowed[a].cost_usd),
    )


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
    """

    min_score: float = 0.3
    long_prompt_words: int = 14
    name: str = "rules"
    escalates: bool = True

    def decide(self, observation: RouteInput) -> Action:
        with_views = best_cloud_action(observation, self.min_score)
        if with_views is not None and with_views.views:
            return with_views
        text_only = Action("cloud")
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
