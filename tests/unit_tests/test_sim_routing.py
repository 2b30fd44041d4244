"""Hand-written policies (rules, cascade) in the M4A1 simulator, on the live RouteInput."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit_tests.test_sim_data import M4A1, needs_m4a1
from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.base import LOCAL, Action, RouteInput
from tmo_graph.policy.confidence import confidence
from tmo_graph.policy.knn import ResponseModel
from tmo_graph.policy.observation import ObservationSpec
from tmo_graph.policy.simple import Cascade, Rules
from tmo_graph.policy.world import SimSettings, World
from tmo_graph.sim.bench import median_view_score, run_benchmark
from tmo_graph.sim.data import Dataset, Episode, load_m4a1, paper_split
from tmo_graph.sim.evaluate import evaluate_route_policy
from tmo_graph.sim.routing import RecordedConfidence, RoutePolicyRunner, text_confidence

pytestmark = needs_m4a1


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return load_m4a1(M4A1)


def _world(dataset: Dataset, settings: SimSettings, train: list[Episode]) -> World:
    spec = ObservationSpec(dataset.n_views, dataset.task_names, settings.time_span)
    return World(spec, settings, ResponseModel(spec, train))


def _walk(runner: RoutePolicyRunner, episodes: list[Episode]) -> list[tuple[Episode, int, bool]]:
    """(episode, turn, escalated) of every turn, walking budgets as evaluate does."""
    out = []
    world = runner.world
    for episode in episodes:
        records: list = []
        left = {
            "latency_s": world.settings.latency_budget_s,
            "cost_usd": world.settings.usage_budget_usd,
        }
        for t in range(len(episode.turns)):
            d = runner.decide(episode, t, records, left)  # type: ignore[arg-type]
            seconds, usd = world.cost(d.action)
            if d.escalated:
                seconds, usd = seconds + world.local_s, usd + world.local_usd
            left = {"latency_s": left["latency_s"] - seconds, "cost_usd": left["cost_usd"] - usd}
            records.append(runner.record(episode, t, d, seconds, usd, left))  # type: ignore[arg-type]
            out.append((episode, t, d.escalated))
    return out


def test_text_confidence_reads_refusals_loops_and_echoes() -> None:
    assert text_confidence("Turn left at the second door.") == 1.0
    assert text_confidence("Sorry, I can't see that.") == 0.0
    loop = "the cat the cat the cat the cat the cat the cat"
    assert 0.0 < text_confidence(loop) < 0.5
    answer = "Put the pan on the left burner and wait five minutes."
    assert text_confidence(answer, [answer]) < 0.5 < text_confidence(answer, ["Hello there."])


def test_cascade_escalates_exactly_the_low_confidence_turns(dataset: Dataset) -> None:
    train, test = paper_split(dataset.episodes, 9139)
    settings = SimSettings(latency_budget_s=1e6, usage_budget_usd=1e6)  # never in the way
    world = _world(dataset, settings, train)
    conf = RecordedConfidence.fit(dataset.episodes, train)
    runner = RoutePolicyRunner(world, Cascade(), conf, 0.5, median_view_score(train))
    walked = _walk(runner, test)
    unsure = [(e.id, t) for e, t, _ in walked if conf(e, t) < 0.5]
    escalated = [(e.id, t) for e, t, esc in walked if esc]
    assert escalated == unsure and 0 < len(unsure) < len(walked)
    # Recorded-cloud turns have no local answer: their confidence is the training prior.
    cloud_turn = next((e, t) for e, t, _ in walked if e.turns[t].action == 1)
    assert conf(*cloud_turn) == conf.prior[cloud_turn[0].turns[cloud_turn[1]].task]
    result = evaluate_route_policy(world, test, runner)
    assert result["actions"]["escalated"] == len(unsure)
    assert result["actions"]["local"] == len(walked) - len(unsure)


def test_escalated_turn_pays_both_calls_and_is_judged_as_cloud(dataset: Dataset) -> None:
    train, _ = paper_split(dataset.episodes, 9139)
    world = _world(dataset, SimSettings(), train)
    state = [-1.0] * (world.spec.per_step * world.spec.time_span)
    state[-1] = 0.0
    plain = world.outcome(state, 2, [0.2, 0.2, 0.2])
    after = world.outcome(state, 2, [0.2, 0.2, 0.2], after_local=True)
    assert after.response == plain.response
    assert after.latency_s == pytest.approx(plain.latency_s + world.local_s)
    assert after.usage_usd == pytest.approx(plain.usage_usd + world.local_usd)
    assert after.reward < plain.reward
    with pytest.raises(TmoGraphError):
        world.outcome(state, 0, [0.2, 0.2, 0.2], after_local=True)


def test_budgets_hold_for_hand_written_policies(dataset: Dataset) -> None:
    train, test = paper_split(dataset.episodes, 1355)
    # Room for about one cloud call with a view per dialogue.
    settings = SimSettings(latency_budget_s=1e6, usage_budget_usd=0.006)
    world = _world(dataset, settings, train)
    conf = RecordedConfidence.fit(dataset.episodes, train)
    for policy in (Rules(min_score=median_view_score(train)), Cascade()):
        runner = RoutePolicyRunner(world, policy, conf, 0.5, median_view_score(train))
        result = evaluate_route_policy(world, test, runner)
        assert result["over_budget_share"] == 0.0
        assert result["actions"]["cloud_views"] + result["actions"]["cloud_text"] > 0


def test_policies_see_the_route_nodes_input(dataset: Dataset) -> None:
    train, test = paper_split(dataset.episodes, 9139)
    world = _world(dataset, SimSettings(), train)
    seen: list[RouteInput] = []

    class Spy:
        name = "spy"
        escalates = False

        def decide(self, observation: RouteInput) -> Action:
            seen.append(observation)
            return Action("cloud", ("view0", "view1", "view2"))

    conf = RecordedConfidence.fit(dataset.episodes, train)
    evaluate_route_policy(world, test[:1], RoutePolicyRunner(world, Spy(), conf, 0.5, 0.2))
    episode = test[0]
    assert [o.prompt for o in seen] == [t.question for t in episode.turns]
    assert [o.task for o in seen] == [t.task for t in episode.turns]
    first = seen[0]
    assert [c["name"] for c in first.candidates] == ["view0", "view1", "view2"]
    assert [c["score"] for c in first.candidates] == list(episode.association[0])
    assert LOCAL in first.allowed and len(first.history) == 0
    assert first.allowed[Action("cloud")].cost_usd == world.cloud_usd[0]
    assert first.budget_left == {"latency_s": 30.0, "cost_usd": 0.05}
    if len(seen) > 1:
        assert seen[1].history[0]["views_sent"] == ["view0", "view1", "view2"]
        assert seen[1].budget_left["cost_usd"] == pytest.approx(0.05 - world.cloud_usd[3])


def test_scored_confidences_are_the_live_estimator(dataset: Dataset, tmp_path: Path) -> None:
    rows = []
    for episode in dataset.episodes:
        for turn in episode.turns:
            if turn.action == 0:
                n = len(turn.answer.split()) or 1
                rows.append(
                    {"episode": episode.id, "score": -99.0, "answer": turn.answer,
                     "logprobs": [-0.1 * (n % 7)] * n, "entropies": [0.2 * (n % 5)] * n}
                )  # fmt: skip
    path = tmp_path / "scored.json"
    path.write_text(json.dumps(rows))
    train, _ = paper_split(dataset.episodes, 9139)
    conf = RecordedConfidence.fit(dataset.episodes, train, path)
    assert conf.source == "scored"
    episode = next(e for e in dataset.episodes if e.turns[0].action == 0)
    row = next(r for r in rows if r["episode"] == episode.id)
    expected, _ = confidence(row["logprobs"], row["entropies"], row["answer"])
    assert conf(episode, 0) == expected
    path.write_text(json.dumps(rows[1:]))
    with pytest.raises(TmoGraphError, match="no token scores"):
        RecordedConfidence.fit(dataset.episodes, train, path)


@pytest.mark.parametrize("protocol", ["paper", "heldout"])
def test_benchmark_has_rules_and_cascade_rows(dataset: Dataset, protocol: str) -> None:
    result = run_benchmark(
        dataset, [9139], ["local", "rules", "cascade"], SimSettings(), protocol=protocol
    )
    rows = result["methods"]
    _, test = paper_split(dataset.episodes, 9139)
    assert list(rows) == ["Local", "rules", "cascade"]
    for name in ("rules", "cascade"):
        run = rows[name]["per_seed"]["9139"]
        assert run["route_settings"]["confidence"] == "text"
        kinds = ("local", "cloud_text", "cloud_views")
        assert sum(run["actions"][k] for k in kinds) == sum(len(e.turns) for e in test)
    cascade = rows["cascade"]["per_seed"]["9139"]["actions"]
    assert cascade["escalated"] == cascade["cloud_text"] + cascade["cloud_views"]
    assert rows["rules"]["mean"]["reward"] != rows["Local"]["mean"]["reward"]
    low = run_benchmark(
        dataset, [9139], ["cascade"], SimSettings(), protocol=protocol, confidence_threshold=0.0
    )
    assert low["methods"]["cascade"]["mean"]["actions"]["escalated"] == 0
