"""The robust own planner: an ensemble of response models, risk by CV inside the training split."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from tests.unit_tests.test_sim_data import generated_dialogues
from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.ensemble import KnnEnsemble, RobustResponse, stacking_weights
from tmo_graph.policy.knn import ResponseModel
from tmo_graph.policy.observation import ObservationSpec, TurnFeatures, view_subsets
from tmo_graph.policy.planner import LookaheadPlanner
from tmo_graph.policy.world import SimSettings, World
from tmo_graph.sim.data import Dataset, Episode, load_m4a1, paper_split
from tmo_graph.sim.evaluate import evaluate
from tmo_graph.sim.judges import DEFAULT_BATTERY


def _dataset(tmp_path: Path, n_episodes: int = 50) -> Dataset:
    data = generated_dialogues(n_episodes=n_episodes, n_views=3, n_tasks=3, n_turns=4, seed=7)
    path = tmp_path / "gen.json"
    path.write_text(json.dumps(data))
    return load_m4a1(path)


def _states(spec: ObservationSpec, count: int, seed: int = 0) -> list[list[float]]:
    """Window states a planner meets: a random history of actions over random tasks."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        rows: list[float] = [-1.0] * spec.per_step * spec.time_span
        for _ in range(rng.randint(1, spec.time_span)):
            flags = [float(rng.random() < 0.4) for _ in range(spec.n_views)]
            step = [float(rng.random() < 0.5), *flags, float(rng.randrange(len(spec.task_names)))]
            rows = rows[spec.per_step :] + step
        out.append(rows)
    return out


