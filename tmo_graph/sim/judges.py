"""A battery of judges for the benchmark: response models fit on the test split, several ways.

A policy that plans with a model of its evaluator can look better than it is. The battery
judges every method with other models of the same test-split rows, so a lead has to hold
under all of them. A judge is named by a spec:

- ``knn:k=K`` and ``knn:k=K,weights=uniform``: a KNN on every test row (inverse-distance
  weights by default; ``knn:k=5`` is the held-out protocol's judge),
- ``cross:folds=F,repeats=R``: each of F parts of the test dialogues judged by a 5-NN fit
  on the other parts, averaged over R random partitions (``k=`` and ``weights=`` too),
- ``loo``: each dialogue judged by a 5-NN fit on all the others (``k=``, ``weights=``),
- ``sklearn:MODULE.CLASS``: any scikit-learn regressor with default settings
  (``random_state=0`` where it has one), fit on the KNN's rows and labels.

With ``cross`` and ``loo`` nothing judged was in its judge's fit.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.knn import (
    KNN_WEIGHTS,
    ResponseModel,
    ResponseScorer,
    one_hot,
    response_rows,
)
from tmo_graph.policy.observation import ObservationSpec, TurnFeatures
from tmo_graph.sim.data import Episode
from tmo_graph.sim.evaluate import EpisodeJudge

DEFAULT_BATTERY = ("knn:k=3", "knn:k=5", "knn:k=10", "cross:folds=2,repeats=10", "loo")
_KINDS = {
    "knn": {"k": "5", "weights": "distance"},
    "cross": {"folds": "2", "repeats": "10", "k": "5", "weights": "distance"},
    "loo": {"k": "5", "weights": "distance"},
}
_EXAMPLES = "knn:k=5, knn:k=5,weights=uniform, cross:folds=2,repeats=10, loo, " + (
    "sklearn:linear_model.Ridge"
)


@dataclass(frozen=True)
class JudgeSpec:
    """A parsed judge spec: its kind and its settings (every one given or defaulted)."""

    text: str  # as given: the judge's name in tables and JSON
    kind: str
    params: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str:
        return dict(self.params)[key]

    def integer(self, key: str, low: int) -> int:
        value = self.get(key)
        try:
            number = int(value)
        except ValueError:
            number = low - 1
        if number < low:
            raise TmoGraphError(
                f"judge {self.text!r}: {key}={value} is not a whole number >= {low}",
                f"e.g. {key}={max(low, 2)}",
            )
        return number


def parse_judge(text: str) -> JudgeSpec:
    """``knn:k=5`` -> JudgeSpec; a bad spec names what was wrong and the accepted forms."""
    spec = text.strip()
    kind, _, rest = spec.partition(":")
    if kind == "sklearn":
        module, _, name = rest.rpartition(".")
        if not module or not name:
            raise TmoGraphError(
                f"judge {text!r} does not name a scikit-learn class",
                "use sklearn:MODULE.CLASS, e.g. sklearn:linear_model.Ridge",
            )
        parsed = JudgeSpec(spec, kind, (("class", rest),))
        _regressor_class(parsed)  # fail now, not after training every method
        return parsed
    if kind not in _KINDS:
        raise TmoGraphError(f"unknown judge {text!r}", f"use one of: {_EXAMPLES}")
    params = dict(_KINDS[kind])
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in params:
            raise TmoGraphError(
                f"judge {text!r}: {item!r} is not a setting of {kind}",
                f"{kind} takes " + ", ".join(f"{k}=..." for k in params),
            )
        params[key] = value
    parsed = JudgeSpec(spec, kind, tuple(sorted(params.items())))
    parsed.integer("k", 1)
    if parsed.get("weights") not in KNN_WEIGHTS:
        raise TmoGraphError(
            f"judge {text!r}: weights={parsed.get('weights')} is not a KNN weighting",
            "use weights=distance or weights=uniform",
        )
    if kind == "cross":
        parsed.integer("folds", 2)
        parsed.integer("repeats", 1)
    return parsed


def parse_judges(texts: Sequence[str] | None) -> list[JudgeSpec]:
    """The battery: the given specs (none twice), or the default one."""
    specs = [parse_judge(t) for t in (texts or DEFAULT_BATTERY)]
    names = [s.text for s in specs]
    if len(set(names)) != len(names):
        raise TmoGraphError(f"a judge is given twice in {names}", "give each --judge once")
    return specs


def _regressor_class(spec: JudgeSpec) -> Any:
    module_name, _, class_name = spec.get("class").rpartition(".")
    try:
        module = importlib.import_module(f"sklearn.{module_name}")
    except ImportError:
        raise TmoGraphError(
            f"judge {spec.text!r}: there is no module sklearn.{module_name}",
            "name a scikit-learn module, e.g. sklearn:linear_model.Ridge",
        ) from None
    cls = getattr(module, class_name, None)
    from sklearn.base import BaseEstimator, is_regressor

    name = f"sklearn.{module_name}.{class_name}"
    if not (isinstance(cls, type) and issubclass(cls, BaseEstimator)):
        raise TmoGraphError(
            f"judge {spec.text!r}: {name} is not a regressor",
            "name a scikit-learn regressor class, e.g. sklearn:ensemble.RandomForestRegressor",
        )
    try:
        instance = cls()
    except TypeError:
        raise TmoGraphError(
            f"judge {spec.text!r}: {name} cannot be made with default settings",
            "name a regressor whose settings all have defaults, e.g. sklearn:linear_model.Ridge",
        ) from None
    if not is_regressor(instance):
        raise TmoGraphError(
            f"judge {spec.text!r}: {name} is not a regressor",
            "name a scikit-learn regressor class, e.g. sklearn:ensemble.RandomForestRegressor",
        )
    return cls


class RegressorScorer:
    """A scikit-learn regressor fit on the KNN's rows (window state + action) and labels."""

    def __init__(
        self, spec: ObservationSpec, episodes: Sequence[Episode], estimator_class: Any
    ) -> None:
        self.spec = spec
        estimator = estimator_class()
        if "random_state" in estimator.get_params():
            estimator.set_params(random_state=0)
        pairs, labels = response_rows(spec, episodes)
        self.estimator = estimator.fit(pairs, labels)
        self._cache: dict[tuple[float, ...], float] = {}

    def score(self, state: Sequence[float], action: TurnFeatures) -> float:
        key = (*state, *one_hot(action, self.spec.n_views))
        if key not in self._cache:
            row = np.asarray([key], dtype=np.float64)
            self._cache[key] = float(self.estimator.predict(row)[0])
        return self._cache[key]


