"""How well does each confidence estimator predict answer quality? Measured on M4A1.

M4A1's local turns carry a quality ``score``. Each recorded answer is scored by the local
model teacher-forced (the log-probs of the answer given the dialogue so far), every estimator
is computed on it, and we report, on a held-out part of the dialogues (the paper's 80/20
split by seed): each estimator's AUROC for "score above the median" (oriented on the training
part), its Spearman correlation with the score, and the same for the combined confidence
rule and for a logistic regression fitted on the training part.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

from tmo_graph.agreement import Sampler, sampling_agreement
from tmo_graph.confidence import COMBINED_FEATURES, ESTIMATORS, combine, confidence
from tmo_graph.errors import TmoGraphError
from tmo_graph.prompts import SYSTEM_PROMPT
from tmo_graph.services import LocalBackend
from tmo_graph.sim.data import Dataset, paper_split


@dataclass(frozen=True)
class ScoredTurn:
    """A recorded local answer, its quality score, and the local model's token scores on it."""

    episode: str
    score: float
    answer: str
    logprobs: list[float]
    entropies: list[float]
    agreement: float | None = None  # sampling agreement, measured on held-out turns only

    @cached_property  # read once per estimator column; computed once
    def features(self) -> dict[str, float]:
        """Every estimator, plus the combined confidence the graph uses."""
        combined, parts = confidence(self.logprobs, self.entropies, self.answer)
        return {**parts, "combined": combined}


def local_turn_prompts(dataset: Dataset) -> list[tuple[str, list[dict[str, str]], str, float]]:
    """(episode id, the dialogue so far, recorded local answer, its score) per local turn."""
    jobs = []
    for episode in dataset.episodes:
        history: list[dict[str, str]] = [{"role": "system", "content": SYSTEM_PROMPT}]
        for turn in episode.turns:
            history.append({"role": "user", "content": turn.question})
            if turn.action == 0:
                jobs.append((episode.id, list(history), turn.answer, turn.score))
            history.append({"role": "assistant", "content": turn.answer})
    return jobs


