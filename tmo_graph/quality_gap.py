"""Before any answer is made: how much better would the cloud answer be than the local one?

As Hybrid LLM (Ding et al., ICLR 2024) does, a router can look at the prompt alone and predict
the *quality gap*, cloud score minus local score. M4A1 records one answer per turn, so two
regressors are fit: the score of local answers on the local turns, the score of cloud answers
on the cloud turns; the gap is their difference.

Each side's model is the task's mean score (the task-only baseline) plus a ridge regression of
what is left on the prompt's sentence embedding (optionally with the previous user question's
embedding beside it). The ridge strength, and whether the previous question is used, are chosen
per side by cross-validation over whole dialogues of the training data; a very strong ridge is
the task-only baseline, so the embedding is only used as far as it helps on held-out dialogues.

Scores are in M4A1's units (the judge's score of an answer: local answers 0..4.5, cloud answers
0..9 in the published file), so a gap of 0.5 means the cloud answer is expected to score half a
point more.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from langchain_core.embeddings import Embeddings

from tmo_graph.errors import TmoGraphError
from tmo_graph.sim.data import Dataset, Episode, paper_split

FORMAT = "tmo-graph/quality-gap"
VERSION = 1
# Ridge strengths tried by cross-validation; the largest is, in effect, the task-only model.
DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 4, 13))
CV_FOLDS = 5
Side = Literal["local", "cloud"]
SIDES: tuple[Side, ...] = ("local", "cloud")
_REFIT = "refit: tmo-graph eval gap --data ../shared/data/M4A1.json -o FILE"


@dataclass(frozen=True)
class SideModel:
    """The score of one side's answers: task mean + ridge on the prompt embedding."""

    task_means: dict[str, float]
    mean: float  # for a task the training data never saw
    coef: tuple[float, ...]  # dim numbers, or 2 * dim with the previous question
    intercept: float
    alpha: float
    previous: bool  # whether the previous user question's embedding is a feature
    cv_mse: float  # mean squared error of the chosen setting over the CV folds
    n: int  # training turns

    def predict(
        self, vector: np.ndarray, task: str, previous_vector: np.ndarray | None = None
    ) -> float:
        base = self.task_means.get(task, self.mean)
        if self.previous:
            before = previous_vector if previous_vector is not None else np.zeros_like(vector)
            vector = np.concatenate([vector, before])
        return float(base + self.intercept + np.dot(np.asarray(self.coef), vector))

    def to_json(self) -> dict[str, Any]:
        return {
            "task_means": self.task_means,
            "mean": self.mean,
            "coef": list(self.coef),
            "intercept": self.intercept,
            "alpha": self.alpha,
            "previous": self.previous,
            "cv_mse": self.cv_mse,
            "n": self.n,
        }


@dataclass(frozen=True)
class TrainingRows:
    """Scored turns of a set of dialogues, one row per turn."""

    questions: list[str] = field(default_factory=list)
    previous: list[str] = field(default_factory=list)  # "" on a dialogue's first turn
    tasks: list[str] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)  # dialogue id

    @classmethod
    def from_episodes(cls, episodes: Sequence[Episode]) -> TrainingRows:
        rows = cls()
        for episode in episodes:
            before = ""
            for turn in episode.turns:
                rows.questions.append(turn.question)
                rows.previous.append(before)
                rows.tasks.append(turn.task)
                rows.actions.append(turn.action)
                rows.scores.append(turn.score)
                rows.groups.append(episode.id)
                before = turn.question
        return rows


def embed_texts(texts: Sequence[str], embeddings: Embeddings) -> np.ndarray:
    """Embeddings of ``texts`` (rows); an empty text is the zero vector (no previous question)."""
    unique = sorted({t for t in texts if t})
    table = dict(zip(unique, embeddings.embed_documents(unique), strict=True)) if unique else {}
    if not table:
        raise TmoGraphError("no question text to embed", "give the turns a `question`")
    dim = len(next(iter(table.values())))
    zero = [0.0] * dim
    return np.asarray([table[t] if t else zero for t in texts], dtype=np.float64)


