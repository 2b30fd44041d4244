"""The quality-gap predictor: learns a gap the prompt shows, saves / loads, feeds the route."""

from __future__ import annotations

import json
import math
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langgraph.checkpoint.memory import InMemorySaver
from typer.testing import CliRunner

from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services
from tmo_graph.cli.app import app
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.eval.gap_fit import (
    TrainingRows,
    embed_texts,
    evaluate_gap_predictor,
    fit,
    fit_dataset,
    fit_vectors,
    format_report,
)
from tmo_graph.graph import build_graph
from tmo_graph.models.gap import QualityGapPredictor
from tmo_graph.policy.base import LOCAL, Action, Cost, RouteInput
from tmo_graph.policy.simple import Rules
from tmo_graph.settings import load_settings
from tmo_graph.sim.data import Dataset, Episode, Turn
from tmo_graph.state import Budget

DIM = 24
TASK = "Query"
# Same task, two kinds of prompt: only the words tell which one the cloud answers far better.
HARD = "explain the history and science of {}"  # cloud 6, local 1: gap +5
EASY = "turn on the {} light"  # cloud 2, local 2.5: gap -0.5
TRAIN_THINGS = [f"thing{i}" for i in range(30)]
HELD_OUT_THINGS = ["saffron", "quinoa", "kombucha", "tempeh"]


