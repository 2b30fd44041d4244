"""A policy trained in the simulator routes live turns exactly as the simulator would."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services, png_bytes
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.models.scoring import TASK_EXAMPLES
from tmo_graph.policy.observation import (
    ObservationSpec,
    TurnFeatures,
    action_views,
    build_observation,
)
from tmo_graph.policy.world import SimSettings
from tmo_graph.sim.data import parse_episode
from tmo_graph.sim.train import load_policy, train_policy

TASKS = tuple(sorted(TASK_EXAMPLES))
VIEWS = ("first_person", "overhead", "side")


def _episodes(n: int) -> list[Any]:
    rng = random.Random(5)
    out = []
    for i in range(n):
        turns = []
        for _ in range(rng.randint(2, 5)):
            cloud = rng.random() < 0.6
            turns.append(
                {
                    "task_cat": rng.choice(TASKS),
                    "action": int(cloud),
                    "image_index": sorted(rng.sample(range(3), rng.randint(1, 3)))
                    if cloud
                    else None,
                    "answer": "ok",
                    "score": rng.uniform(0.5, 2.0) if cloud else rng.uniform(0.0, 1.0),
                }
            )
        scores = [[rng.uniform(0.1, 0.3) for _ in range(3)] for _ in turns]
        out.append(parse_episode({"interactions": turns, "association_score": scores}, i, 3))
    return out


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = ObservationSpec(n_views=3, task_names=TASKS, with_budgets=True)
    trained = train_policy("dqn", _episodes(30), spec, SimSettings(), steps=400, seed=1)
    path = tmp_path_factory.mktemp("policy") / "rc-dqn.zip"
    trained.save(path)
    return path


def test_route_node_takes_the_simulators_action(policy_file: Path, tmp_path: Path) -> None:
    trained = load_policy(policy_file)
    seen: list[np.ndarray] = []
    predict = trained.model.predict

    def spy(obs: np.ndarray, deterministic: bool = True) -> Any:
        seen.append(np.array(obs))
        return predict(obs, deterministic=deterministic)

    views = {}
    for name in VIEWS:
        path = tmp_path / f"{name}.png"
        path.write_bytes(png_bytes())
        views[name] = {"image": str(path), "description": name}
    services = fake_services(tmp_path, FakeLocal(["local"]), FakeCloud())
    graph = build_graph(services, checkpointer=InMemorySaver())
    context = Context(policy="learned", policy_file=str(policy_file), cost_budget_usd=0.05)
    from tmo_graph.policy.learned import load_learned

    load_learned(str(policy_file)).policy.model.predict = spy  # the graph's loaded copy
    config = {"configurable": {"thread_id": "learned"}}
    prompts = ["Turn on the light.", "What is on the stove?", "Text Sam.", "Any recipe?"]
    for prompt in prompts:
        out = graph.invoke(
            {"messages": [("user", prompt)], "views": views}, config, context=context
        )
    records = out["turns"]
    assert len(seen) == len(prompts)

    # The simulator's side: the same history, tasks and budgets through the shared builder.
    spec = trained.spec
    history: list[TurnFeatures] = []
    budget = (context.latency_budget_s, context.cost_budget_usd)
    for t, record in enumerate(records):
        tasks = [spec.task_id(r["task"]) for r in records[: t + 1]]
        expected_obs = build_observation(spec, history, tasks, budget)
        assert seen[t].tolist() == pytest.approx(expected_obs.tolist())
        action = trained(expected_obs)
        sent = [VIEWS[v] for v in action_views(action, 3)]
        assert record["route"] == ("local" if action == 0 else "cloud")
        assert record["views_sent"] == sent
        history.append(TurnFeatures.from_action(action, 3))
        budget = (record["budget_left"]["latency_s"], record["budget_left"]["cost_usd"])


def test_history_of_varied_actions_reaches_the_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scripted policy reads the turn from the observation's padding and the previous
    action's view flags from its history: the graph must feed both exactly."""
    import tmo_graph.policy.learned as learned

    spec = ObservationSpec(n_views=3, task_names=TASKS, with_budgets=True)
    script = [0, 2, 8, 1, 6]  # local, cloud+{0}, cloud+{0,1,2}, cloud text, cloud+{0,2}
    flags_seen: list[list[float]] = []

    def scripted(obs: np.ndarray, association: Any = ()) -> int:
        rows = obs[: spec.per_step * spec.time_span].reshape(spec.time_span, spec.per_step)
        turn = spec.time_span - 1 - int((rows[:, -1] == -1).sum())  # padded rows: task -1
        flags_seen.append(rows[-1, 1:4].tolist())
        return script[turn]

    monkeypatch.setattr(learned, "load_learned", lambda path: learned.LearnedPolicy(scripted, spec))
    views = {}
    for name in VIEWS:
        path = tmp_path / f"{name}.png"
        path.write_bytes(png_bytes())
        views[name] = {"image": str(path), "description": name}
    graph = build_graph(
        fake_services(tmp_path, FakeLocal(["local"]), FakeCloud()), checkpointer=InMemorySaver()
    )
    context = Context(policy="learned", policy_file="scripted", cost_budget_usd=1.0)
    config = {"configurable": {"thread_id": "scripted"}}
    for i in range(len(script)):
        out = graph.invoke(
            {"messages": [("user", f"question {i}")], "views": views}, config, context=context
        )
    sent = [(r["route"], r["views_sent"]) for r in out["turns"]]
    assert sent == [
        ("local", []),
        ("cloud", ["first_person"]),
        ("cloud", ["first_person", "overhead", "side"]),
        ("cloud", []),
        ("cloud", ["first_person", "side"]),
    ]
    # Each turn's state carries the views the previous turn actually sent.
    assert flags_seen == [[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]]


