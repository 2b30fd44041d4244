"""`tmo-graph fit` on a small generated deployment with a known truth, run through the live
graph: the refit beats the shipped default on the later turns; the time order; the errors;
a rewritten policy file reloads without a restart."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from typer.testing import CliRunner

from bench.traffic_graph import Outcome, entropy_for, run_traffic
from tests.unit_tests.fakes import fake_services
from tmo_graph.cli.app import app
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.policy.confidence import confidence
from tmo_graph.policy.learned import load_learned
from tmo_graph.policy.refit import (
    MIN_LABELLED,
    Example,
    RefitModel,
    RefitPolicy,
    RewardTerms,
    time_split,
)
from tmo_graph.settings import Settings
from tmo_graph.sim import traffic

TERMS = RewardTerms(traffic.DEVICE, traffic.NETWORK)


def _reward(outcomes: list[Outcome]) -> tuple[float, float]:
    """Mean reward and mean paper-table USD per turn, by the truth."""
    rewards = [TERMS.reward(o.quality, o.route, o.escalated) for o in outcomes]
    usd = [TERMS.cost(o.route, o.escalated)[1] for o in outcomes]
    return sum(rewards) / len(rewards), sum(usd) / len(usd)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, object]:
    tmp = tmp_path_factory.mktemp("deployment")
    dialogues = traffic.generate(240, seed=3)
    run = run_traffic(dialogues, tmp / "threads.sqlite", "rules", tmp=tmp)
    return tmp, dialogues, run


def _config(tmp: Path) -> Path:
    path = tmp / "deployment.yaml"
    path.write_text(f"device:\n  profile: {traffic.DEVICE}\ncloud:\n  network: {traffic.NETWORK}\n")
    return path


def test_the_refit_beats_the_shipped_default_on_the_later_turns(deployment) -> None:
    tmp, dialogues, default = deployment
    policy = tmp / "policy.json"
    db = tmp / "threads.sqlite"
    result = CliRunner().invoke(
        app, ["fit", "--threads", str(db), "--out", str(policy), "-c", str(_config(tmp))]
    )
    assert result.exit_code == 0, result.output
    assert "before (as served)" in result.output and "after (refit)" in result.output
    model = RefitModel.load(policy)
    holdout = model.info["holdout"]
    assert holdout["turns"] == 72  # the latest 30 % of 240
    assert holdout["after"]["reward"] > holdout["before"]["reward"]
    # The truth: the device's recommendations are bad and its edits good; the refit learnt it.
    assert model.route("Recommendation", 1) == "cloud"
    assert model.route("Message Editing", 1) == "local"
    assert model.escalation_threshold("Message Editing", 1) < 0.5  # shipped: 0.5
    # The same later dialogues through the live graph under the refit file, judged by the truth.
    later_ids = list(dict.fromkeys(o.thread_id for o in default.outcomes[-72:]))
    later = [d for d in dialogues if d.thread_id in later_ids]
    refit = run_traffic(later, tmp / "refit.sqlite", "learned", policy, judge=False, tmp=tmp)
    served = [o for o in default.outcomes if o.thread_id in later_ids]
    before_reward, before_usd = _reward(served)
    after_reward, after_usd = _reward(refit.outcomes)
    assert after_reward > before_reward + 0.1
    assert after_usd <= before_usd
    assert not any(o.over_budget for o in refit.outcomes)


def test_the_holdout_is_the_later_turns() -> None:
    rows = [
        Example(f"t{i}", t, "Query", "local", False, 0.5, 0.5, when=float(i))
        for i in (3, 1, 2)
        for t in range(2)
    ]
    train, test = time_split(rows, 0.5)
    assert [(e.thread_id, e.turn) for e in train] == [("t1", 0), ("t1", 1), ("t2", 0)]
    assert [(e.thread_id, e.turn) for e in test] == [("t2", 1), ("t3", 0), ("t3", 1)]
    with pytest.raises(TmoGraphError, match="holdout"):
        time_split(rows, 1.0)


def test_too_few_labels_say_how_many_are_needed() -> None:
    rows = [Example("t", i, "Query", "local", False, 0.5, 0.5) for i in range(MIN_LABELLED - 1)]
    with pytest.raises(TmoGraphError, match=f"at least {MIN_LABELLED}"):
        RefitModel.fit(rows, TERMS)


def test_fit_errors_are_one_line(tmp_path: Path, deployment) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["fit", "--threads", str(tmp_path / "none.sqlite")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    garbage = tmp_path / "notes.sqlite"
    garbage.write_text("not a database, just notes " * 100)
    broken = runner.invoke(app, ["fit", "--threads", str(garbage)])
    assert broken.exit_code == 2 and "is not a thread database" in broken.output
    empty = tmp_path / "empty.sqlite"
    run_traffic([], empty, judge=False)
    none = runner.invoke(app, ["fit", "--threads", str(empty)])
    assert none.exit_code == 2 and "no finished turns" in none.output
    unlabelled = tmp_path / "unlabelled.sqlite"
    run_traffic(traffic.generate(12, seed=5), unlabelled, judge=False)
    few = runner.invoke(app, ["fit", "--threads", str(unlabelled)])
    assert few.exit_code == 2 and f"at least {MIN_LABELLED} are needed" in few.output
    since = runner.invoke(
        app, ["fit", "--threads", str(deployment[0] / "threads.sqlite"), "--since", "2999-01-01"]
    )
    assert since.exit_code == 2 and "since 2999-01-01" in since.output


def test_the_truth_model_is_as_stated() -> None:
    assert traffic.true_gap("Recommendation", 0, 0.0) == pytest.approx(0.80)
    assert traffic.true_gap("Message Editing", 5, 0.0) == pytest.approx(0.08 + 5 * 0.02)
    assert traffic.true_gap("Query", 0, 9.0) == 1.0
    # Same gap, the shipped confidence is biased up for recommendations, down for edits.
    sure = traffic.shipped_confidence("Recommendation", 0.5, 0.0)
    unsure = traffic.shipped_confidence("Message Editing", 0.5, 0.0)
    assert sure > 0.8 > 0.2 > unsure
    turns = [t for d in traffic.generate(3000, seed=1) for t in d.turns]
    assert len(turns) == 3000
    share = sum(t.task in ("Recommendation", "Message Editing") for t in turns) / len(turns)
    assert 0.75 < share < 0.85
    # The fake device's token entropies give the stated confidence through the shipped check.
    for target in (0.1, 0.5, 0.9):
        n = 12
        got, _ = confidence([-0.2] * n, [entropy_for(target)] * n, "a b c d e f g h i j k l")
        assert got == pytest.approx(target, abs=2e-3)


def _small_model() -> RefitModel:
    """A refit of 60 labelled turns: recommendations judged bad, queries fair."""
    rows = [
        Example("t", i % 6, task, "local", False, 0.3 + 0.01 * (i % 40), q, when=i)
        for i, (task, q) in enumerate([("Query", 0.6), ("Recommendation", 0.1)] * 30)
    ]
    return RefitModel.fit(rows, TERMS)


def _touch(path: Path) -> None:
    """A later modification time, whatever the file system's clock resolution."""
    os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns + 1_000_000_000))


