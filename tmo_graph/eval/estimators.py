"""How well does each confidence estimator predict answer quality? Measured on M4A1.

M4A1's local turns carry a quality ``score``. Each recorded answer is scored by the local
model teacher-forced (the log-probs of the answer given the dialogue so far, after the
graph's default system prompt), every estimator is computed on it, and we report, on a
held-out part of the dialogues (the paper's 80/20 split by seed): each estimator's AUROC for
"score above the median" (oriented on the training part), its Spearman correlation with the
score, and the same for the combined confidence rule and for a logistic regression refit on
the training part (printed for comparison; the shipped rule is never fit on the held-out part).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tmo_graph.context import DEFAULT_SYSTEM_PROMPT
from tmo_graph.errors import TmoGraphError
from tmo_graph.eval import metrics
from tmo_graph.eval.agreement import Sampler, sampling_agreement
from tmo_graph.eval.tables import render, table
from tmo_graph.models.base import LocalBackend
from tmo_graph.policy.confidence import COMBINED_FEATURES, ESTIMATORS, combine, confidence
from tmo_graph.sections import LocalModelSettings
from tmo_graph.sim.data import Dataset, paper_split

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

    from tmo_graph.settings import Settings

# Version of the scored-turns cache: the token scores depend on the system prompt and model.
CACHE_FORMAT = "tmo-graph/scored-turns"
DEFAULT_PRECISION = LocalModelSettings().precision


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


def local_turn_prompts(
    dataset: Dataset, system_prompt: str = DEFAULT_SYSTEM_PROMPT
) -> list[tuple[str, list[dict[str, str]], str, float]]:
    """(episode id, the dialogue so far, recorded local answer, its score) per local turn."""
    if not system_prompt.strip():
        raise TmoGraphError("the system prompt is empty", "leave it out for the default")
    jobs = []
    for episode in dataset.episodes:
        history: list[dict[str, str]] = [{"role": "system", "content": system_prompt}]
        for turn in episode.turns:
            history.append({"role": "user", "content": turn.question})
            if turn.action == 0:
                jobs.append((episode.id, list(history), turn.answer, turn.score))
            history.append({"role": "assistant", "content": turn.answer})
    return jobs


def score_local_turns(
    dataset: Dataset,
    local: LocalBackend,
    limit: int | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
) -> list[ScoredTurn]:
    """Teacher-forced token scores of every recorded local answer (the first ``limit``)."""
    if limit is not None and limit < 1:
        raise TmoGraphError(f"limit {limit} is not positive", "leave it out, or e.g. 20")
    jobs = local_turn_prompts(dataset, system_prompt)
    jobs = jobs[:limit] if limit else jobs
    out = []
    for i, (episode_id, messages, answer, score) in enumerate(jobs):
        stats = local.score_answer(messages, answer)
        out.append(
            ScoredTurn(episode_id, score, answer, list(stats.logprobs), list(stats.entropies))
        )
        progress(i + 1, len(jobs))
    return out


def add_sampling_agreement(
    turns: Sequence[ScoredTurn],
    dataset: Dataset,
    local: Sampler,
    embeddings: Embeddings,
    k: int,
    seed: int = 9139,
    progress: Callable[[int, int], None] = lambda done, total: None,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
) -> list[ScoredTurn]:
    """The turns, with sampling agreement measured on the held-out part (it costs k samples)."""
    if k < 1:
        raise TmoGraphError(f"sampling agreement needs k >= 1 samples, got {k}", "use e.g. 3")
    _, test_ids = paper_split(sorted({t.episode for t in turns}), seed)
    held_out = set(test_ids)
    prompts = local_turn_prompts(dataset, system_prompt)[: len(turns)]
    if [p[0] for p in prompts] != [t.episode for t in turns]:
        raise TmoGraphError(
            "the scored turns do not belong to this dataset", "score the same --data again"
        )
    todo = [i for i, t in enumerate(turns) if t.episode in held_out]
    out = list(turns)
    for done, i in enumerate(todo, start=1):
        messages = prompts[i][1]
        value = sampling_agreement(local, messages, turns[i].answer, embeddings, k, seed=i)
        out[i] = replace(turns[i], agreement=value)
        progress(done, len(todo))
    return out


def save_scored(
    turns: Sequence[ScoredTurn],
    path: Path,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    precision: str = DEFAULT_PRECISION,
) -> None:
    """Keep the slow part (scoring with the model) so estimators can be re-measured cheaply;
    the system prompt and the weights' precision are recorded, as the scores depend on both."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "format": CACHE_FORMAT,
                    "system_prompt": system_prompt,
                    "precision": precision,
                    "turns": [asdict(t) for t in turns],
                }
            )
        )
    except OSError as exc:
        raise TmoGraphError(
            f"cannot write scored turns to {path} ({exc.strerror})", "pass a writable --scored"
        ) from None


