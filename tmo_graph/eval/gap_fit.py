"""Fit and evaluate the quality-gap predictor (:mod:`tmo_graph.models.gap`) on M4A1.

M4A1 records one answer per turn, so two regressors are fit: the score of local answers on
the local turns, the score of cloud answers on the cloud turns; the gap is their difference.
Each side is the task's mean score (the task-only baseline) plus a scikit-learn ``Ridge`` of
what is left on the prompt's sentence embedding (optionally with the previous user question's
embedding beside it). The ridge strength, and whether the previous question is used, are
chosen per side by ``GridSearchCV`` over ``GroupKFold`` folds of whole dialogues of the
training data; the task means are refit inside every fold, so a fold's validation dialogues
never inform its baseline. A very strong ridge is the task-only baseline, so the embedding is
only used as far as it helps on held-out dialogues.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold

from tmo_graph.errors import TmoGraphError
from tmo_graph.eval import metrics
from tmo_graph.eval.tables import render, table
from tmo_graph.models.gap import QualityGapPredictor, SideModel
from tmo_graph.sim.data import Dataset, Episode, paper_split

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

    from tmo_graph.settings import Settings

# Ridge strengths tried by cross-validation; the largest is, in effect, the task-only model.
DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 4, 13))
CV_FOLDS = 5
Side = Literal["local", "cloud"]
SIDES: tuple[Side, ...] = ("local", "cloud")


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
    if not unique:
        raise TmoGraphError("no question text to embed", "give the turns a `question`")
    table_ = dict(zip(unique, embeddings.embed_documents(unique), strict=True))
    zero = [0.0] * len(next(iter(table_.values())))
    return np.asarray([table_[t] if t else zero for t in texts], dtype=np.float64)


class TaskMeanRidge(RegressorMixin, BaseEstimator):
    """Task mean + ``Ridge`` on the embedding, as a scikit-learn estimator.

    Its input rows are ``[task code, prompt vector (dim), previous vector (dim)]`` so that
    ``GridSearchCV`` can split them; the task means are fit on whatever rows ``fit`` gets, so
    a fold's validation dialogues never inform its baseline.
    """

    def __init__(self, dim: int, previous: bool = False, alpha: float = 1.0) -> None:
        self.dim = dim
        self.previous = previous
        self.alpha = alpha

    def _split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        width = 1 + (2 if self.previous else 1) * self.dim
        return x[:, 0].astype(int), x[:, 1:width]

    def _base(self, codes: np.ndarray) -> np.ndarray:
        return np.asarray([self.means_.get(c, self.mean_) for c in codes], dtype=np.float64)

    def fit(self, x: np.ndarray, y: np.ndarray) -> TaskMeanRidge:
        codes, features = self._split(x)
        self.means_ = {int(c): float(np.mean(y[codes == c])) for c in np.unique(codes)}
        self.mean_ = float(np.mean(y))
        self.ridge_ = Ridge(alpha=self.alpha).fit(features, y - self._base(codes))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        codes, features = self._split(x)
        prediction: np.ndarray = self._base(codes) + self.ridge_.predict(features)
        return prediction


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
    if not alphas or any(a <= 0 for a in alphas):
        raise TmoGraphError(f"ridge strengths {list(alphas)} are not all > 0", "e.g. 0.1, 1, 10")
    names = sorted(set(tasks))
    codes = np.asarray([names.index(t) for t in tasks], dtype=np.float64)
    x = np.column_stack([codes, vectors, previous_vectors])
    dim = vectors.shape[1]
    settings = [False, True] if previous is None else [previous]
    n_groups = len(set(groups))
    if n_groups < 2:  # one dialogue: nothing to cross-validate on; a middling ridge, no context
        model = TaskMeanRidge(dim, settings[0], float(np.median(alphas))).fit(x, y)
        cv_mse = float("nan")
    else:
        # One grid per setting, without the previous question first: on a CV tie the first
        # candidate wins, i.e. no previous question and the weaker ridge.
        grid = [{"previous": [p], "alpha": [float(a) for a in alphas]} for p in settings]
        search = GridSearchCV(
            TaskMeanRidge(dim, settings[0], float(alphas[0])),
            grid,
            scoring="neg_mean_squared_error",
            cv=GroupKFold(n_splits=min(CV_FOLDS, n_groups)),
            error_score="raise",
        ).fit(x, y, groups=list(groups))
        model, cv_mse = search.best_estimator_, -float(search.best_score_)
    return SideModel(
        task_means={names[c]: m for c, m in model.means_.items()},
        mean=model.mean_,
        coef=tuple(float(c) for c in model.ridge_.coef_),
        intercept=float(model.ridge_.intercept_),
        alpha=float(model.alpha),
        previous=bool(model.previous),
        cv_mse=cv_mse,
        n=len(y),
    )


def fit_vectors(
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
    every turn its own group). ``previous_vectors``: the previous user question's embedding
    per turn (zeros on a first turn); ``previous`` True uses it, None lets cross-validation
    decide per side, False (default) ignores it.
    """
    x = np.asarray(vectors, dtype=np.float64)
    n = len(tasks)
    if x.ndim != 2 or x.shape[0] != n or not (len(actions) == len(scores) == n):
        raise TmoGraphError(
            f"fit needs one vector, task, action and score per turn (got {len(x)} "
            f"vectors, {n} tasks, {len(actions)} actions, {len(scores)} scores)",
            "pass lists of equal length and a 2-D array of vectors",
        )
    if any(a not in (0, 1) for a in actions):
        raise TmoGraphError("actions must be 0 (local) or 1 (cloud)", "pass M4A1 action codes")
    if previous_vectors is None:
        if previous:
            raise TmoGraphError(
                "previous=True needs previous_vectors", "pass the previous questions' vectors"
            )
        before = np.zeros_like(x)
    else:
        before = np.asarray(previous_vectors, dtype=np.float64)
        if before.shape != x.shape:
            raise TmoGraphError(
                f"previous_vectors has shape {before.shape}, the vectors {x.shape}",
                "give one previous vector per turn (zeros on a first turn)",
            )
    group_ids = list(groups) if groups is not None else [str(i) for i in range(n)]
    if len(group_ids) != n:
        raise TmoGraphError(f"{len(group_ids)} groups for {n} turns", "one dialogue id per turn")
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
    return QualityGapPredictor(
        dim=x.shape[1], local=sides["local"], cloud=sides["cloud"], embedding=embedding
    )