class BagOfWords(Embeddings):
    """Hashed word counts, L2-normalised: prompts sharing words get similar vectors."""

    def __init__(self, size: int = DIM) -> None:
        self.size = size

    def _one(self, text: str) -> list[float]:
        v = np.zeros(self.size)
        for word in text.lower().split():
            v[zlib.crc32(word.encode()) % self.size] += 1.0
        norm = float(np.linalg.norm(v))
        return (v / norm if norm else v).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._one(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._one(text)


def _dataset(seed: int = 0, n_episodes: int = 30) -> Dataset:
    """Dialogues of 4 turns; each turn randomly local or cloud, scored by its prompt's kind."""
    rng = random.Random(seed)
    episodes = []
    for e in range(n_episodes):
        turns = []
        for _ in range(4):
            hard = rng.random() < 0.5
            question = (HARD if hard else EASY).format(rng.choice(TRAIN_THINGS))
            action = rng.randint(0, 1)
            mean = (6.0 if action else 1.0) if hard else (2.0 if action else 2.5)
            score = max(0.0, mean + rng.gauss(0.0, 0.3))
            turns.append(Turn(question, TASK, action, None, "an answer", score))
        episodes.append(Episode(f"d{e}", tuple(turns), tuple((0.0,) for _ in turns)))
    return Dataset(episodes=tuple(episodes), n_views=1, task_names=(TASK,))


@pytest.fixture(scope="module")
def predictor() -> QualityGapPredictor:
    return fit_dataset(_dataset().episodes, BagOfWords(), embedding="bow")


def test_the_gap_is_learned_for_unseen_prompts(predictor: QualityGapPredictor) -> None:
    emb = BagOfWords()
    for thing in HELD_OUT_THINGS:
        hard = predictor.predict_gap(emb.embed_query(HARD.format(thing)), TASK)
        easy = predictor.predict_gap(emb.embed_query(EASY.format(thing)), TASK)
        assert hard > 3.0, thing  # true gap +5
        assert easy < 0.5, thing  # true gap -0.5
        local, cloud = predictor.predict_scores(emb.embed_query(HARD.format(thing)), TASK)
        assert cloud - local == pytest.approx(hard)
    # An unknown task falls back to the side's overall mean, not an error.
    assert math.isfinite(predictor.predict_gap(emb.embed_query("hello there"), "Chit-chat"))


def test_fit_from_questions_matches_the_dataset_helper(predictor: QualityGapPredictor) -> None:
    rows = TrainingRows.from_episodes(_dataset().episodes)
    again = fit(
        rows.questions,
        rows.tasks,
        rows.actions,
        rows.scores,
        BagOfWords(),
        groups=rows.groups,
        previous_questions=rows.previous,
        previous=None,
        embedding="bow",
    )
    assert again == predictor


def test_cross_validation_stays_inside_the_training_data() -> None:
    # Regularisation chosen by CV: a pure-noise target gets a strong ridge, a clean one a weak one.
    rows = TrainingRows.from_episodes(_dataset().episodes)
    vectors = embed_texts(rows.questions, BagOfWords())
    noise = [random.Random(i).gauss(0, 1) for i in range(len(rows.scores))]
    noisy = fit_vectors(vectors, rows.tasks, rows.actions, noise, rows.groups)
    clean = fit_vectors(vectors, rows.tasks, rows.actions, rows.scores, rows.groups)
    assert noisy.local.alpha > clean.local.alpha
    assert not clean.local.previous and not clean.cloud.previous  # previous=False by default


def _closed_form_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge with an unpenalised intercept, written out: centred normal equations."""
    xm, ym = x.mean(axis=0), y.mean()
    xc = x - xm
    coef = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - ym))
    return coef, float(ym - xm @ coef)


def test_the_fit_is_task_mean_plus_ridge_chosen_by_grouped_cv() -> None:
    """The method, checked against a hand-written version: per side, the task means (refit
    inside every fold) plus a ridge on what is left, its strength the lowest mean CV error
    over folds that keep whole dialogues together."""
    from sklearn.model_selection import GroupKFold

    from tmo_graph.eval.gap_fit import fit_side

    rng = np.random.default_rng(3)
    n, dim = 60, 6
    x = rng.normal(size=(n, dim))
    tasks = [("Query", "Recommendation", "Message Editing")[i % 3] for i in range(n)]
    offset = {"Query": 1.0, "Recommendation": 2.0, "Message Editing": -0.5}
    y = np.array([offset[t] for t in tasks]) + x @ rng.normal(size=dim) + rng.normal(size=n)
    groups = [f"d{i // 4}" for i in range(n)]
    alphas = (0.1, 3.0, 100.0)

    def residual_fit(rows: np.ndarray, alpha: float) -> tuple[dict[str, float], Any, float]:
        means = {t: float(np.mean([y[i] for i in rows if tasks[i] == t])) for t in set(tasks)}
        base = np.array([means[tasks[i]] for i in rows])
        coef, intercept = _closed_form_ridge(x[rows], y[rows] - base, alpha)
        return means, coef, intercept

    cv = []
    for alpha in alphas:
        errors = []
        for train, valid in GroupKFold(n_splits=5).split(x, groups=groups):
            means, coef, intercept = residual_fit(train, alpha)
            predicted = [means[tasks[i]] + x[i] @ coef + intercept for i in valid]
            errors.append(float(np.mean((np.array(predicted) - y[valid]) ** 2)))
        cv.append(float(np.mean(errors)))
    best = int(np.argmin(cv))
    means, coef, intercept = residual_fit(np.arange(n), alphas[best])

    side = fit_side(x, np.zeros_like(x), tasks, list(y), groups, previous=False, alphas=alphas)
    assert side.alpha == alphas[best] and side.cv_mse == pytest.approx(cv[best], rel=1e-9)
    assert side.task_means == pytest.approx(means) and side.n == n and not side.previous
    assert np.allclose(side.coef, coef, atol=1e-9) and side.intercept == pytest.approx(intercept)
    with pytest.raises(TmoGraphError, match="not all > 0"):
        fit_side(x, np.zeros_like(x), tasks, list(y), groups, alphas=(0.0, 1.0))


def test_fit_refuses_rows_of_unequal_length() -> None:
    with pytest.raises(TmoGraphError, match="one vector, task, action and score per turn"):
        fit_vectors(np.zeros((3, DIM)), [TASK] * 3, [0, 1], [1.0, 2.0, 3.0])
    with pytest.raises(TmoGraphError, match="0 \\(local\\) or 1 \\(cloud\\)"):
        fit_vectors(np.zeros((2, DIM)), [TASK] * 2, [0, 2], [1.0, 2.0])


def test_evaluation_reports_both_sides_and_the_baseline() -> None:
    report = evaluate_gap_predictor(_dataset(n_episodes=40), BagOfWords(), seed=9139)
    assert report["dialogues"] == {"train": 32, "test": 8}
    for side in ("local", "cloud"):
        entry = report["sides"][side]
        assert entry["turns"]["test"] > 0
        assert set(entry["models"]) == {
            "task only (mean per task)",
            "task + prompt embedding",
            "task + prompt + previous embedding",
        }
        assert entry["chosen"] in entry["models"]
        emb_row = entry["models"]["task + prompt embedding"]
        base_row = entry["models"]["task only (mean per task)"]
        # One task only: the baseline cannot rank; the embedding can.
        assert emb_row["auroc"] > 0.9 and emb_row["r2"] > 0.8
        assert base_row["r2"] <= 0.0
    assert report["gap"]["by_task"][TASK]["predicted_gap"] > 0
    text = format_report(report)
    assert "task only" in text and "*task + prompt" in text
    json.dumps(report)  # serialisable for --json


def test_save_load_round_trip(predictor: QualityGapPredictor, tmp_path: Path) -> None:
    path = predictor.save(tmp_path / "sub" / "gap.json")
    loaded = QualityGapPredictor.load(path, dim=DIM)
    vector = BagOfWords().embed_query(HARD.format("saffron"))
    assert loaded.predict_gap(vector, TASK) == pytest.approx(predictor.predict_gap(vector, TASK))
    assert loaded.to_json() == predictor.to_json()


def _bad(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_bad_files_give_a_fix(predictor: QualityGapPredictor, tmp_path: Path) -> None:
    good = predictor.to_json()
    short = {**good, "local": {**good["local"], "coef": good["local"]["coef"][:3]}}
    nan = {**good, "cloud": {**good["cloud"], "intercept": float("nan")}}
    cases = {
        "does not exist": tmp_path / "missing.json",
        "is not JSON": _bad(tmp_path / "a.json", "{not json"),
        "not a tmo-graph/quality-gap file": _bad(tmp_path / "b.json", '{"policy": 1}'),
        "version 99": _bad(tmp_path / "c.json", json.dumps({**good, "version": 99})),
        "`local.coef` must list": _bad(tmp_path / "d.json", json.dumps(short)),
        "finite number": _bad(tmp_path / "e.json", json.dumps(nan)),
        "`dim`": _bad(tmp_path / "f.json", json.dumps({**good, "dim": "big"})),
    }
    for message, path in cases.items():
        with pytest.raises(TmoGraphError) as info:
            QualityGapPredictor.load(path)
        assert message in str(info.value), message
        assert info.value.fix and "tmo-graph eval gap" in info.value.fix


def test_a_mismatched_embedding_is_refused(predictor: QualityGapPredictor, tmp_path: Path) -> None:
    path = predictor.save(tmp_path / "gap.json")
    with pytest.raises(TmoGraphError, match="24-dimensional embeddings \\(bow\\).*gives 384"):
        QualityGapPredictor.load(path, dim=384)
    with pytest.raises(TmoGraphError, match="prompt vector has 3 numbers"):
        predictor.predict_gap([0.1, 0.2, 0.3], TASK)


def test_settings_take_a_predictor_path(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("embeddings: {gap_predictor: /models/gap.json}")
    assert load_settings(config).embeddings.gap_predictor == Path("/models/gap.json")
    assert load_settings(None).embeddings.gap_predictor is None


def test_cli_eval_gap_with_a_missing_file() -> None:
    result = CliRunner().invoke(app, ["eval", "gap", "--data", "/nonexistent/M4A1.json"])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert line.startswith("error: dataset /nonexistent/M4A1.json does not exist")
    assert "Fix:" in line and "\n" not in line and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- the route


def _observation(gap: float | None, words: int = 3, task: str = "Query") -> RouteInput:
    return RouteInput(
        prompt=" ".join(["word"] * words),
        task=task,
        turn=0,
        candidates=[],
        history=[],
        budget_left=Budget(latency_s=60.0, cost_usd=0.05),
        allowed={LOCAL: Cost(4.0, 0.0), Action("cloud"): Cost(6.0, 0.001)},
        quality_gap=gap,
    )


def test_rules_follow_the_gap_when_there_is_one() -> None:
    rules = Rules()
    assert rules.decide(_observation(rules.gap_margin + 0.1)) == Action("cloud")
    assert rules.decide(_observation(rules.gap_margin - 0.1)) == LOCAL
    # A long query prompt goes to the cloud without a gap, but not when the gap says no.
    assert rules.decide(_observation(None, words=20)) == Action("cloud")
    assert rules.decide(_observation(0.0, words=20)) == LOCAL
    assert rules.decide(_observation(None, words=3)) == LOCAL
    # The budget still wins: no affordable cloud action, no cloud.
    tight = _observation(10.0)
    tight.allowed.pop(Action("cloud"))
    assert rules.decide(tight) == LOCAL


@dataclass
class RecordingGap:
    """A gap predictor that returns ``gap`` and records what the route node gave it."""

    gap: float
    calls: list[tuple[tuple[float, ...], str, tuple[float, ...] | None]] = field(
        default_factory=list
    )

    def predict_gap(
        self,
        prompt_vector: Sequence[float],
        task: str,
        previous_vector: Sequence[float] | None = None,
    ) -> float:
        before = tuple(previous_vector) if previous_vector is not None else None
        self.calls.append((tuple(prompt_vector), task, before))
        return self.gap


def _run(graph: Any, text: str, thread: str = "t1") -> Any:
    config = {"configurable": {"thread_id": thread}}
    return graph.invoke({"messages": [("user", text)]}, config, context=Context(policy="rules"))


def test_the_route_node_fills_the_quality_gap(tmp_path: Path) -> None:
    services = fake_services(tmp_path, FakeLocal(["sure"], logprob=-0.01), FakeCloud())
    gap = RecordingGap(gap=5.0)
    services.gap_predictor = gap
    graph = build_graph(services, checkpointer=InMemorySaver())
    first, second = "How do induction hobs work?", "And gas ones?"
    out = _run(graph, first)
    assert out["turns"][-1]["route"] == "cloud" and out["turns"][-1]["views_sent"] == []
    vector, task, before = gap.calls[0]
    assert vector == tuple(services.embed(first)) and before is None
    assert task == out["turns"][-1]["task"]
    # The next turn's prediction sees the previous user question; a small gap stays local.
    gap.gap = -1.0
    out = _run(graph, second)
    assert out["turns"][-1]["route"] == "local"
    assert gap.calls[-1][0] == tuple(services.embed(second))
    assert gap.calls[-1][2] == tuple(services.embed(first))


def test_a_fitted_predictor_runs_in_the_graph(tmp_path: Path) -> None:
    embeddings = DeterministicFakeEmbedding(size=32)  # what fake_services embeds with
    rows = TrainingRows.from_episodes(_dataset().episodes)
    predictor = fit(
        rows.questions, rows.tasks, rows.actions, rows.scores, embeddings, groups=rows.groups
    )
    services = fake_services(tmp_path, FakeLocal(["sure"], logprob=-0.01), FakeCloud())
    services.gap_predictor = predictor
    graph = build_graph(services, checkpointer=InMemorySaver())
    out = _run(graph, "Turn on the kitchen lights.")
    assert out["turns"][-1]["route"] in ("local", "cloud")