def load_scored(
    path: Path, system_prompt: str = DEFAULT_SYSTEM_PROMPT, precision: str = DEFAULT_PRECISION
) -> list[ScoredTurn]:
    """Scored turns saved by :func:`save_scored` under the same system prompt and precision
    (a file without one was scored in float32, before the precision setting existed)."""
    redo = "delete it and let `tmo-graph eval confidence --scored FILE` score the turns again"
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TmoGraphError(f"{path} is not a file of scored turns ({error})", redo) from None
    if not isinstance(raw, dict) or raw.get("format") != CACHE_FORMAT:
        raise TmoGraphError(
            f"{path} is not a file of scored turns (no {CACHE_FORMAT!r} header; files from "
            "before the system prompt was recorded are refused)",
            redo,
        )
    if raw.get("system_prompt") != system_prompt:
        raise TmoGraphError(
            f"{path} was scored after the system prompt {raw.get('system_prompt')!r}, "
            f"not {system_prompt!r}: its token scores do not apply",
            redo,
        )
    if (scored_in := raw.get("precision", "float32")) != precision:
        raise TmoGraphError(
            f"{path} was scored with {scored_in} weights, not {precision}: its token scores "
            "do not apply",
            f"{redo}, or set local.precision: {scored_in}",
        )
    try:
        return [ScoredTurn(**row) for row in raw["turns"]]
    except (KeyError, TypeError) as error:
        raise TmoGraphError(f"{path} is not a file of scored turns ({error})", redo) from None


def _finite(value: float) -> float:
    # Clip the infinities of empty answers so every estimator is a finite number.
    return float(np.clip(value, -1e3, 1e3))