def fit(
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
    return fit_vectors(
        vectors, tasks, actions, scores, groups, before, previous, embedding=embedding
    )


def fit_dataset(
    episodes: Sequence[Episode],
    embeddings: Embeddings,
    previous: bool | None = None,
    embedding: str | None = None,
) -> QualityGapPredictor:
    """Fit on every scored turn of ``episodes`` (dialogues kept whole in the CV folds)."""
    if not episodes:
        raise TmoGraphError("no dialogues to fit the quality-gap predictor on", "pass M4A1")
    rows = TrainingRows.from_episodes(episodes)
    return fit(
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


# --------------------------------------------------------------------------- evaluation


def _metrics(
    predicted: Sequence[float], actual: Sequence[float], median: float
) -> dict[str, float]:
    return {
        "spearman": metrics.spearman(predicted, actual),
        "r2": metrics.r2(predicted, actual),
        "auroc": metrics.auroc(predicted, [a > median for a in actual]),
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
    if not train_eps or not test_eps:
        raise TmoGraphError(
            f"seed {seed}'s split of {len(dataset.episodes)} dialogues leaves one side empty",
            "evaluate on at least 5 dialogues",
        )
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

    def fit_train(previous: bool) -> QualityGapPredictor:
        return fit_vectors(
            x_train,
            train.tasks,
            train.actions,
            train.scores,
            train.groups,
            p_train,
            previous,
            embedding=embedding,
        )

    fitted = {"prompt": fit_train(False), "prompt + previous": fit_train(True)}
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


def run_gap_eval(
    data: str | Path,
    settings: Settings,
    seed: int = 9139,
    output: str | Path | None = None,
) -> tuple[dict[str, Any], QualityGapPredictor | None]:
    """``tmo-graph eval gap``: held-out figures on ``data``; with ``output``, also save a
    predictor fit on every dialogue (what ``embeddings.gap_predictor`` loads)."""
    from tmo_graph.models.embeddings import local_embeddings
    from tmo_graph.sim.data import load_m4a1

    dataset = load_m4a1(data)
    source = settings.embeddings.source
    embeddings = local_embeddings(source)
    report = evaluate_gap_predictor(dataset, embeddings, seed, embedding=source)
    if output is None:
        return report, None
    predictor = fit_dataset(dataset.episodes, embeddings, embedding=source)
    predictor.save(output)
    return report, predictor


def format_report(report: dict[str, Any]) -> str:
    """The evaluation as tables; ``*`` marks the model cross-validation chose."""
    d = report["dialogues"]
    title = (
        f"M4A1 quality-gap predictor, seed {report['seed']}: fit on {d['train']} dialogues, "
        f"scored on the {d['test']} held-out ones\n"
        f"embedding: {report.get('embedding') or 'unnamed'}, {report['dim']} dims"
    )
    models = table("side", "model", "Spearman", "R^2", "AUROC", right=("Spearman", "R^2", "AUROC"))
    notes = []
    for side, entry in report["sides"].items():
        for name, row in entry["models"].items():
            mark = "*" if name == entry["chosen"] else " "
            models.add_row(
                side,
                f"{mark}{name}",
                f"{row['spearman']:.3f}",
                f"{row['r2']:.3f}",
                f"{row['auroc']:.3f}",
            )
        t = entry["turns"]
        notes.append(
            f"{side}: {t['train']} train / {t['test']} held-out turns; AUROC label: score > "
            f"{entry['median_score']:.3f}, the training median; ridge alpha {entry['alpha']:g}"
        )
    gap = report["gap"]
    q = gap["quantiles"]
    tasks = table(
        "task",
        "turns",
        "predicted gap",
        "held-out gap",
        right=("turns", "predicted gap", "held-out gap"),
    )
    for task, row in gap["by_task"].items():
        tasks.add_row(
            task, str(row["turns"]), f"{row['predicted_gap']:.3f}", f"{row['observed_gap']:.3f}"
        )
    return render(
        title,
        models,
        *notes,
        "",
        f"predicted gap (cloud - local) on held-out prompts: mean {gap['mean']:.3f}, "
        f"10/50/90 % {q['10']:.3f} / {q['50']:.3f} / {q['90']:.3f}",
        tasks,
    )
