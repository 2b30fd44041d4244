"""How well does each confidence estimator predict answer quality? Measured on M4A1.

M4A1's local turns carry a quality ``score``. Each recorded answer is scored by the local
model teacher-forced (the log-probs of the answer given the dialogue so far), every estimator
is computed on it, and we report, on a held-out part of the dialogues (the paper's 80/20
split by seed): each estimator's AUROC for "score above the median" (oriented on the training
part), its Spearman correlation with the score, and the same for the combined confidence
rule and for a logistic regression fitted on the training part.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tmo_graph.confidence import ESTIMATORS, confidence
from tmo_graph.prompts import SYSTEM_PROMPT
from tmo_graph.services import LocalBackend
from tmo_graph.sim.data import Dataset, paper_split


@dataclass(frozen=True)
class ScoredTurn:
    episode: str
    score: float
    features: dict[str, float]  # every estimator, plus the combined confidence


def score_local_turns(
    dataset: Dataset,
    local: LocalBackend,
    limit: int | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[ScoredTurn]:
    """Teacher-forced estimator values for every recorded local answer."""
    jobs = []
    for episode in dataset.episodes:
        history: list[dict[str, str]] = [{"role": "system", "content": SYSTEM_PROMPT}]
        for turn in episode.turns:
            history.append({"role": "user", "content": turn.question})
            if turn.action == 0:
                jobs.append((episode.id, list(history), turn.answer, turn.score))
            history.append({"role": "assistant", "content": turn.answer})
    jobs = jobs[:limit] if limit else jobs
    out = []
    for i, (episode_id, messages, answer, score) in enumerate(jobs):
        stats = local.score_answer(messages, answer)
        combined, parts = confidence(stats.logprobs, stats.entropies, answer)
        out.append(ScoredTurn(episode_id, score, {**parts, "combined": combined}))
        progress(i + 1, len(jobs))
    return out


def _auroc(values: Sequence[float], positive: Sequence[bool]) -> float:
    from sklearn.metrics import roc_auc_score

    if len(set(positive)) < 2:
        return float("nan")
    return float(roc_auc_score(positive, values))


def _spearman(values: Sequence[float], scores: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    result = spearmanr(values, scores)
    return float(result.statistic)


def evaluate_estimators(turns: Sequence[ScoredTurn], seed: int = 9139) -> dict[str, Any]:
    """AUROC and Spearman of every estimator on the held-out dialogues of ``seed``'s split."""
    from sklearn.linear_model import LogisticRegression

    ids = sorted({t.episode for t in turns})
    train_ids, test_ids = paper_split(ids, seed)  # split by dialogue, never by turn
    train = [t for t in turns if t.episode in set(train_ids)]
    test = [t for t in turns if t.episode in set(test_ids)]
    median = statistics.median(t.score for t in turns)
    names = [*ESTIMATORS, "combined"]

    def column(rows: Sequence[ScoredTurn], name: str) -> list[float]:
        # Clip the infinities of empty answers so every estimator is a finite number.
        return [float(np.clip(t.features[name], -1e3, 1e3)) for t in rows]

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
    x_train = np.array([column(train, n) for n in ESTIMATORS]).T
    x_test = np.array([column(test, n) for n in ESTIMATORS]).T
    model = LogisticRegression(max_iter=1000).fit(x_train, y_train)
    fitted = model.predict_proba(x_test)[:, 1].tolist()
    report["fitted (logistic, on train part)"] = {
        "direction": "higher is better",
        "auroc": _auroc(fitted, y_test),
        "spearman": _spearman(fitted, [t.score for t in test]),
    }
    return {
        "turns": {"train": len(train), "test": len(test)},
        "median_score": median,
        "estimators": report,
    }


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