def evaluate_estimators(turns: Sequence[ScoredTurn], seed: int = 9139) -> dict[str, Any]:
    """AUROC and Spearman of every estimator on the held-out dialogues of ``seed``'s split."""
    ids = sorted({t.episode for t in turns})
    train_ids, test_ids = paper_split(ids, seed)  # split by dialogue, never by turn
    train = [t for t in turns if t.episode in set(train_ids)]
    test = [t for t in turns if t.episode in set(test_ids)]
    if not train or not test:
        raise TmoGraphError(
            f"seed {seed}'s split of {len(ids)} dialogues leaves no train or no held-out turns",
            "score more local turns (a larger --limit, or none)",
        )
    median = statistics.median(t.score for t in turns)

    def column(rows: Sequence[ScoredTurn], name: str) -> list[float]:
        return [_finite(t.features[name]) for t in rows]

    y_train = [t.score > median for t in train]
    y_test = [t.score > median for t in test]
    test_scores = [t.score for t in test]
    report: dict[str, Any] = {}
    for name in [*ESTIMATORS, "combined"]:
        # Orientation from the training part only: does higher mean better or worse?
        sign = 1.0 if metrics.auroc(column(train, name), y_train) >= 0.5 else -1.0
        values = [sign * v for v in column(test, name)]
        report[name] = {
            "direction": "higher is better" if sign > 0 else "lower is better",
            "auroc": metrics.auroc(values, y_test),
            "spearman": metrics.spearman(values, test_scores),
        }
    sampled = [t for t in test if t.agreement is not None]
    if sampled:  # measured on held-out turns only, so no orientation from the train part
        values = [float(t.agreement or 0.0) for t in sampled]
        report["sampling_agreement"] = {
            "direction": "higher is better",
            "auroc": metrics.auroc(values, [t.score > median for t in sampled]),
            "spearman": metrics.spearman(values, [t.score for t in sampled]),
        }
    refit = fit_combination(train, median)
    refit_values = [combine(t.features, refit) for t in test]
    report["refit now (logistic, train part)"] = {
        "direction": "higher is better",
        "auroc": metrics.auroc(refit_values, y_test),
        "spearman": metrics.spearman(refit_values, test_scores),
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
    :data:`tmo_graph.policy.confidence.COMBINATION`, so the graph needs no scikit-learn.
    """
    from sklearn.linear_model import LogisticRegression

    y = [t.score > median for t in turns]
    if len(set(y)) < 2:
        raise TmoGraphError(
            f"all {len(turns)} turns fall on one side of the median {median:.4f}",
            "fit on turns with both better and worse answers",
        )
    x = np.array([[_finite(t.features[n]) for n in COMBINED_FEATURES] for t in turns])
    means, scales = x.mean(axis=0), x.std(axis=0)
    scales[scales == 0] = 1.0
    model = LogisticRegression(max_iter=1000).fit((x - means) / scales, y)
    return {
        "features": list(COMBINED_FEATURES),
        "means": [round(float(v), 5) for v in means],
        "scales": [round(float(v), 5) for v in scales],
        "weights": [round(float(v), 5) for v in model.coef_[0]],
        "bias": round(float(model.intercept_[0]), 5),
        "fitted_on": f"{len(turns)} turns, label score > {median:.4f}",
    }


def run_confidence_eval(
    data: str | Path,
    settings: Settings,
    seed: int = 9139,
    limit: int | None = None,
    scored: Path | None = None,
    sampling: int = 0,
    progress: Callable[[str], None] = lambda line: None,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
) -> dict[str, Any]:
    """``tmo-graph eval confidence``: score (or read the ``scored`` cache), optionally sample
    ``sampling`` answers per held-out turn, and evaluate every estimator."""
    if sampling < 0:  # before minutes of scoring, not after
        raise TmoGraphError(f"--sampling {sampling} is negative", "use 0 (off) or e.g. 3")
    from tmo_graph.models.local.model import configured_local_model
    from tmo_graph.sim.data import load_m4a1

    cache = scored if scored is not None and scored.exists() else None
    precision = settings.local.precision
    turns = load_scored(cache, system_prompt, precision) if cache is not None else None
    if turns is not None and sampling == 0:
        return evaluate_estimators(turns, seed)
    dataset = load_m4a1(data)
    local = configured_local_model(settings)
    if turns is None:

        def scored_so_far(done: int, total: int) -> None:
            if done % 20 == 0 or done == total:
                progress(f"scored {done}/{total} local answers")

        turns = score_local_turns(dataset, local, limit, scored_so_far, system_prompt)
        if scored is not None:
            save_scored(turns, scored, system_prompt, precision)
    if sampling:
        from tmo_graph.models.embeddings import local_embeddings

        turns = add_sampling_agreement(
            turns,
            dataset,
            local,
            local_embeddings(settings.embeddings.source),
            sampling,
            seed,
            lambda done, total: progress(f"sampled {done}/{total} held-out turns"),
            system_prompt,
        )
    return evaluate_estimators(turns, seed)


def format_report(result: dict[str, Any]) -> str:
    """The evaluation as a table: AUROC, Spearman and orientation per estimator."""
    rows = table("estimator", "AUROC", "Spearman", "direction", right=("AUROC", "Spearman"))
    for name, row in result["estimators"].items():
        rows.add_row(name, f"{row['auroc']:.3f}", f"{row['spearman']:.3f}", row["direction"])
    return render(
        f"M4A1 local answers: {result['turns']['train']} train / {result['turns']['test']} "
        f"held-out turns; label: score > median ({result['median_score']:.3f})",
        rows,
    )