def test_a_rewritten_policy_file_is_loaded_again(tmp_path: Path) -> None:
    policy = tmp_path / "p.json"
    model = _small_model()
    model.save(policy)
    first = load_learned(str(policy))
    assert isinstance(first, RefitPolicy)
    assert first.model.route("Recommendation", 0) == "cloud"
    assert load_learned(str(policy)) is first  # cached while the file is unchanged
    model.gap = {task: [0.95, 0.0, 2.0] for task in model.gap}  # local answers now judged good
    model.calibration = {task: [0.95, 0.0] for task in model.calibration}
    model.save(policy)
    _touch(policy)
    second = load_learned(str(policy))
    assert second is not first and second.model.route("Recommendation", 0) == "local"


def test_serve_reports_and_logs_a_reloaded_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi.testclient import TestClient

    from tmo_graph.server.app import create_app

    policy = tmp_path / "policy.json"
    model = _small_model()
    model.info["fit_at"] = "2026-12-01T00:00:00+00:00"
    model.save(policy)
    settings = Settings.model_validate(
        {"routing": {"policy": "learned", "policy_file": str(policy)}}
    )
    services = fake_services(tmp_path, settings=settings)
    graph = build_graph(services, checkpointer=InMemorySaver())
    with TestClient(create_app(graph, settings, no_auth=True)) as client:
        health = client.get("/health").json()
        assert health["policy"] == {
            "file": str(policy),
            "fit_at": "2026-12-01T00:00:00+00:00",
            "reloads": 0,
        }
        model.info["fit_at"] = "2026-12-02T00:00:00+00:00"
        model.save(policy)
        _touch(policy)
        with caplog.at_level(logging.INFO, logger="tmo_graph.server"):
            health = client.get("/health").json()
        assert health["policy"]["fit_at"] == "2026-12-02T00:00:00+00:00"
        assert health["policy"]["reloads"] == 1
        assert f"policy reloaded from {policy} (fit at 2026-12-02" in caplog.text
        # The turns use the new file from the next turn on: the graph loads this version.
        reply = client.post(
            "/v1/chat/completions",
            json={"model": "tmo-learned", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["tmo"]["policy"] == "refit"


def test_fit_reads_threads_and_labels_in_postgresql(pgvector, tmp_path: Path) -> None:
    """The same records and labels in PostgreSQL (threads.url) as in a SQLite file."""
    from tmo_graph.cli.fit_records import read_examples

    url = pgvector.fresh().socket_url
    settings = Settings.model_validate(
        {
            "device": {"profile": traffic.DEVICE, "live": False},
            "cloud": {"network": traffic.NETWORK, "mode": "off"},
            "threads": {"url": url},
        }
    )
    dialogues = traffic.generate(60, seed=11)
    run = run_traffic(dialogues, None, "rules", tmp=tmp_path, settings=settings)
    examples, over = read_examples(settings, None)
    assert over == 0
    assert sorted((e.thread_id, e.turn) for e in examples) == sorted(
        (o.thread_id, o.turn) for o in run.outcomes
    )
    drafted = sum(o.route == "local" or o.escalated for o in run.outcomes)
    assert sum(e.quality is not None for e in examples) == drafted
    truth = {(d.thread_id, t): x.judged for d in dialogues for t, x in enumerate(d.turns)}
    assert all(e.quality == truth[(e.thread_id, e.turn)] for e in examples if e.quality is not None)