def test_own_planner_file_round_trip(tmp_path: Path) -> None:
    spec = ObservationSpec(n_views=3, task_names=TASKS, with_budgets=True)
    episodes = _episodes(30)
    planner = train_policy("own", episodes, spec, SimSettings())
    path = tmp_path / "own.pkl"
    planner.save(path)
    loaded = load_policy(path, expect=ObservationSpec(3, TASKS))
    assert loaded.algorithm == "own"
    for t, episode in enumerate(episodes[:10]):
        tasks = [spec.task_id(turn.task) for turn in episode.turns[:1]]
        obs = build_observation(spec, [], tasks, (30.0 - t, 0.05 - t / 1000))
        assoc = list(episode.association[0])
        assert loaded(obs, assoc) == planner(obs, assoc)
    with pytest.raises(TmoGraphError, match="trained for 3 views"):
        load_policy(path, expect=ObservationSpec(2, TASKS))


def test_a_policy_for_other_views_fails_clearly(policy_file: Path, tmp_path: Path) -> None:
    services = fake_services(tmp_path, FakeLocal(["local"]), FakeCloud())
    graph = build_graph(services, checkpointer=InMemorySaver())
    context = Context(policy="learned", policy_file=str(policy_file))
    two_views = {"a": {"description": "view a"}, "b": {"description": "view b"}}
    with pytest.raises(TmoGraphError, match="trained for 3 views; this dialogue has 2"):
        graph.invoke(
            {"messages": [("user", "hi")], "views": two_views},
            {"configurable": {"thread_id": "x"}},
            context=context,
        )


def test_policy_files_load_without_the_simulator(tmp_path: Path) -> None:
    """policy/ reads every policy file (here the own planner) with no tmo_graph.sim import."""
    import subprocess
    import sys

    spec = ObservationSpec(n_views=3, task_names=TASKS, with_budgets=True)
    trained = train_policy("own", _episodes(30), spec, SimSettings())
    path = tmp_path / "own.pkl"
    trained.save(path)
    obs = build_observation(spec, [], [0], (30.0, 0.05))
    code = (
        "import sys, numpy as np\n"
        "from tmo_graph.policy.learned import load_policy\n"
        f"p = load_policy({str(path)!r})\n"
        f"print(p(np.array({obs.tolist()!r}, dtype=np.float32), [0.1, 0.3, 0.2]))\n"
        "print(sorted(m for m in sys.modules if m.startswith('tmo_graph.sim')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert int(out[0]) == trained(obs, [0.1, 0.3, 0.2])
    assert out[1] == "[]"


def test_planner_files_from_before_the_move_still_load() -> None:
    import io

    from tmo_graph.policy.learned import _PlannerUnpickler
    from tmo_graph.policy.planner import LookaheadPlanner

    unpickler = _PlannerUnpickler(io.BytesIO(b""))
    assert unpickler.find_class("tmo_graph.sim.planner", "LookaheadPlanner") is LookaheadPlanner


def _route_input(candidates: list[dict[str, Any]]) -> Any:
    from tmo_graph.policy.base import RouteInput

    return RouteInput(
        prompt="What is that noise?",
        task=TASKS[0],
        turn=0,
        candidates=candidates,  # type: ignore[arg-type]
        history=[],
        budget_left={"latency_s": 30.0, "cost_usd": 0.05},
    )


def test_a_policy_trained_with_a_microphone_finds_it_wherever_the_dialogue_lists_it() -> None:
    """Trained on (image, image, audio): a live dialogue listing its microphone first still
    gives the microphone the trained microphone's place, in the action and the history."""
    from tmo_graph.policy.learned import LearnedPolicy
    from tmo_graph.policy.observation import views_action

    spec = ObservationSpec(
        n_views=3, task_names=TASKS, with_budgets=True, modality_kinds=("image", "image", "audio")
    )
    seen: list[list[float]] = []

    def send_the_clip(obs: np.ndarray, association: Any = ()) -> int:
        seen.append(list(association))
        return views_action([2], 3)  # the trained audio modality only

    policy = LearnedPolicy(policy=send_the_clip, spec=spec)
    mic = {"name": "mic", "kind": "device", "score": 0.9, "image": None, "audio": "/m.wav"}
    cams = [
        {"name": name, "kind": "device", "score": score, "image": f"/{name}.png"}
        for name, score in (("bench_cam", 0.2), ("door_cam", 0.1))
    ]
    action = policy.decide(_route_input([mic, *cams]))
    assert action.route == "cloud" and action.views == ("mic",)
    assert seen == [[0.2, 0.1, 0.9]]  # association in the trained order: cameras, then the mic
    with pytest.raises(TmoGraphError, match="3 images and 0 audio clips"):
        policy.decide(_route_input([{**mic, "audio": None, "image": "/x.png"}, *cams]))
