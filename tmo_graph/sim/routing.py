"""Hand-written policies (anything deciding on a ``RouteInput``) in the M4A1 simulator.

Each M4A1 turn is shown to the policy exactly as the live route node shows a turn: the
question text, its task, the views as device candidates with their association scores,
the turn records so far, the budget left and the affordable actions with their costs in the
simulator's world (``World.cost_model``), built by the one builder,
:func:`tmo_graph.policy.budget.build_route_input`. M4A1 names no views: they are
``view0 .. view{X-1}``, in the dataset's order (action ids follow ``all_actions``' order).

A policy that ``escalates`` (rules, cascade) has its local answers checked: the turn's local
confidence (see :class:`RecordedConfidence`) below the threshold escalates to the cloud by
the confidence check's own rule (:func:`tmo_graph.policy.simple.escalation`), if a cloud
action fits the budget left after the local call. An escalated turn pays both calls and is
judged as the cloud action it ends with (``World.outcome(..., after_local=True)``).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.base import LOCAL, Action, Policy, RouteInput
from tmo_graph.policy.budget import all_actions, build_route_input
from tmo_graph.policy.confidence import (
    ECHO_LIMIT,
    LOOP_REPETITION,
    confidence,
    echo,
    refusal,
    repetition,
)
from tmo_graph.policy.observation import modality_names, n_actions
from tmo_graph.policy.simple import escalation
from tmo_graph.policy.world import World
from tmo_graph.sim.data import Episode

if TYPE_CHECKING:  # types only: state.py pulls in LangGraph, which the simulator must not need
    from tmo_graph.state import Budget, Candidate, TurnRecord


def view_names(n_views: int) -> list[str]:
    """M4A1's views as candidate names (the dataset only numbers them)."""
    return [f"view{i}" for i in range(n_views)]


def sim_actions(world: World) -> list[Action]:
    """Every action of the world as a live Action; index i is the simulator's action id i.

    Audio clips are candidates like views (``audio{i}``, :func:`modality_names`), so the
    world's cost model prices them as clips."""
    actions = all_actions(modality_names(world.spec.kinds))
    if len(actions) != n_actions(world.spec.n_views):
        raise TmoGraphError(
            f"{world.spec.n_views} views are more than a live policy enumerates",
            "use a dataset with at most 4 views for hand-written policies",
        )
    return actions


def candidates(
    scores: Sequence[float], kinds: Sequence[str] | None = None, clip_s: float = 0.0
) -> list[Candidate]:
    """The turn's views (and audio clips of ``clip_s`` seconds, by ``kinds``) as the route
    node's device candidates (no image, no clip file: nothing is sent)."""
    names = view_names(len(scores)) if kinds is None else modality_names(kinds)
    out: list[Candidate] = []
    for name, score, kind in zip(names, scores, kinds or ["image"] * len(names), strict=True):
        candidate: Candidate = {
            "name": name,
            "kind": "device",
            "score": float(score),
            "image": None,
        }
        if kind == "audio":
            candidate["seconds"] = clip_s
        out.append(candidate)
    return out


def text_confidence(answer: str, earlier_answers: Sequence[str] = ()) -> float:
    """Confidence of an answer from its text alone, by the live check's text signals.

    The live check (:func:`tmo_graph.policy.confidence.confidence`) needs the answer's token
    scores; without them only its text signals remain: a refusal or deferral (0), a
    looping answer (scaled by the share of repeated trigrams beyond LOOP_REPETITION), and an
    answer echoing an earlier one of the dialogue (beyond ECHO_LIMIT), as the live check
    scales them.
    """
    value = 1.0 - refusal([], [], answer)
    loop = repetition([], [], answer)
    if loop > LOOP_REPETITION:
        value *= 1.0 - loop
    if earlier_answers:
        repeated = echo(answer, earlier_answers)
        if repeated > ECHO_LIMIT:
            value *= 1.0 - repeated
    return value


