"""A response model that knows how unsure it is: KNN models fit on resamples of the dialogues.

Whoever judges a routing policy scores its answers with some model of recorded answers that
the policy does not know: fit on other dialogues, on more or fewer of them, with another k.
A planner that trusts one model of its own ends up predicting that model. This one keeps
many: inverse-distance KNN models (several k) fit on random subsets of several sizes of its
training dialogues, all of them included. Their spread on an action, relative to answering
on the device, is the planner's uncertainty about that action; :class:`RobustResponse`
scores an action by a centre (the members' mean, the mean of those fit on every dialogue,
or a stacked blend) minus ``risk`` times that spread, so a cloud call is chosen where the
models agree it pays, not where one of them happens to say so.

The members are scored together with numpy (all actions of a state in one pass, cached per
state): a planner asks about the same few states many times.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.knn import RecordedDialogue, one_hot, response_rows
from tmo_graph.policy.observation import ObservationSpec, TurnFeatures, view_subsets

Hot = tuple[float, ...]  # an action's one-hot row, as the response models read it
# Shares of the training dialogues each subset takes, and how many subsets of each share.
DEFAULT_FRACTIONS = ((0.125, 4), (0.25, 4), (0.5, 4), (1.0, 1))
DEFAULT_KS = (3, 5, 10)
# Where an action's expected score comes from: every member ("all"), or only the members fit
# on all the training dialogues ("full", the best estimate; the subsets then only inform
# the spread), or weighted by how well each predicts unseen dialogues ("stacked",
# :func:`stacking_weights`).
CENTRES = ("all", "full", "stacked")


class KnnEnsemble:
    """Inverse-distance KNN models (each k of ``ks``) on random subsets of ``episodes``."""

    def __init__(
        self,
        spec: ObservationSpec,
        episodes: Sequence[RecordedDialogue],
        fractions: Sequence[tuple[float, int]] = DEFAULT_FRACTIONS,
        ks: Sequence[int] = DEFAULT_KS,
        seed: int = 0,
    ) -> None:
        if not episodes:
            raise TmoGraphError("an ensemble needs dialogues to learn from", "give a split")
        if not ks or min(ks) < 1:
            raise TmoGraphError(f"ks {list(ks)} must be >= 1", "e.g. (3, 5, 10)")
        if not fractions or any(not 0 < f <= 1 or n < 1 for f, n in fractions):
            raise TmoGraphError(
                f"fractions {list(fractions)} must be (share in (0, 1], count >= 1) pairs",
                "e.g. ((0.25, 4), (1.0, 1))",
            )
        self.spec = spec
        blocks = [response_rows(spec, [episode]) for episode in episodes]
        rows = np.concatenate([b[0] for b in blocks])
        labels = np.concatenate([b[1] for b in blocks])
        owner = np.concatenate([np.full(len(b[1]), i) for i, b in enumerate(blocks)])
        order = np.lexsort(rows.T)  # the published row order, as every KNN here
        self.rows, self.labels = rows[order], labels[order]
        self.owner = owner[order]  # index of the dialogue each row comes from
        rng = np.random.default_rng(seed)
        masks = []
        for fraction, count in fractions:
            size = max(1, round(fraction * len(episodes)))
            for _ in range(count if size < len(episodes) else 1):
                chosen = rng.choice(len(episodes), size, replace=False)
                masks.append(np.isin(self.owner, chosen))
        self.masks = np.asarray(masks)
        self.ks = tuple(ks)
        self._cache: dict[tuple[float, ...], tuple[dict[Hot, int], np.ndarray]] = {}

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_cache": {}}  # a saved planner carries no cached scores

    def full_members(self) -> np.ndarray:
        """Indices (rows of :meth:`member_scores`) of the members fit on every dialogue."""
        full = np.flatnonzero(self.masks.all(axis=1))
        if not len(full):
            raise TmoGraphError(
                "no member is fit on all the dialogues", "include (1.0, 1) in the fractions"
            )
        return np.concatenate([full + i * len(self.masks) for i in range(len(self.ks))])

    @property
    def size(self) -> int:
        return len(self.masks) * len(self.ks)

    def _queries(self, state: Sequence[float]) -> tuple[dict[Hot, int], np.ndarray]:
        x = self.spec.n_views
        # Local, then every cloud action (view_subsets starts with text only, no view).
        actions = [TurnFeatures(0)] + [TurnFeatures(1, views) for views in view_subsets(x)]
        hots = [tuple(one_hot(a, x)) for a in actions]
        queries = np.asarray([[*state, *h] for h in hots], dtype=np.float64)
        return {h: i for i, h in enumerate(hots)}, queries

    def member_scores(self, state: Sequence[float]) -> tuple[dict[Hot, int], np.ndarray]:
        """``(one-hot -> column, scores)``: every member's score (rows) of every action."""
        key = tuple(state)
        if key not in self._cache:
            index, queries = self._queries(state)
            self._cache[key] = (index, self.predict(queries))  # (members, actions)
        return self._cache[key]

    def predict(self, queries: np.ndarray) -> np.ndarray:
        """Every member's prediction (rows) for every ``(state + one-hot)`` query (columns)."""
        distances = np.sqrt(((queries[:, None, :] - self.rows[None]) ** 2).sum(-1))
        masked = np.where(self.masks[:, None, :], distances[None], np.inf)  # (S, Q, R)
        k_max = min(max(self.ks), self.rows.shape[0])
        nearest = np.argsort(masked, axis=-1, kind="stable")[..., :k_max]
        near_d = np.take_along_axis(masked, nearest, -1)
        near_y = self.labels[nearest]
        counts = self.masks.sum(1)[:, None, None]
        out = []
        for k in self.ks:
            # Subsets with fewer rows than k use all they have (inf distances weigh 0).
            weights = 1.0 / (near_d[..., :k] + 1e-6)
            weights = np.where(np.arange(min(k, k_max)) < counts, weights, 0.0)
            out.append((weights * near_y[..., :k]).sum(-1) / weights.sum(-1))
        return np.concatenate(out)


