"""tmo-graph's own routing policy for the simulator: budget-safe lookahead planning.

The paper's RL policies learn a mapping from the observation to an action. This policy
instead plans with a model of the world learned from the training split:
- the response model (KNN over recorded state-action pairs, fit on the training split only),
- how dialogues go on (task-to-task transition frequencies, and how often a dialogue that
  reached turn t has another turn),
- the current turn's view association scores (known at decision time; the paper's policies
  never see them),
and picks the action maximising this turn's reward plus the expected best reward of the next
turns (expectimax over the next task, ``depth`` turns deep): an action changes the history
the next turns are judged in, which one-step greed ignores. Actions whose cost, together with
the cheapest possible remaining turns, would overdraw either budget are never taken, so no
dialogue goes over budget.

Which response model it plans with: :meth:`LookaheadPlanner.fit_robust` (what the simulator
trains as ``own``) is told nothing about its judge and plans against an ensemble of models
of its training dialogues, risk-adjusted (:mod:`tmo_graph.policy.ensemble`);
:meth:`LookaheadPlanner.fit` plans with one model, the judge's own under the paper's
protocol or, given the judge's size, subset models of that size.

It lives in policy/ with its world models (:mod:`tmo_graph.policy.world`,
:mod:`tmo_graph.policy.knn`): a saved planner is these objects, and the live graph loads it
without the simulator. Fitting reads recorded dialogues through a protocol, not sim's types.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.ensemble import KnnEnsemble, RobustResponse, stacking_weights
from tmo_graph.policy.knn import (
    RecordedDialogue,
    ResponseModel,
    ResponseScorer,
    SubsampleEnsemble,
)
from tmo_graph.policy.observation import ObservationSpec, TurnFeatures, n_actions
from tmo_graph.policy.world import SimSettings, World, min_max


@dataclass
class DialogueModel:
    """What the training split says about how dialogues continue."""

    next_task: dict[int, list[tuple[int, float]]]  # task -> [(next task, probability)]
    continue_prob: list[float]  # P(another turn | turn t reached), index t
    mean_association: list[float]  # per action, mean normalised association score

    @classmethod
    def fit(
        cls, episodes: Sequence[RecordedDialogue], spec: ObservationSpec, world: World
    ) -> DialogueModel:
        transitions: dict[int, Counter[int]] = defaultdict(Counter)
        reached: Counter[int] = Counter()
        went_on: Counter[int] = Counter()
        assoc_sum = np.zeros(n_actions(spec.n_views))
        rows = 0
        for episode in episodes:
            tasks = [spec.task_id(turn.task) for turn in episode.turns]
            for t, task in enumerate(tasks):
                reached[t] += 1
                if t + 1 < len(tasks):
                    went_on[t] += 1
                    transitions[task][tasks[t + 1]] += 1
            for scores in episode.association:
                assoc_sum += np.asarray(min_max(world.association(scores)))
                rows += 1
        horizon = max(reached) + 1 if reached else 1
        return cls(
            next_task={
                task: [(nxt, n / sum(c.values())) for nxt, n in sorted(c.items())]
                for task, c in transitions.items()
            },
            continue_prob=[went_on[t] / reached[t] if reached[t] else 0.0 for t in range(horizon)],
            mean_association=(assoc_sum / max(rows, 1)).tolist(),
        )


@dataclass
class LookaheadPlanner:
    """Budget-safe expectimax over the next turns with the training split's models."""

    world: World  # the planner's own world: its response model is fit on the training split
    dialogues: DialogueModel
    depth: int = 1  # 2 gains nothing measurable on M4A1 and costs 25x the time
    name: str = "own"
    _memo: dict[tuple[tuple[float, ...], int, int], float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # how it was fit (knobs, CV scores)

    @classmethod
    def fit(
        cls,
        episodes: Sequence[RecordedDialogue],
        spec: ObservationSpec,
        settings: SimSettings,
        depth: int = 1,
        judge_dialogues: int | None = None,
    ) -> LookaheadPlanner:
        """Fit on ``episodes``; ``judge_dialogues``: how many dialogues the judge is fit on.

        None: the judge is the response model of these very episodes (the paper's protocol),
        so the planner uses it. A number: the judge is fit on that many other dialogues (the
        held-out protocol), so the planner plans with the expected score of such a judge, the
        mean over models fit on random subsets of that size of its own episodes.
        """
        knn_spec = ObservationSpec(spec.n_views, spec.task_names, spec.time_span, False)
        response: ResponseScorer
        if judge_dialogues is None or judge_dialogues >= len(episodes):
            response = ResponseModel(knn_spec, episodes)
        else:
            response = SubsampleEnsemble(knn_spec, episodes, judge_dialogues)
        world = World(spec, settings, response)
        return cls(world, DialogueModel.fit(episodes, spec, world), depth)

    @classmethod
    def fit_robust(
        cls,
        episodes: Sequence[RecordedDialogue],
        spec: ObservationSpec,
        settings: SimSettings,
        risk: float = 0.0,
        depth: int = 1,
        seed: int = 0,
        centre: str = "all",
    ) -> LookaheadPlanner:
        """Fit for a judge it is told nothing about: it plans with :class:`RobustResponse`
        over a :class:`KnnEnsemble` of its own ``episodes`` (``risk``: see there; the
        simulator's training picks it by cross-validation inside the training split; ``centre``:
        which members give the expected score)."""
        knn_spec = ObservationSpec(spec.n_views, spec.task_names, spec.time_span, False)
        ensemble = KnnEnsemble(knn_spec, episodes, seed=seed)
        weights = stacking_weights(knn_spec, episodes, seed=seed) if centre == "stacked" else None
        response = RobustResponse(ensemble, risk, centre, weights)
        world = World(spec, settings, response)
        planner = cls(world, DialogueModel.fit(episodes, spec, world), depth)
        planner.info = {
            "response": "robust",
            "risk": risk,
            "centre": centre,
            "members": response.ensemble.size,
        }
        return planner

    def with_risk(self, risk: float) -> LookaheadPlanner:
        """This robust planner at another risk (same models, fresh plans)."""
        response = self.world.response
        if not isinstance(response, RobustResponse):
            raise TmoGraphError(
                "only a robust planner has a risk to change", "fit it with fit_robust"
            )
        world = World(self.world.spec, self.world.settings, response.with_risk(risk))
        return LookaheadPlanner(world, self.dialogues, self.depth, info={**self.info, "risk": risk})

    def _reward(self, state: Sequence[float], action: int, association_norm: float) -> float:
        s = self.world.settings
        features = TurnFeatures.from_action(action, self.world.spec.n_views)
        return (
            s.alpha * self.world.response.score(state, features)
            + s.beta_association * association_norm
            - s.beta_latency * self.world.norm_s[action]  # per action: clips cost apart
            - s.beta_usage * self.world.norm_usd[action]
        )

    def _next_state(self, state: Sequence[float], action: int, task: int) -> tuple[float, ...]:
        spec = self.world.spec
        features = TurnFeatures.from_action(action, spec.n_views)
        flags = [0.0] * spec.n_views
        for view in features.views_used:
            flags[view] = 1.0
        return (*state[spec.per_step :], float(features.action), *flags, float(task))

    def _future(self, state: tuple[float, ...], turn: int, depth: int) -> float:
        """Expected best reward of turn ``turn`` onwards, given its window ``state``."""
        if depth == 0 or turn >= len(self.dialogues.continue_prob):
            return 0.0
        key = (state, turn, depth)
        if key not in self._memo:
            best = max(
                self._reward(state, a, self.dialogues.mean_association[a])
                + self._expected_next(state, a, turn, depth - 1)
                for a in range(n_actions(self.world.spec.n_views))
            )
            self._memo[key] = best
        return self._memo[key]

    def _expected_next(self, state: Sequence[float], action: int, turn: int, depth: int) -> float:
        p_more = (
            self.dialogues.continue_prob[turn] if turn < len(self.dialogues.continue_prob) else 0
        )
        if depth == 0 or p_more == 0:
            return 0.0
        task = int(state[-1])
        options = self.dialogues.next_task.get(task, [])
        return p_more * sum(
            p * self._future(self._next_state(state, action, nxt), turn + 1, depth)
            for nxt, p in options
        )

    def __call__(self, obs: np.ndarray, association: Sequence[float] | None = None) -> int:
        spec, world = self.world.spec, self.world
        state = tuple(float(v) for v in obs[: spec.per_step * spec.time_span])
        rows = np.asarray(state).reshape(spec.time_span, spec.per_step)
        turn = int((rows[:, -1] != -1).sum()) - 1  # real (unpadded) rows so far, minus this one
        left = (
            (float(obs[-2]), float(obs[-1]))
            if spec.with_budgets
            else (world.settings.latency_budget_s, world.settings.usage_budget_usd)
        )
        # Later turns can always fall back to local: keep room for them.
        turns_after = max(len(self.dialogues.continue_prob) - 1 - turn, 0)
        reserve_s, reserve_usd = turns_after * world.local_s, turns_after * world.local_usd
        assoc_norm = (
            min_max(world.association(association))
            if association is not None
            else self.dialogues.mean_association
        )
        best_action, best_value = 0, -np.inf
        for action in range(n_actions(spec.n_views)):
            seconds, usd = world.cost(action)
            if action and (seconds + reserve_s > left[0] or usd + reserve_usd > left[1]):
                continue
            value = self._reward(state, action, assoc_norm[action])
            value += self._expected_next(state, action, turn, self.depth)
            if value > best_value:
                best_action, best_value = action, value
        return best_action