def test_members_are_knn_models_of_whole_dialogues(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    train, _ = paper_split(dataset.episodes, 1)
    spec = ObservationSpec(3, dataset.task_names)
    ensemble = KnnEnsemble(spec, train, fractions=((0.25, 3), (1.0, 1)), ks=(3, 5))
    assert ensemble.size == 4 * 2
    # Every subset takes a dialogue's turns all or none: a quarter of the dialogues, or all.
    for mask in ensemble.masks:
        taken = {int(i) for i in ensemble.owner[mask]}
        assert all(mask[ensemble.owner == i].all() for i in taken)
        assert len(taken) in (round(0.25 * len(train)), len(train))
    assert sum(len({int(i) for i in ensemble.owner[m]}) == len(train) for m in ensemble.masks) == 1
    # The all-dialogue k=5 member is the judge's model wherever no tie decides.
    full = ResponseModel(spec, train)
    column = ensemble.ks.index(5) * len(ensemble.masks) + int(np.argmax(ensemble.masks.sum(1)))
    checked = 0
    for state in _states(spec, 40):
        for views in [None, *view_subsets(3)]:
            action = TurnFeatures(0) if views is None else TurnFeatures(1, views)
            hot = [0.0] * 4 if views is None else [1.0, *(float(v in views) for v in range(3))]
            query = [*state, *hot]
            distances = np.sort(np.sqrt(((full.pairs - np.asarray(query)) ** 2).sum(1)))
            if distances[4] == distances[5]:
                continue  # a tie at the fifth neighbour: the row order decides, not the model
            index, scores = ensemble.member_scores(state)
            assert scores[column, index[tuple(hot)]] == pytest.approx(full.score(state, action))
            checked += 1
    assert checked > 50


def test_robust_score_is_the_mean_less_risk_times_the_spread_against_local(
    tmp_path: Path,
) -> None:
    dataset = _dataset(tmp_path)
    train, _ = paper_split(dataset.episodes, 1)
    spec = ObservationSpec(3, dataset.task_names)
    ensemble = KnnEnsemble(spec, train)
    careful, bold = RobustResponse(ensemble, 1.0), RobustResponse(ensemble, 0.0)
    state = _states(spec, 1, seed=3)[0]
    index, scores = ensemble.member_scores(state)
    local_column = index[(0.0, 0.0, 0.0, 0.0)]
    local = TurnFeatures(0)
    assert bold.score(state, local) == pytest.approx(scores[:, local_column].mean())
    assert careful.score(state, local) == bold.score(state, local)  # local carries no spread
    cloud = TurnFeatures(1, (0, 2))
    column = index[(1.0, 1.0, 0.0, 1.0)]
    spread = (scores[:, column] - scores[:, local_column]).std()
    assert spread > 0
    assert careful.score(state, cloud) == pytest.approx(scores[:, column].mean() - spread)
    assert bold.with_risk(1.0).score(state, cloud) == careful.score(state, cloud)
    with pytest.raises(TmoGraphError, match="risk -1"):
        RobustResponse(ensemble, -1)
    with pytest.raises(TmoGraphError, match="fractions"):
        KnnEnsemble(spec, train, fractions=((1.5, 1),))


def test_the_centre_full_data_members_or_stacked_and_the_spread_of_all(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    train, _ = paper_split(dataset.episodes, 1)
    spec = ObservationSpec(3, dataset.task_names)
    ensemble = KnnEnsemble(spec, train)
    full = ensemble.full_members()
    assert len(full) == len(ensemble.ks)  # one all-dialogue subset, one member per k
    assert all(ensemble.masks[i % len(ensemble.masks)].all() for i in full)
    state = _states(spec, 1, seed=3)[0]
    index, scores = ensemble.member_scores(state)
    local_column, column = index[(0.0, 0.0, 0.0, 0.0)], index[(1.0, 1.0, 0.0, 1.0)]
    spread = (scores[:, column] - scores[:, local_column]).std()
    cloud = TurnFeatures(1, (0, 2))
    best = RobustResponse(ensemble, 1.0, centre="full")
    assert best.score(state, cloud) == pytest.approx(scores[full, column].mean() - spread)
    assert best.with_risk(0.0).score(state, TurnFeatures(0)) == pytest.approx(
        scores[full, local_column].mean()
    )
    # Stacking: weights >= 0 summing to 1, one per member, fit on the training dialogues.
    weights = stacking_weights(spec, train, folds=4)
    assert weights.shape == (ensemble.size,) and (weights >= 0).all()
    assert weights.sum() == pytest.approx(1.0)
    stacked = RobustResponse(ensemble, 0.5, centre="stacked", weights=weights)
    assert stacked.score(state, cloud) == pytest.approx(weights @ scores[:, column] - 0.5 * spread)
    assert stacked.with_risk(0.0).weights is weights
    with pytest.raises(TmoGraphError, match="stacking weights"):
        RobustResponse(ensemble, 0.0, centre="stacked")
    with pytest.raises(TmoGraphError, match="stacking weights"):
        RobustResponse(ensemble, 0.0, weights=weights)
    with pytest.raises(TmoGraphError, match="unknown centre"):
        RobustResponse(ensemble, 0.0, centre="median")
    with pytest.raises(TmoGraphError, match="stacking folds"):
        stacking_weights(spec, train[:3], folds=4)


def _tight(dataset: Dataset) -> tuple[ObservationSpec, SimSettings]:
    # 12 s and 2 cents for up to four turns: two or three cloud calls at most.
    settings = SimSettings(latency_budget_s=12.0, usage_budget_usd=0.02)
    return ObservationSpec(3, dataset.task_names, with_budgets=True), settings


def test_the_robust_planner_never_overdraws_and_grows_careful_with_risk(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    train, test = paper_split(dataset.episodes, 1)
    spec, settings = _tight(dataset)
    judge = World(spec, settings, ResponseModel(ObservationSpec(3, dataset.task_names), test))
    planner = LookaheadPlanner.fit_robust(train, spec, settings, risk=0.0)
    clouds = []
    for risk in (0.0, 1.0, 4.0):
        result = evaluate(judge, test, planner.with_risk(risk))
        assert result["over_budget_share"] == 0.0
        clouds.append(result["actions"]["cloud_text"] + result["actions"]["cloud_views"])
    assert clouds[0] > clouds[2]  # a cloud call must beat local under most members
    with pytest.raises(TmoGraphError, match="only a robust planner"):
        LookaheadPlanner.fit(train, spec, settings).with_risk(1.0)


def test_the_risk_is_chosen_on_training_dialogues_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tmo_graph.sim import robust

    dataset = _dataset(tmp_path)
    train, test = paper_split(dataset.episodes, 1)
    spec, settings = _tight(dataset)
    seen: list[Episode] = []
    real = robust.build_judge

    def spy(spec_: object, knn_spec: ObservationSpec, episodes: list[Episode], seed: int) -> object:
        seen.extend(episodes)
        return real(spec_, knn_spec, episodes, seed)  # type: ignore[arg-type]

    monkeypatch.setattr(robust, "build_judge", spy)
    risk, report = robust.choose_risk(train, spec, settings, risks=(0.0, 2.0), folds=4)
    assert risk in (0.0, 2.0) and set(report["validation"]) == {"0.0", "2.0"}
    assert set(report["validation"]["0.0"]["judges"]) == set(DEFAULT_BATTERY)
    # Every training dialogue validated once per judge, never a test one.
    ids = {e.id for e in seen}
    assert ids == {e.id for e in train} and not ids & {e.id for e in test}
    # The rule: no validation judge trails local by more than one paired standard error,
    # then the highest mean lead over the judges.
    rows = report["validation"]
    for row in rows.values():
        safe = all(x["mean"] >= -x["se"] for x in row["judges"].values())
        assert row["safe"] == safe
    assert rows[str(risk)]["safe"] or not any(r["safe"] for r in rows.values())
    if rows[str(risk)]["safe"]:
        assert rows[str(risk)]["mean_lead"] == max(
            r["mean_lead"] for r in rows.values() if r["safe"]
        )
    with pytest.raises(TmoGraphError, match="folds"):
        robust.choose_risk(train[:5], spec, settings, folds=4)
    with pytest.raises(TmoGraphError, match="unknown CV rule"):
        robust.choose_risk(train, spec, settings, rule="worst")