def add_sampling_agreement(
    turns: Sequence[ScoredTurn],
    dataset: Dataset,
    local: Sampler,
    embeddings: Embeddings,
    k: int,
    seed: int = 9139,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[ScoredTurn]:
    """The turns, with sampling agreement measured on the held-out part (it costs k samples)."""
    _, test_ids = paper_split(sorted({t.episode for t in turns}), seed)
    prompts = local_turn_prompts(dataset)[: len(turns)]
    todo = [i for i, t in enumerate(turns) if t.episode in set(test_ids)]
    out = list(turns)
    for done, i in enumerate(todo, start=1):
        messages = prompts[i][1]
        value = sampling_agreement(local, messages, turns[i].answer, embeddings, k, seed=i)
        out[i] = replace(turns[i], agreement=value)
        progress(done, len(todo))
    return out


def score_local_turns(
    dataset: Dataset,
    local: LocalBackend,
    limit: int | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[ScoredTurn]:
    """Teacher-forced token scores of every recorded local answer."""
    jobs = local_turn_prompts(dataset)
    jobs = jobs[:limit] if limit else jobs
    out = []
    for i, (episode_id, messages, answer, score) in enumerate(jobs):
        stats = local.score_answer(messages, answer)
        out.append(
            ScoredTurn(episode_id, score, answer, list(stats.logprobs), list(stats.entropies))
        )
        progress(i + 1, len(jobs))
    return out


def save_scored(turns: Sequence[ScoredTurn], path: Path) -> None:
    """Keep the slow part (scoring with the model) so estimators can be re-measured cheaply."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(t) for t in turns]))


def load_scored(path: Path) -> list[ScoredTurn]:
    try:
        return [ScoredTurn(**row) for row in json.loads(path.read_text())]
    except (OSError, json.JSONDecodeError, TypeError) as error:
        raise TmoGraphError(
            f"{path} is not a file of scored turns ({error})",
            "delete it and let `tmo-graph eval confidence --scored FILE` score the turns again",
        ) from None


def _auroc(values: Sequence[float], positive: Sequence[bool]) -> float:
    from sklearn.metrics import roc_auc_score

    if len(set(positive)) < 2:
        return float("nan")
    return float(roc_auc_score(positive, values))


def _spearman(values: Sequence[float], scores: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(values)) < 2 or len(set(scores)) < 2:  # undefined (e.g. no refusal at all)
        return float("nan")
    result = spearmanr(values, scores)
    return float(result.statistic)


def evaluate_estimators(turns: Sequence[ScoredTurn], seed: int = 9139) -> dict[str, Any]:
    """AUROC and Spearman of every estimator on the held-out dialogues of ``seed``'s split."""

    ids = sorted({t.episode for t in turns})
    train_ids, test_ids = paper_split(ids, seed)  # split by dialogue, never by turn
    train = [t for t in turns if t.episode in set(train_ids)]
    test = [t for t in turns if t.episode in set(test_ids)]
    median = statistics.median(t.score for t in turns)
    names = [*ESTIMATORS, "combined"]

    def column(rows: Sequence[ScoredTurn], name: str) -> list[float]:
        # Clip the infinities of empty answers so every estimator is a finite number.
        return [_finite(t.features[name]) for t in rows]

    y_train = [t.score > median for t in train]
    y_test = [t.score > median for t in test]
    report: dict[str, Any] = {}
    for name in names:
        # Orientation from the training part only: does higher mean better or worse?
        sign = 1.0 if _auroc(column(train, name), y_train) >= 0.5 else -1.0
        values = [sign * v for v in column(test, name)]
        report[name] = {
            "direction": "higher is better" if sign > 0 else "lower is better",
            "auroc": _auroc(values, y_test),
            "spearman": _spearman(values, [t.score for t in test]),
        }
    sampled = [t for t in test if t.agreement is not None]
    if sampled:  # measured on held-out turns only, so no orientation from the train part
        values = [float(t.agreement or 0.0) for t in sampled]
        report["sampling_agreement"] = {
            "direction": "higher is better",
            "auroc": _auroc(values, [t.score > median for t in sampled]),
            "spearman": _spearman(values, [t.score for t in sampled]),
        }
    refit = fit_combination(train, median)
    refit_values = [combine(t.features, refit) for t in test]
    report["refit now (logistic, train part)"] = {
        "direction": "higher is better",
        "auroc": _auroc(refit_values, y_test),
        "spearman": _spearman(refit_values, [t.score for t in test]),
    }
    return {
        "turns": {"train": len(train), "test": len(test)},
        "median_score": median,
        "estimators": report,
        "refit": refit,
    }


def fit_combination(turns: Sequence[ScoredTurn], median: float) -> dict[str, Any]:
    """Logistic regression of "score above the median" on the standardised estimators.

    Returns plain numbers (features, means, scales, weights, bias) for
    :data:`tmo_graph.confidence.COMBINATION`, so the graph needs no scikit-learn.
    """
    from sklearn.linear_model import LogisticRegression

    x = np.array([[_finite(t.features[n]) for n in COMBINED_FEATURES] for t in turns])
    means, scales = x.mean(axis=0), x.std(axis=0)
    scales[scales == 0] = 1.0
    y = [t.score > median for t in turns]
    model = LogisticRegression(max_iter=1000).fit((x - means) / scales, y)
    return {
        "features": list(COMBINED_FEATURES),
        "means": [round(float(v), 5) for v in means],
        "scales": [round(float(v), 5) for v in scales],
        "weights": [round(float(v), 5) for v in model.coef_[0]],
        "bias": round(float(model.intercept_[0]), 5),
        "fitted_on": f"{len(turns)} turns, label score > {median:.4f}",
    }


def _finite(value: float) -> float:
    return float(np.clip(value, -1e3, 1e3))


def format_report(result: dict[str, Any]) -> str:
    lines = [
        f"M4A1 local answers: {result['turns']['train']} train / {result['turns']['test']} "
        f"held-out turns; label: score > median ({result['median_score']:.3f})",
        f"{'estimator':<34} {'AUROC':>7} {'Spearman':>9}   direction",
    ]
    for name, row in result["estimators"].items():
        lines.append(
            f"{name:<34} {row['auroc']:>7.3f} {row['spearman']:>9.3f}   {row['direction']}"
        )
    return "\n".join(lines)