class MeanScorer:
    """The mean score of several judges (a cross-judge's repeats)."""

    def __init__(self, scorers: Sequence[ResponseScorer]) -> None:
        self.scorers = list(scorers)

    def score(self, state: Sequence[float], action: TurnFeatures) -> float:
        return float(np.mean([s.score(state, action) for s in self.scorers]))


def constant_judge(scorer: ResponseScorer) -> EpisodeJudge:
    """One scorer for every dialogue."""
    return lambda i: scorer


def build_judge(
    spec: JudgeSpec, knn_spec: ObservationSpec, episodes: Sequence[Episode], seed: int
) -> EpisodeJudge:
    """The judge of ``episodes`` (the test split): index i -> the scorer of ``episodes[i]``.

    ``seed`` draws the cross-judge's partitions (reproducible, different per split).
    """
    if spec.kind == "sklearn":
        return constant_judge(RegressorScorer(knn_spec, episodes, _regressor_class(spec)))
    k, weights = spec.integer("k", 1), spec.get("weights")

    def knn(indices: Sequence[int]) -> ResponseModel:
        return ResponseModel(knn_spec, [episodes[i] for i in indices], k=k, weights=weights)

    n = len(episodes)
    if spec.kind == "knn":
        return constant_judge(knn(range(n)))
    if n < 2:
        raise TmoGraphError(
            f"judge {spec.text!r} needs at least 2 test dialogues, the split has {n}",
            "use a larger dataset or a knn judge",
        )
    if spec.kind == "loo":
        loo = [knn([j for j in range(n) if j != i]) for i in range(n)]
        return lambda i: loo[i]
    folds, repeats = spec.integer("folds", 2), spec.integer("repeats", 1)
    if folds > n:
        raise TmoGraphError(
            f"judge {spec.text!r}: {folds} folds of {n} test dialogues",
            f"use folds between 2 and {n}",
        )
    per_episode: list[list[ResponseScorer]] = [[] for _ in range(n)]
    rng = np.random.default_rng([seed, folds, repeats])
    for _ in range(repeats):
        parts = np.array_split(rng.permutation(n), folds)
        for part in parts:
            held = set(int(i) for i in part)
            model = knn([j for j in range(n) if j not in held])
            for i in held:
                per_episode[i].append(model)
    cross = [MeanScorer(scorers) for scorers in per_episode]
    return lambda i: cross[i]


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean of ``a[i] - b[i]`` and its standard error (sample std / sqrt(n))."""
    if len(a) != len(b) or len(a) < 2:
        raise TmoGraphError(
            f"paired rewards of {len(a)} and {len(b)} dialogues",
            "compare two methods on the same test dialogues, at least 2 of them",
        )
    diffs = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    se = float(diffs.std(ddof=1) / math.sqrt(len(diffs)))
    return {"mean": float(diffs.mean()), "se": se, "n": len(diffs)}