def _task_means(tasks: Sequence[str], y: np.ndarray) -> tuple[dict[str, float], float]:
    means = {
        task: float(np.mean([v for t, v in zip(tasks, y, strict=True) if t == task]))
        for task in sorted(set(tasks))
    }
    return means, float(np.mean(y))


def _baseline(tasks: Sequence[str], means: Mapping[str, float], mean: float) -> np.ndarray:
    return np.asarray([means.get(t, mean) for t in tasks], dtype=np.float64)


def _folds(groups: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Train / validation indices that keep each dialogue on one side (none if < 2 dialogues)."""
    from sklearn.model_selection import GroupKFold

    n_groups = len(set(groups))
    if n_groups < 2:
        return []
    splitter = GroupKFold(n_splits=min(CV_FOLDS, n_groups))
    return list(splitter.split(np.zeros(len(groups)), groups=list(groups)))


def _ridge_path(
    x: np.ndarray, y: np.ndarray, alphas: Sequence[float]
) -> list[tuple[np.ndarray, float]]:
    """Ridge regression (unpenalised intercept) of ``y`` on ``x`` for every alpha, from one SVD.

    The same solution as scikit-learn's ``Ridge(alpha)``: with centred ``x = U S V^T``,
    ``coef = V diag(s / (s^2 + alpha)) U^T y``.
    """
    x_mean, y_mean = x.mean(axis=0), float(y.mean())
    u, s, vt = np.linalg.svd(x - x_mean, full_matrices=False)
    uty = u.T @ (y - y_mean)
    out = []
    for alpha in alphas:
        coef = vt.T @ (s / (s**2 + alpha) * uty)
        out.append((coef, y_mean - float(x_mean @ coef)))
    return out


def fit_side(
    vectors: np.ndarray,
    previous_vectors: np.ndarray,
    tasks: Sequence[str],
    scores: Sequence[float],
    groups: Sequence[str],
    previous: bool | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> SideModel:
    """One side's model; ``previous`` None lets cross-validation decide whether to use it."""
    y = np.asarray(scores, dtype=np.float64)
    if len(y) == 0:
        raise TmoGraphError(
            "no scored turns to fit on for one side (local or cloud)",
            "train on dialogues with both local (action 0) and cloud (action 1) turns",
        )
    settings = [False, True] if previous is None else [previous]
    folds = _folds(groups)
    if not folds:  # one dialogue: nothing to cross-validate on; a middling ridge, no context
        candidates = [(float("nan"), settings[0], float(np.median(alphas)))]
    else:
        candidates = []
        for use_previous in settings:
            x = np.hstack([vectors, previous_vectors]) if use_previous else vectors
            errors = np.zeros((len(folds), len(alphas)))
            for k, (train, valid) in enumerate(folds):
                train_tasks = [tasks[i] for i in train]
                means, mean = _task_means(train_tasks, y[train])
                base_train = _baseline(train_tasks, means, mean)
                base_valid = _baseline([tasks[i] for i in valid], means, mean)
                path = _ridge_path(x[train], y[train] - base_train, alphas)
                for j, (coef, intercept) in enumerate(path):
                    predicted = base_valid + x[valid] @ coef + intercept
                    errors[k, j] = float(np.mean((predicted - y[valid]) ** 2))
            for j, alpha in enumerate(alphas):
                candidates.append((float(errors[:, j].mean()), use_previous, float(alpha)))
    # Lowest CV error; on a tie the first: without the previous question, the weaker ridge.
    best = min(candidates, key=lambda c: c[0]) if folds else candidates[0]
    mse, use_previous, alpha = best
    x = np.hstack([vectors, previous_vectors]) if use_previous else vectors
    means, mean = _task_means(tasks, y)
    ((coef, intercept),) = _ridge_path(x, y - _baseline(tasks, means, mean), [alpha])
    return SideModel(
        task_means=means,
        mean=mean,
        coef=tuple(float(c) for c in coef),
        intercept=intercept,
        alpha=alpha,
        previous=use_previous,
        cv_mse=mse,
        n=len(y),
    )


def _vector(values: Sequence[float] | np.ndarray, dim: int, what: str) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float64).reshape(-1)
    if vector.shape[0] != dim:
        raise TmoGraphError(
            f"{what} has {vector.shape[0]} numbers but the quality-gap predictor was fit on "
            f"{dim}-dimensional embeddings",
            f"use the embedding model it was fit with, or {_REFIT}",
        )
    return vector