def stacking_weights(
    spec: ObservationSpec, episodes: Sequence[RecordedDialogue], folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Members' weights (>= 0, sum 1) that best predict dialogues the members never saw.

    Cross-validation inside ``episodes``: an ensemble is fit on all folds but one and its
    members predict the recorded turns of the held-out fold; the weights are the
    non-negative least squares fit of those predictions to the recorded responses.
    """
    from scipy.optimize import nnls

    if not 2 <= folds <= len(episodes):
        raise TmoGraphError(
            f"{folds} stacking folds for {len(episodes)} dialogues", "use 2 <= folds <= dialogues"
        )
    parts = np.array_split(np.random.default_rng(seed).permutation(len(episodes)), folds)
    predictions, labels = [], []
    for part in parts:
        held = set(int(i) for i in part)
        fit = [e for i, e in enumerate(episodes) if i not in held]
        rows, y = response_rows(spec, [episodes[i] for i in sorted(held)])
        predictions.append(KnnEnsemble(spec, fit, seed=seed).predict(rows))
        labels.append(y)
    weights, _ = nnls(np.concatenate(predictions, axis=1).T, np.concatenate(labels))
    if weights.sum() <= 0:  # nothing fits: fall back to the plain mean
        return np.full(len(weights), 1.0 / len(weights))
    return np.asarray(weights / weights.sum())


class RobustResponse:
    """An action's score: the ensemble's centre minus ``risk`` x its spread relative to local.

    The spread is the standard deviation over members of (score of the action - score of
    answering locally), so local itself carries none: with ``risk`` > 0 a cloud call has to
    beat the device under most models, not on average only.
    """

    def __init__(
        self,
        ensemble: KnnEnsemble,
        risk: float = 0.0,
        centre: str = "all",
        weights: np.ndarray | None = None,
    ) -> None:
        if risk < 0:
            raise TmoGraphError(f"risk {risk} is negative", "use 0 (expected value) or more")
        if centre not in CENTRES:
            raise TmoGraphError(f"unknown centre {centre!r}", f"use one of: {', '.join(CENTRES)}")
        if (centre == "stacked") != (weights is not None) or (
            weights is not None and weights.shape != (ensemble.size,)
        ):
            raise TmoGraphError(
                "stacking weights go with centre 'stacked' only, one per member",
                "pass stacking_weights(...) with centre='stacked', or neither",
            )
        self.ensemble = ensemble
        self.risk = risk
        self.centre = centre
        self.weights = weights
        self._cache: dict[tuple[float, ...], tuple[dict[Hot, int], np.ndarray]] = {}

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_cache": {}}

    def with_risk(self, risk: float) -> RobustResponse:
        """The same members (and their cached scores) at another risk."""
        return RobustResponse(self.ensemble, risk, self.centre, self.weights)

    def score(self, state: Sequence[float], action: TurnFeatures) -> float:
        key = tuple(state)
        if key not in self._cache:
            index, scores = self.ensemble.member_scores(state)
            local = scores[:, index[tuple(one_hot(TurnFeatures(0), self.ensemble.spec.n_views))]]
            spread = (scores - local[:, None]).std(axis=0)
            if self.weights is not None:
                centre = self.weights @ scores
            elif self.centre == "full":
                centre = scores[self.ensemble.full_members()].mean(axis=0)
            else:
                centre = scores.mean(axis=0)
            self._cache[key] = (index, centre - self.risk * spread)
        index, values = self._cache[key]
        return float(values[index[tuple(one_hot(action, self.ensemble.spec.n_views))]])
