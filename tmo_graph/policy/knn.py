"""The response-score model: inverse-distance-weighted 5-NN over recorded (state, action) rows.

It lives in policy/ because the own planner (:mod:`tmo_graph.policy.planner`) plans with it
at run time: a saved planner carries one, and the live graph must load it without the
simulator. The simulator's judge is the same model (re-exported by ``tmo_graph.policy.knn``).

Faithful to the published code, ties included: rows are ordered with ``numpy.lexsort`` over
their columns (last column the primary key) and searched with scikit-learn's kd-tree; among
equidistant rows that order decides which neighbours count. States are small integers, so
queries repeat: answers are cached, which changes nothing but the speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.observation import ObservationSpec, TurnFeatures, window_state


class RecordedTurn(Protocol):
    """A recorded turn (``tmo_graph.sim.data.Turn`` is one): what the models learn from."""

    @property
    def task(self) -> str: ...
    @property
    def action(self) -> int: ...
    @property
    def views(self) -> tuple[int, ...] | None: ...
    @property
    def label(self) -> float: ...


class RecordedDialogue(Protocol):
    """A recorded dialogue (``tmo_graph.sim.data.Episode`` is one)."""

    @property
    def turns(self) -> Sequence[RecordedTurn]: ...
    @property
    def association(self) -> Sequence[Sequence[float]]: ...


def one_hot(features: TurnFeatures, n_views: int) -> list[float]:
    """``[cloud?, view flags...]`` of an action (all zeros for local)."""
    row = [float(features.action)] + [0.0] * n_views
    for view in features.views_used:
        row[1 + view] = 1.0
    return row


def recorded_features(episode: RecordedDialogue) -> list[TurnFeatures]:
    """The recorded actions of an episode as TurnFeatures."""
    out = []
    for turn in episode.turns:
        used = turn.views if turn.action == 1 and turn.views is not None else ()
        out.append(TurnFeatures(turn.action, tuple(used)))
    return out


class ResponseScorer(Protocol):
    """Anything that scores an action in a window state: the judge, or a policy's estimate."""

    def score(self, state: Sequence[float], action: TurnFeatures) -> float: ...


def response_rows(
    spec: ObservationSpec, episodes: Sequence[RecordedDialogue]
) -> tuple[np.ndarray, np.ndarray]:
    """Every recorded turn as a ``(window state + action one-hot)`` row and its label.

    Rows come in the published code's ``numpy.lexsort`` order (last column the primary key):
    among equidistant rows that order decides which neighbours a KNN keeps.
    """
    rows, labels = [], []
    for episode in episodes:
        features = recorded_features(episode)
        tasks = [spec.task_id(turn.task) for turn in episode.turns]
        for t, turn in enumerate(episode.turns):
            state = window_state(spec, features[:t], tasks[: t + 1])
            rows.append(state + one_hot(features[t], spec.n_views))
            labels.append(turn.label)
    if not rows:
        raise TmoGraphError(
            "the response model needs recorded turns to learn from; the split has none",
            "use a dataset with more dialogues (the test split takes 20 %)",
        )
    pairs = np.asarray(rows, dtype=np.float64)
    order = np.lexsort(pairs.T)
    return pairs[order], np.asarray(labels, dtype=np.float64)[order]


KNN_WEIGHTS = ("distance", "uniform")


class ResponseModel:
    """Scores an action in a window state by the labels of the ``k`` nearest recorded pairs.

    ``weights``: "distance" (the published 1 / (distance + 1e-6)) or "uniform" (plain mean).
    """

    def __init__(
        self,
        spec: ObservationSpec,
        episodes: Sequence[RecordedDialogue],
        k: int = 5,
        weights: str = "distance",
    ) -> None:
        from sklearn.neighbors import NearestNeighbors

        if k < 1:
            raise TmoGraphError(f"a KNN needs k >= 1 neighbours, got {k}", "use e.g. k=5")
        if weights not in KNN_WEIGHTS:
            raise TmoGraphError(f"unknown KNN weights {weights!r}", "use distance or uniform")
        self.spec = spec
        self.pairs, self.labels = response_rows(spec, episodes)
        self.k = min(k, len(self.pairs))
        self.weights = weights
        self._nn = NearestNeighbors(algorithm="kd_tree", n_neighbors=self.k, metric="euclidean")
        self._nn.fit(self.pairs)
        self._cache: dict[tuple[float, ...], float] = {}

    def score(self, state: Sequence[float], action: TurnFeatures) -> float:
        key = (*state, *one_hot(action, self.spec.n_views))
        if key not in self._cache:
            distances, indices = self._nn.kneighbors([list(key)])
            # getattr: planner files pickled before ``weights`` existed are distance-weighted.
            if getattr(self, "weights", "distance") == "uniform":
                self._cache[key] = float(np.mean(self.labels[indices]))
            else:
                weights = 1.0 / (distances + 1e-6)
                self._cache[key] = float(np.average(self.labels[indices], weights=weights))
        return self._cache[key]


class SubsampleEnsemble:
    """The expected score of a response model fit on ``size`` dialogues like these.

    A judge fit on few dialogues scores differently from one fit on many: its nearest
    recorded pairs are farther away and often of other actions. When a policy will be judged
    by a model fit on ``size`` unseen dialogues (the held-out protocol), the best estimate it
    can make from its own data is the mean over models fit on random ``size``-dialogue
    subsets of it. ``members`` subsets, drawn reproducibly from ``seed``.
    """

    def __init__(
        self,
        spec: ObservationSpec,
        episodes: Sequence[RecordedDialogue],
        size: int,
        members: int = 10,
        seed: int = 0,
    ) -> None:
        if not 1 <= size <= len(episodes):
            raise TmoGraphError(
                f"subsets of {size} dialogues cannot be drawn from {len(episodes)}",
                "give a judge size between 1 and the number of training dialogues",
            )
        rng = np.random.default_rng(seed)
        self.spec = spec
        self.models = [
            ResponseModel(spec, [episodes[i] for i in rng.choice(len(episodes), size, False)])
            for _ in range(members)
        ]
        self._cache: dict[tuple[tuple[float, ...], TurnFeatures], float] = {}

    def score(self, state: Sequence[float], action: TurnFeatures) -> float:
        key = (tuple(state), action)
        if key not in self._cache:
            self._cache[key] = float(np.mean([m.score(state, action) for m in self.models]))
        return self._cache[key]
