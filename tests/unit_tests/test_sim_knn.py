"""The response-score model: inverse-distance-weighted 5-NN with the published tie-breaking."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from tests.unit_tests.test_sim_data import M4A1, generated_dialogues, needs_m4a1
from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.knn import ResponseModel, one_hot, recorded_features
from tmo_graph.policy.observation import ObservationSpec, TurnFeatures, window_state
from tmo_graph.sim.data import Episode, load_m4a1, paper_split

# The published code's response scores (tmo/env.py, run here on M4A1, seed 9139's training
# split): the first turn of each task (state [-1]*20 + [-1, 0, 0, 0, task]), actions 0..8.
PUBLISHED_FIRST_TURN = {
    0: [0.8355555555555556, 1.7999983888929167, 1.3960547565212174, 1.1250034999825, 1.1250014523736904, 0.9841269841269842, 0.8147327424402119, 2.4999977321485267, 1.0000015833293752],  # noqa: E501
    1: [0.36666666666666664, 0.6607154696398974, 0.909126984126984, 0.9999996428589286, 0.6507938419308983, 0.9489087429315317, 0.880952380952381, 1.3904761904761904, 1.2261901458341593],  # noqa: E501
    2: [0.37333333333333335, 0.8124988812527969, 0.7881597969756169, 0.3750013249933751, 0.7154761904761905, 0.834126984126984, 1.3077755545041425, 0.20000242400751392, 1.0416664303577337],  # noqa: E501
    3: [0.725, 0.8654761904761905, 1.1599206349206348, 1.1099206349206348, 0.7500005496004267, 2.2499965083507916, 2.249996925015375, 1.225, 1.3302380952380952],  # noqa: E501
}  # fmt: skip
# Turn 2 of a dialogue that went cloud with views {0, 2} (task 1), then local (task 0), now
# task 2: actions 0 (local), 1 (cloud text) and 8 (all views).
PUBLISHED_DEEP = {0: 0.8445410660800307, 1: 1.0396401025797781, 8: 1.2580503891443615}


def _episodes(tmp_path: Path, **shape: int) -> list[Episode]:
    path = tmp_path / "gen.json"
    path.write_text(json.dumps(generated_dialogues(**shape)))
    return list(load_m4a1(path).episodes)


def test_recorded_actions_and_their_one_hot_rows(tmp_path: Path) -> None:
    episode = _episodes(tmp_path, n_episodes=1)[0]
    for turn, features in zip(episode.turns, recorded_features(episode), strict=True):
        assert features.action == turn.action
        assert features.views_used == (tuple(turn.views or ()) if turn.action else ())
    assert one_hot(TurnFeatures(0), 4) == [0, 0, 0, 0, 0]
    assert one_hot(TurnFeatures(1), 4) == [1, 0, 0, 0, 0]
    assert one_hot(TurnFeatures(1, (3, 1)), 4) == [1, 0, 1, 0, 1]


def test_rows_are_the_recorded_windows_in_lexsort_order(tmp_path: Path) -> None:
    episodes = _episodes(tmp_path, n_episodes=20)
    spec = ObservationSpec(n_views=4, task_names=tuple(f"task {i}" for i in range(5)))
    model = ResponseModel(spec, episodes)
    assert model.pairs.shape == (20 * 6, spec.per_step * spec.time_span + 5)
    # numpy.lexsort over the columns: the last column is the primary key.
    assert np.array_equal(np.lexsort(model.pairs.T), np.arange(len(model.pairs)))
    expected = set()
    for episode in episodes:
        features = recorded_features(episode)
        tasks = [spec.task_id(t.task) for t in episode.turns]
        for t, turn in enumerate(episode.turns):
            row = window_state(spec, features[:t], tasks[: t + 1]) + one_hot(features[t], 4)
            expected.add((*row, turn.label))
    assert {
        (*row, label) for row, label in zip(model.pairs.tolist(), model.labels, strict=True)
    } == expected


def test_score_is_the_inverse_distance_weighted_mean_of_the_five_nearest(tmp_path: Path) -> None:
    episodes = _episodes(tmp_path, n_episodes=20)
    spec = ObservationSpec(n_views=4, task_names=tuple(f"task {i}" for i in range(5)))
    model = ResponseModel(spec, episodes)
    rng = random.Random(0)
    checked = 0
    for _ in range(200):
        state = [float(rng.choice([-1, 0, 1])) for _ in range(spec.per_step * spec.time_span)]
        action = TurnFeatures.from_action(rng.randrange(17), 4)
        query = np.asarray(state + one_hot(action, 4))
        distances = np.sqrt(((model.pairs - query) ** 2).sum(axis=1))
        order = np.argsort(distances, kind="stable")
        if distances[order[4]] == distances[order[5]]:
            continue  # a tie at the boundary: which row counts is the kd-tree's business
        nearest = order[:5]
        weights = 1 / (distances[nearest] + 1e-6)
        expected = float(np.sum(weights * model.labels[nearest]) / np.sum(weights))
        assert model.score(state, action) == pytest.approx(expected, rel=1e-12)
        checked += 1
    assert checked > 50


def test_fewer_rows_than_neighbours_and_no_rows(tmp_path: Path) -> None:
    episodes = _episodes(tmp_path, n_episodes=1, n_turns=3)
    spec = ObservationSpec(n_views=4, task_names=tuple(f"task {i}" for i in range(5)))
    model = ResponseModel(spec, episodes)
    assert model.k == 3
    assert 0 <= model.score([-1.0] * 30, TurnFeatures(0)) <= 3
    with pytest.raises(TmoGraphError, match="no"):
        ResponseModel(spec, [])


@pytest.fixture(scope="module")
def seed_9139_model() -> ResponseModel:
    """The response model of seed 9139's training split, as the published code builds it."""
    dataset = load_m4a1(M4A1)
    train, _ = paper_split(dataset.episodes, 9139)
    return ResponseModel(ObservationSpec(n_views=3, task_names=dataset.task_names), train)


@needs_m4a1
def test_scores_equal_the_published_code_ties_included(seed_9139_model: ResponseModel) -> None:
    model, spec = seed_9139_model, seed_9139_model.spec
    for task, expected in PUBLISHED_FIRST_TURN.items():
        state = window_state(spec, [], [task])
        got = [model.score(state, TurnFeatures.from_action(a, 3)) for a in range(9)]
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
    state = window_state(spec, [TurnFeatures(1, (0, 2)), TurnFeatures(0)], [1, 0, 2])
    for action, expected_score in PUBLISHED_DEEP.items():
        got_score = model.score(state, TurnFeatures.from_action(action, 3))
        assert got_score == pytest.approx(expected_score, rel=1e-12)


@needs_m4a1
def test_the_row_order_decides_among_ties(seed_9139_model: ResponseModel) -> None:
    """Why the lexsort matters: unsorted rows give other scores for many recorded pairs."""
    from sklearn.neighbors import NearestNeighbors

    model = seed_9139_model
    shuffled = np.random.default_rng(0).permutation(len(model.pairs))
    other = NearestNeighbors(algorithm="kd_tree", n_neighbors=5).fit(model.pairs[shuffled])
    distances, indices = other.kneighbors(model.pairs)
    unsorted = np.average(model.labels[shuffled][indices], axis=1, weights=1 / (distances + 1e-6))
    sorted_scores = [
        model.score(row[:-4].tolist(), TurnFeatures(int(row[-4]), tuple(np.flatnonzero(row[-3:]))))
        for row in model.pairs
    ]
    assert np.sum(np.abs(unsorted - np.asarray(sorted_scores)) > 1e-9) > 20