@dataclass(frozen=True)
class QualityGapPredictor:
    """Predicted score of the local and of the cloud answer to a prompt, and their gap."""

    dim: int
    local: SideModel
    cloud: SideModel
    embedding: str | None = None  # the embedding model it was fit with, for the reader

    @classmethod
    def fit_vectors(
        cls,
        vectors: np.ndarray,
        tasks: Sequence[str],
        actions: Sequence[int],
        scores: Sequence[float],
        groups: Sequence[str] | None = None,
        previous_vectors: np.ndarray | None = None,
        previous: bool | None = False,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        embedding: str | None = None,
    ) -> QualityGapPredictor:
        """Fit on embedded turns (rows of ``vectors``); ``actions`` 0 local, 1 cloud.

        ``groups``: the dialogue of each turn, so cross-validation never splits one (default:
        every turn its own group). ``previous_vectors``: the previous user question's
        embedding per turn (zeros on a first turn); ``previous`` True uses it, None lets
        cross-validation decide per side, False (default) ignores it.
        """
        x = np.asarray(vectors, dtype=np.float64)
        n = len(tasks)
        if x.ndim != 2 or x.shape[0] != n or not (len(actions) == len(scores) == n):
            raise TmoGraphError(
                f"fit needs one vector, task, action and score per turn (got {x.shape[0]} "
                f"vectors, {n} tasks, {len(actions)} actions, {len(scores)} scores)",
                "pass lists of equal length",
            )
        if previous_vectors is None:
            if previous:
                raise TmoGraphError(
                    "previous=True needs previous_vectors", "pass the previous questions' vectors"
                )
            before = np.zeros_like(x)
        else:
            before = np.asarray(previous_vectors, dtype=np.float64)
        group_ids = list(groups) if groups is not None else [str(i) for i in range(n)]
        sides = {}
        for code, side in enumerate(SIDES):
            rows = [i for i in range(n) if actions[i] == code]
            sides[side] = fit_side(
                x[rows],
                before[rows],
                [tasks[i] for i in rows],
                [scores[i] for i in rows],
                [group_ids[i] for i in rows],
                previous if previous_vectors is not None else False,
                alphas,
            )
        return cls(dim=x.shape[1], local=sides["local"], cloud=sides["cloud"], embedding=embedding)

    @classmethod
    def fit(
        cls,
        questions: Sequence[str],
        tasks: Sequence[str],
        actions: Sequence[int],
        scores: Sequence[float],
        embeddings: Embeddings,
        groups: Sequence[str] | None = None,
        previous_questions: Sequence[str] | None = None,
        previous: bool | None = False,
        embedding: str | None = None,
    ) -> QualityGapPredictor:
        """Embed the questions (and previous questions, "" for none) and fit on them."""
        n = len(questions)
        before = None
        if previous_questions is not None:
            if len(previous_questions) != n:
                raise TmoGraphError(
                    f"{len(previous_questions)} previous questions for {n} questions",
                    'give one previous question per turn ("" on a first turn)',
                )
            both = embed_texts([*questions, *previous_questions], embeddings)
            vectors, before = both[:n], both[n:]
        else:
            vectors = embed_texts(questions, embeddings)
        return cls.fit_vectors(
            vectors, tasks, actions, scores, groups, before, previous, embedding=embedding
        )

    @classmethod
    def fit_dataset(
        cls,
        episodes: Sequence[Episode],
        embeddings: Embeddings,
        previous: bool | None = None,
        embedding: str | None = None,
    ) -> QualityGapPredictor:
        """Fit on every scored turn of ``episodes`` (dialogues kept whole in the CV folds)."""
        rows = TrainingRows.from_episodes(episodes)
        return cls.fit(
            rows.questions,
            rows.tasks,
            rows.actions,
            rows.scores,
            embeddings,
            groups=rows.groups,
            previous_questions=rows.previous,
            previous=previous,
            embedding=embedding,
        )

    def predict_scores(
        self,
        prompt_vector: Sequence[float] | np.ndarray,
        task: str,
        previous_vector: Sequence[float] | np.ndarray | None = None,
    ) -> tuple[float, float]:
        """(predicted local score, predicted cloud score) of the answers to this prompt."""
        vector = _vector(prompt_vector, self.dim, "the prompt vector")
        before = (
            _vector(previous_vector, self.dim, "the previous question's vector")
            if previous_vector is not None
            else None
        )
        return self.local.predict(vector, task, before), self.cloud.predict(vector, task, before)

    def predict_gap(
        self,
        prompt_vector: Sequence[float] | np.ndarray,
        task: str,
        previous_vector: Sequence[float] | np.ndarray | None = None,
    ) -> float:
        """Predicted cloud score minus predicted local score; > 0: the cloud is expected better.

        ``previous_vector``: the embedding of the previous user question, if any (used only by
        a side fit with it; a first turn is the zero vector, as in training).
        """
        local, cloud = self.predict_scores(prompt_vector, task, previous_vector)
        return cloud - local

    def check_dim(self, dim: int, where: str = "the quality-gap predictor") -> None:
        """Fail clearly unless the embedding model in use gives ``dim`` numbers, as at fit."""
        if dim != self.dim:
            raise TmoGraphError(
                f"{where} was fit on {self.dim}-dimensional embeddings "
                f"({self.embedding or 'unknown model'}) but the embedding model gives {dim}",
                f"use the embedding model it was fit with, or {_REFIT}",
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "dim": self.dim,
            "embedding": self.embedding,
            "target": "score",
            "local": self.local.to_json(),
            "cloud": self.cloud.to_json(),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path, dim: int | None = None) -> QualityGapPredictor:
        """Read a saved predictor; ``dim``: the embedding size it must match, if known."""
        path = Path(path)
        if not path.is_file():
            raise TmoGraphError(f"quality-gap predictor {path} does not exist", _REFIT)
        try:
            raw = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise TmoGraphError(
                f"quality-gap predictor {path} is not JSON", f"pass a file written by {_REFIT}"
            ) from None
        try:
            predictor = _parse(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise TmoGraphError(
                f"quality-gap predictor {path} is malformed ({exc})", _REFIT
            ) from None
        if dim is not None:
            predictor.check_dim(dim, str(path))
        return predictor


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    return float(value)


def _parse_side(raw: Any, name: str, dim: int) -> SideModel:
    if not isinstance(raw, dict):
        raise ValueError(f"`{name}` must be an object")
    previous = raw["previous"]
    if not isinstance(previous, bool):
        raise ValueError(f"`{name}.previous` must be true or false")
    coef = raw["coef"]
    width = 2 * dim if previous else dim
    if not isinstance(coef, list) or len(coef) != width:
        raise ValueError(f"`{name}.coef` must list {width} numbers")
    means = raw["task_means"]
    if not isinstance(means, dict) or not all(isinstance(k, str) for k in means):
        raise ValueError(f"`{name}.task_means` must map task names to numbers")
    cv_mse = raw.get("cv_mse")
    return SideModel(
        task_means={k: _finite(v, f"{name}.task_means.{k}") for k, v in means.items()},
        mean=_finite(raw["mean"], f"{name}.mean"),
        coef=tuple(_finite(c, f"{name}.coef") for c in coef),
        intercept=_finite(raw["intercept"], f"{name}.intercept"),
        alpha=_finite(raw["alpha"], f"{name}.alpha"),
        previous=previous,
        cv_mse=float(cv_mse) if isinstance(cv_mse, int | float) else float("nan"),
        n=int(raw.get("n", 0)),
    )


def _parse(raw: Any) -> QualityGapPredictor:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} file")
    if raw.get("version") != VERSION:
        raise ValueError(f"version {raw.get('version')!r}, this tmo-graph reads {VERSION}")
    dim = raw["dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError("`dim` must be a positive integer")
    embedding = raw.get("embedding")
    return QualityGapPredictor(
        dim=dim,
        local=_parse_side(raw["local"], "local", dim),
        cloud=_parse_side(raw["cloud"], "cloud", dim),
        embedding=embedding if isinstance(embedding, str) else None,
    )


# --------------------------------------------------------------------------- evaluation


def _spearman(predicted: Sequence[float], actual: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(predicted)) < 2 or len(set(actual)) < 2:
        return float("nan")
    return float(spearmanr(predicted, actual).statistic)


def _r2(predicted: Sequence[float], actual: Sequence[float]) -> float:
    from sklearn.metrics import r2_score

    return float(r2_score(actual, predicted)) if len(actual) >= 2 else float("nan")


def _auroc(predicted: Sequence[float], positive: Sequence[bool]) -> float:
    from sklearn.metrics import roc_auc_score

    if len(set(positive)) < 2:
        return float("nan")
    return float(roc_auc_score(positive, predicted))


def _metrics(
    predicted: Sequence[float], actual: Sequence[float], median: float
) -> dict[str, float]:
    return {
        "spearman": _spearman(predicted, actual),
        "r2": _r2(predicted, actual),
        "auroc": _auroc(predicted, [a > median for a in actual]),
    }


def evaluate_gap_predictor(
    dataset: Dataset, embeddings: Embeddings, seed: int = 9139, embedding: str | None = None
) -> dict[str, Any]:
    """Fit on the paper's training dialogues of ``seed``, report on its held-out 20 %.

    Per side (local turns, cloud turns), for the predicted score of that side's answers:
    Spearman correlation and R^2 with the actual score, and AUROC for "score above the
    training turns' median". Models: the task-only baseline (mean score per task), the
    embedding with and without the previous question, and the one cross-validation chose
    (the one ``-o`` saves, refit on every dialogue). Also the predicted gap per task next to
    the held-out difference of mean cloud and mean local scores.
    """
    train_eps, test_eps = paper_split(dataset.episodes, seed)
    train, test = TrainingRows.from_episodes(train_eps), TrainingRows.from_episodes(test_eps)
    vectors = embed_texts(
        [*train.questions, *test.questions, *train.previous, *test.previous], embeddings
    )
    n_train, n_test = len(train.questions), len(test.questions)
    x_train, x_test = vectors[:n_train], vectors[n_train : n_train + n_test]
    p_train, p_test = (
        vectors[n_train + n_test : 2 * n_train + n_test],
        vectors[2 * n_train + n_test :],
    )

    def fit(previous: bool | None) -> QualityGapPredictor:
        return QualityGapPredictor.fit_vectors(
            x_train,
            train.tasks,
            train.actions,
            train.scores,
            train.groups,
            p_train,
            previous,
            embedding=embedding,
        )

    fitted = {"prompt": fit(False), "prompt + previous": fit(True)}
    # What fit(previous=None) would choose (same folds): per side, the lower CV error.
    chosen = replace(
        fitted["prompt"],
        **{
            side: min((getattr(f, side) for f in fitted.values()), key=lambda m: m.cv_mse)
            for side in SIDES
        },
    )
    report: dict[str, Any] = {
        "seed": seed,
        "dialogues": {"train": len(train_eps), "test": len(test_eps)},
        "embedding": embedding,
        "dim": chosen.dim,
        "sides": {},
    }
    for code, side in enumerate(SIDES):
        tr = [i for i, a in enumerate(train.actions) if a == code]
        te = [i for i, a in enumerate(test.actions) if a == code]
        actual = [test.scores[i] for i in te]
        median = float(statistics.median(train.scores[i] for i in tr)) if tr else float("nan")
        model: SideModel = getattr(chosen, side)
        baseline = [model.task_means.get(test.tasks[i], model.mean) for i in te]
        rows = {"task only (mean per task)": _metrics(baseline, actual, median)}
        for name, predictor in fitted.items():
            side_model: SideModel = getattr(predictor, side)
            predicted = [side_model.predict(x_test[i], test.tasks[i], p_test[i]) for i in te]
            rows[f"task + {name} embedding"] = _metrics(predicted, actual, median)
        report["sides"][side] = {
            "turns": {"train": len(tr), "test": len(te)},
            "median_score": median,
            "chosen": f"task + {'prompt + previous' if model.previous else 'prompt'} embedding",
            "alpha": model.alpha,
            "models": rows,
        }
    gaps = [chosen.predict_gap(x_test[i], test.tasks[i], p_test[i]) for i in range(n_test)]
    by_task: dict[str, Any] = {}
    for task in dataset.task_names:
        idx = [i for i in range(n_test) if test.tasks[i] == task]
        local = [test.scores[i] for i in idx if test.actions[i] == 0]
        cloud = [test.scores[i] for i in idx if test.actions[i] == 1]
        by_task[task] = {
            "turns": len(idx),
            "predicted_gap": float(np.mean([gaps[i] for i in idx])) if idx else float("nan"),
            "observed_gap": (
                float(np.mean(cloud) - np.mean(local)) if local and cloud else float("nan")
            ),
        }
    report["gap"] = {
        "mean": float(np.mean(gaps)) if gaps else float("nan"),
        "quantiles": {
            q: float(np.quantile(gaps, int(q) / 100)) if gaps else float("nan")
            for q in ("10", "50", "90")
        },
        "by_task": by_task,
    }
    return report


def format_report(report: dict[str, Any]) -> str:
    """The evaluation as a table; ``*`` marks the model cross-validation chose."""
    d = report["dialogues"]
    lines = [
        f"M4A1 quality-gap predictor, seed {report['seed']}: fit on {d['train']} dialogues, "
        f"scored on the {d['test']} held-out ones ({report.get('embedding') or 'embedding'}, "
        f"{report['dim']} dims)",
        f"{'side':<6} {'model':<36} {'Spearman':>8} {'R^2':>7} {'AUROC':>7}",
    ]
    for side, entry in report["sides"].items():
        t = entry["turns"]
        for name, row in entry["models"].items():
            mark = "*" if name == entry["chosen"] else " "
            lines.append(
                f"{side:<6} {mark}{name:<35} {row['spearman']:>8.3f} {row['r2']:>7.3f} "
                f"{row['auroc']:>7.3f}"
            )
        lines.append(
            f"{'':<6} ({t['train']} train / {t['test']} held-out turns; AUROC label: score > "
            f"{entry['median_score']:.3f}, the training median; ridge alpha {entry['alpha']:g})"
        )
    gap = report["gap"]
    q = gap["quantiles"]
    lines.append(
        f"predicted gap (cloud - local) on held-out prompts: mean {gap['mean']:.3f}, "
        f"10/50/90 % {q['10']:.3f} / {q['50']:.3f} / {q['90']:.3f}"
    )
    lines.append(f"{'task':<18} {'turns':>5} {'predicted gap':>14} {'held-out gap':>13}")
    for task, row in gap["by_task"].items():
        lines.append(
            f"{task:<18} {row['turns']:>5} {row['predicted_gap']:>14.3f} "
            f"{row['observed_gap']:>13.3f}"
        )
    return "\n".join(lines)