@dataclass(frozen=True)
class RecordedConfidence:
    """The confidence of the local answer of each M4A1 turn, from what a device could see.

    - Turns recorded as local carry the local model's answer: its confidence is the live
      check's on that text (``source="scored"``: the full estimator on the token scores
      cached by ``tmo-graph eval confidence --scored FILE``; ``"text"``: its text signals,
      :func:`text_confidence`). The answer's quality score is never read.
    - Turns recorded as cloud have no local answer to check. Their confidence is the mean of
      the training split's recorded local answers of the same task (all tasks' mean when the
      task has none): an estimate from training data, not from the turn.
    """

    by_turn: dict[tuple[str, int], float]
    prior: dict[str, float]
    default: float
    source: Literal["text", "scored"]

    @classmethod
    def fit(
        cls,
        episodes: Sequence[Episode],
        train: Sequence[Episode],
        scored: Path | None = None,
    ) -> RecordedConfidence:
        """Confidences of every recorded local answer of ``episodes``; priors from ``train``."""
        rows = _load_scored(scored) if scored is not None else None
        by_turn: dict[tuple[str, int], float] = {}
        for episode in episodes:
            earlier: list[str] = []
            queue = list(rows.get(episode.id, [])) if rows is not None else []
            for t, turn in enumerate(episode.turns):
                if turn.action == 0:
                    match = queue[0] if queue and queue[0][0] == turn.answer else None
                    if rows is not None and match is None:
                        raise TmoGraphError(
                            f"{scored} has no token scores for local turn {t} of dialogue "
                            f"{episode.id}",
                            "score every local turn: `tmo-graph eval confidence --scored FILE` "
                            "without --limit, on this dataset",
                        )
                    if match is not None:
                        queue.pop(0)
                        value, _ = confidence(match[1], match[2], turn.answer, earlier)
                    else:
                        value = text_confidence(turn.answer, earlier)
                    by_turn[(episode.id, t)] = value
                earlier.append(turn.answer)
        train_ids = {e.id for e in train}
        per_task: dict[str, list[float]] = defaultdict(list)
        for episode in episodes:
            if episode.id not in train_ids:
                continue
            for t, turn in enumerate(episode.turns):
                if (episode.id, t) in by_turn:
                    per_task[turn.task].append(by_turn[(episode.id, t)])
        every = [v for values in per_task.values() for v in values]
        if not every:
            raise TmoGraphError(
                "the training split has no recorded local answer to estimate confidence from",
                "use a dataset with local turns (M4A1 has 170)",
            )
        return cls(
            by_turn,
            {task: statistics.fmean(values) for task, values in per_task.items()},
            statistics.fmean(every),
            "scored" if rows is not None else "text",
        )

    def __call__(self, episode: Episode, t: int) -> float:
        if (episode.id, t) in self.by_turn:
            return self.by_turn[(episode.id, t)]
        return self.prior.get(episode.turns[t].task, self.default)


def _load_scored(path: Path) -> dict[str, list[tuple[str, list[float], list[float]]]]:
    """(answer, logprobs, entropies) of each scored local turn, per dialogue, in order."""
    try:
        raw = json.loads(Path(path).read_text())
        out: dict[str, list[tuple[str, list[float], list[float]]]] = defaultdict(list)
        for row in raw:
            out[str(row["episode"])].append(
                (str(row["answer"]), list(row["logprobs"]), list(row["entropies"]))
            )
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise TmoGraphError(
            f"{path} is not a file of scored turns ({error})",
            "write it with `tmo-graph eval confidence --scored FILE`",
        ) from None
    return dict(out)


@dataclass(frozen=True)
class TurnDecision:
    """What a hand-written policy did on one simulated turn."""

    action: int  # the simulator's action id of the answer kept
    escalated: bool
    confidence: float | None


@dataclass
class RoutePolicyRunner:
    """Runs a ``Policy`` (RouteInput -> Action) turn by turn in the simulator's world."""

    world: World
    policy: Policy
    confidence: RecordedConfidence
    threshold: float
    min_score: float

    def __post_init__(self) -> None:
        self.actions = sim_actions(self.world)
        if not 0.0 <= self.threshold <= 1.0:
            raise TmoGraphError(f"threshold {self.threshold} is not in [0, 1]", "e.g. 0.5")

    def route_input(
        self, episode: Episode, t: int, history: Sequence[TurnRecord], left: Budget
    ) -> RouteInput:
        turn = episode.turns[t]
        return build_route_input(
            prompt=turn.question,
            task=turn.task,
            turn=t,
            candidates=candidates(
                episode.association[t], self.world.spec.kinds, self.world.settings.audio_clip_s
            ),
            history=tuple(history),  # a snapshot: the caller's list grows
            budget_left=left,
            actions=self.actions,
            cost_model=self.world.cost_model,
            prompt_chars=len(turn.question),
            audio_s=self.world.audio_s,  # clips priced as clips
        )

    def decide(
        self, episode: Episode, t: int, history: Sequence[TurnRecord], left: Budget
    ) -> TurnDecision:
        """The route node's decision, then the confidence check's, for turn ``t``."""
        observation = self.route_input(episode, t, history, left)
        action = self.policy.decide(observation)
        if action not in observation.allowed:  # the budget wins over the policy, as live
            action = LOCAL
        if action != LOCAL or not self.policy.escalates:
            return TurnDecision(self.actions.index(action), False, None)
        value = self.confidence(episode, t)
        if value >= self.threshold:
            return TurnDecision(0, False, value)
        local = observation.allowed[LOCAL]
        after: Budget = {
            "latency_s": left["latency_s"] - local.latency_s,
            "cost_usd": left["cost_usd"] - local.cost_usd,
        }
        target = escalation(self.route_input(episode, t, history, after), self.min_score)
        if target is None:
            return TurnDecision(0, False, value)
        return TurnDecision(self.actions.index(target), True, value)

    def record(
        self,
        episode: Episode,
        t: int,
        decision: TurnDecision,
        latency_s: float,
        cost_usd: float,
        left: Budget,
    ) -> TurnRecord:
        """The turn record the live graph would append (no answer text: none is generated)."""
        action = self.actions[decision.action]
        names = modality_names(self.world.spec.kinds)
        record: TurnRecord = {
            "turn": t,
            "task": episode.turns[t].task,
            "policy": self.policy.name,
            "route": action.route,
            "views_sent": list(action.views),
            "association": dict(zip(names, map(float, episode.association[t]), strict=True)),
            "confidence": decision.confidence,
            "escalated": decision.escalated,
            "fallback": None,
            "latency_s": latency_s,
            "cost_usd": cost_usd,
            "budget_left": left,
            "answer": "",
            "local_answer": None,
        }
        return record
