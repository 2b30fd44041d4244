"""Audio modalities in the simulator: declared kinds, prices, generated dialogues,
every policy on them. M4A1 has no audio, so everything here runs on generated dialogues."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.unit_tests.test_sim_data import generated_dialogues, write
from tmo_graph.cli.app import app
from tmo_graph.costs import prices, profiles
from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.base import Action
from tmo_graph.policy.budget import CostModel
from tmo_graph.policy.knn import ResponseModel
from tmo_graph.policy.observation import (
    ObservationSpec,
    action_views,
    modality_names,
    n_actions,
)
from tmo_graph.policy.world import SimSettings, World
from tmo_graph.sim.bench import run_benchmark
from tmo_graph.sim.data import Dataset, load_m4a1, paper_split
from tmo_graph.sim.generate import AudioModel, generate_dialogues, write_dialogues
from tmo_graph.sim.methods import METHOD_NAMES

WIRED = profiles.network("Wired")
KINDS = ("image", "image", "image", "audio")


def _source(tmp_path: Path, episodes: int = 40) -> tuple[Path, Dataset]:
    """An images-only M4A1-format source (3 views, 4 tasks), as M4A1 itself would be."""
    path = write(
        tmp_path, generated_dialogues(episodes, n_views=3, n_tasks=4, n_turns=4), "src.json"
    )
    return path, load_m4a1(path)


def _generated(tmp_path: Path, n: int = 30, seed: int = 0, **model: Any) -> tuple[Dataset, Dataset]:
    """(source, generated with 3 views + mic), the generated one written and loaded back."""
    _, source = _source(tmp_path)
    episodes = generate_dialogues(source, n, seed=seed, model=AudioModel(**model))
    path = tmp_path / f"gen-{seed}-{n}.json"
    write_dialogues(path, episodes)
    return source, load_m4a1(path)


# ---- prices --------------------------------------------------------------------------------


def test_an_audio_clip_is_priced_by_its_upload_and_its_audio_tokens() -> None:
    # 10 s of mono 16 kHz 16-bit PCM is 320,000 bytes: 2.56 Mbit over the assumed uplink.
    assert profiles.audio_clip_time_s(WIRED) == pytest.approx(2.56 / 100)
    assert profiles.audio_clip_time_s(profiles.network("4G"), 5.0) == pytest.approx(1.28 / 2)
    # 10 tokens a second at 40 USD per million: 0.004 USD for 10 s, linear in the length.
    assert profiles.audio_clip_cost_usd() == pytest.approx(0.004)
    assert profiles.audio_clip_cost_usd(30.0) == pytest.approx(0.012)
    with pytest.raises(TmoGraphError, match="lasts > 0 s"):
        profiles.audio_clip_cost_usd(0.0)
    with pytest.raises(TmoGraphError, match="no uplink rate for network profile '3G'"):
        profiles.audio_clip_time_s(profiles.NetworkProfile("3G", (1.0, 2.0)))


def test_the_paper_cost_model_adds_each_clip_to_the_calls_image_count() -> None:
    model = CostModel.paper("Jetson TX2", "Wired", 3)
    clips = {"audio3": 10.0}
    one_view = Action("cloud", ("view0",))
    assert model.expected(one_view, 0, audio_s=clips) == model.expected(one_view, 0)
    with_mic = model.expected(Action("cloud", ("view0", "audio3")), 0, audio_s=clips)
    assert with_mic.latency_s == pytest.approx(profiles.cloud_time_s(WIRED, 1) + 0.0256)
    assert with_mic.cost_usd == pytest.approx(profiles.cloud_cost_usd(1) + 0.004)
    mic_only = model.expected(Action("cloud", ("audio3",)), 0, audio_s={"audio3": 20.0})
    assert mic_only.cost_usd == pytest.approx(profiles.cloud_cost_usd(0) + 0.008)
    # The price row the simulator's clips use is an audio model's (the live graph's table).
    assert prices.PRICES[profiles.SIM_AUDIO_PRICE_AS].input_audio_per_mtok == 40.0


# ---- the observation spec ---------------------------------------------------------------------


def test_spec_kinds_round_trip_and_images_only_is_the_papers_spec() -> None:
    spec = ObservationSpec(4, ("a", "b"), with_budgets=True, modality_kinds=KINDS)
    assert spec.kinds == KINDS and spec.per_step == 6  # a clip is one more flag
    assert ObservationSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    images = ObservationSpec(3, ("a",), modality_kinds=("image",) * 3)
    assert images == ObservationSpec(3, ("a",)) and "modality_kinds" not in images.to_dict()
    assert modality_names(KINDS) == ["view0", "view1", "view2", "audio3"]
    with pytest.raises(TmoGraphError, match="one kind per modality"):
        ObservationSpec(3, ("a",), modality_kinds=KINDS)
    with pytest.raises(TmoGraphError, match="one kind per modality"):
        ObservationSpec(1, ("a",), modality_kinds=("video",))


# ---- the file format --------------------------------------------------------------------------


def _declared(tmp_path: Path) -> list[dict[str, Any]]:
    data = generated_dialogues(4, n_views=2, n_tasks=2, n_turns=2)
    for episode in data:
        episode["modalities"] = [{"name": "cam", "kind": "image"}, {"name": "mic", "kind": "audio"}]
    return data


def test_declared_modalities_load_with_their_kinds(tmp_path: Path) -> None:
    dataset = load_m4a1(write(tmp_path, _declared(tmp_path)))
    assert dataset.kinds == ("image", "audio") and dataset.n_views == 2
    assert [m.name for m in dataset.modalities] == ["cam", "mic"]
    plain = load_m4a1(write(tmp_path, generated_dialogues(4, n_views=2), "plain.json"))
    assert plain.modalities == () and plain.kinds == ("image", "image")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d[0]["modalities"][1].update(kind="video"),
            r"episode 0 \(id gen-0\): field `modalities\[1\].kind` must be one of image, audio",
        ),
        (
            lambda d: d[0]["modalities"][1].update(name="cam"),
            r"episode 0 .*field `modalities` must list distinct names",
        ),
        (
            lambda d: d[0]["modalities"].pop(),
            r"episode 0 .*field `association_score\[0\]` must list 1 scores, one per declared",
        ),
        (
            lambda d: d[2].pop("modalities"),
            r"episode 2 \(id gen-2\): field `modalities` differs from episode 0's",
        ),
        (
            lambda d: d[0]["modalities"][0].update(seconds=3),
            r"episode 0 .*field `modalities\[0\].seconds` extra inputs are not permitted",
        ),
    ],
)
def test_broken_modalities_name_the_episode_and_field(
    tmp_path: Path, mutate: Any, message: str
) -> None:
    data = copy.deepcopy(_declared(tmp_path))
    mutate(data)
    with pytest.raises(TmoGraphError, match=message):
        load_m4a1(write(tmp_path, data))


# ---- the generator ---------------------------------------------------------------------------


def test_generated_dialogues_follow_the_stated_model(tmp_path: Path) -> None:
    _, source = _source(tmp_path)
    model = AudioModel()
    episodes = generate_dialogues(source, 200, seed=5, model=model)
    assert episodes == generate_dialogues(source, 200, seed=5, model=model)  # seeded
    assert episodes != generate_dialogues(source, 200, seed=6, model=model)
    by_id = {e.id: e for e in source.episodes}
    need = model.need_by_task(source.task_names)
    needed_by_task: dict[str, list[bool]] = {task: [] for task in source.task_names}
    sent_on_cloud = []
    for episode in episodes:
        assert [m["kind"] for m in episode["modalities"]] == list(KINDS)
        src = by_id[episode["source_id"]]
        for turn, row, original in zip(
            episode["interactions"], episode["association_score"], src.turns, strict=True
        ):
            (needed,) = turn["needs_audio"]
            needed_by_task[original.task].append(needed)
            low, high = model.assoc_needed if needed else model.assoc_idle
            assert low <= row[3] <= high
            sent = 3 in (turn["image_index"] or [])
            if original.action == 1:
                sent_on_cloud.append(sent)
            else:
                assert turn["action"] == 0 and not sent  # the device hears no clip
            expected = original.score
            if needed:
                expected = expected + model.gain if sent else expected * model.missing
            assert turn["score"] == pytest.approx(expected, abs=1e-6)
    for task, flags in needed_by_task.items():  # ~ 200 turns a task: within 4 std errors
        p = need[task]
        assert abs(np.mean(flags) - p) < 4 * np.sqrt(p * (1 - p) / len(flags)) + 1e-9
    assert abs(np.mean(sent_on_cloud) - model.send_prob) < 0.1


def test_generator_refuses_what_it_cannot_make(tmp_path: Path) -> None:
    path, source = _source(tmp_path, 5)
    with pytest.raises(TmoGraphError, match="--views 4: the source has 3 camera views"):
        generate_dialogues(source, 3, n_views=4)
    with pytest.raises(TmoGraphError, match="--audio 0"):
        generate_dialogues(source, 3, n_audio=0)
    with pytest.raises(TmoGraphError, match="--dialogues 0"):
        generate_dialogues(source, 0)
    with pytest.raises(TmoGraphError, match="need_high 1.5 is not in"):
        AudioModel(need_high=1.5)
    _, generated = _generated(tmp_path, 5)
    with pytest.raises(TmoGraphError, match="already has audio"):
        generate_dialogues(generated, 3)
    with pytest.raises(TmoGraphError, match="is the source dataset"):
        write_dialogues(path, [], source=path)
    one_view = generate_dialogues(source, 3, n_views=1, n_audio=2)
    assert [m["name"] for m in one_view[0]["modalities"]] == ["view0", "mic", "mic2"]
    uploads = [v for e in one_view for t in e["interactions"] for v in t["image_index"] or []]
    assert all(v < 3 for v in uploads)  # views beyond the first dropped, clips are 1 and 2


# ---- costs in the world -----------------------------------------------------------------------


def test_the_world_charges_a_clip_what_it_costs(tmp_path: Path) -> None:
    _, dataset = _generated(tmp_path, 10)
    spec = ObservationSpec(4, dataset.task_names, modality_kinds=dataset.kinds)
    world = World(spec, SimSettings(), ResponseModel(spec, dataset.episodes))
    assert len(world.action_s) == n_actions(4) == 17
    for action in range(1, 17):
        views = action_views(action, 4)
        images = len([v for v in views if v != 3])
        clip = 3 in views
        assert world.cost(action) == pytest.approx(
            (
                profiles.cloud_time_s(WIRED, images) + clip * profiles.audio_clip_time_s(WIRED),
                profiles.cloud_cost_usd(images) + clip * profiles.audio_clip_cost_usd(),
            )
        )
    # The usage term is normalised over every action: the dearest sends everything.
    assert world.norm_usd[16] == 1.0 and world.norm_usd[0] == 0.0
    assert world.budget_range()[1][1] == pytest.approx(5 * world.action_usd[16])
    longer = World(spec, SimSettings(audio_clip_s=30.0), world.response)
    assert action_views(12, 4) == (0, 1, 2)
    assert longer.cost(16)[1] - longer.cost(12)[1] == pytest.approx(0.012)


def test_evaluation_counts_the_clips_latency_and_money(tmp_path: Path) -> None:
    from tmo_graph.sim.evaluate import evaluate

    _, dataset = _generated(tmp_path, 20)
    spec = ObservationSpec(4, dataset.task_names, modality_kinds=dataset.kinds)
    world = World(spec, SimSettings(), ResponseModel(spec, dataset.episodes))
    everything = evaluate(world, dataset.episodes, lambda obs, assoc: 16)
    views_only = evaluate(world, dataset.episodes, lambda obs, assoc: 12)  # views 0, 1, 2
    turns = np.mean([len(e.turns) for e in dataset.episodes])
    extra_usd = everything["usage_usd"] - views_only["usage_usd"]
    extra_s = everything["latency_s"] - views_only["latency_s"]
    assert extra_usd == pytest.approx(turns * profiles.audio_clip_cost_usd())
    assert extra_s == pytest.approx(turns * profiles.audio_clip_time_s(WIRED))
    assert everything["actions"]["audio"] == sum(len(e.turns) for e in dataset.episodes)
    assert views_only["actions"]["audio"] == 0


# ---- every policy ---------------------------------------------------------------------------


@pytest.fixture
def recorded_actions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every action the benchmark's test rollouts take (RL, baselines and hand-written alike;
    not the own planner's cross-validation inside its training)."""
    from tmo_graph.sim import bench, evaluate

    seen: list[int] = []

    def judged(world: Any, episodes: Any, policy: Any, judges: Any) -> Any:
        def recording(obs: Any, association: Any) -> int:
            seen.append(int(policy(obs, association)))
            return seen[-1]

        return evaluate.evaluate_judged(world, episodes, recording, judges)

    def route_judged(world: Any, episodes: Any, runner: Any, judges: Any) -> Any:
        decide = runner.decide

        def recording(*args: Any) -> Any:
            decision = decide(*args)
            seen.append(decision.action)
            return decision

        runner.decide = recording
        return evaluate.evaluate_route_policy_judged(world, episodes, runner, judges)

    monkeypatch.setattr(bench, "evaluate_judged", judged)
    monkeypatch.setattr(bench, "evaluate_route_policy_judged", route_judged)
    return seen


@pytest.mark.parametrize("method", list(METHOD_NAMES))
def test_every_method_runs_on_dialogues_with_a_mic(
    tmp_path: Path, method: str, recorded_actions: list[int]
) -> None:
    _, dataset = _generated(tmp_path, 20)
    result = run_benchmark(dataset, [9139], [method], SimSettings(), steps=64)
    run = result["methods"][METHOD_NAMES[method]]["per_seed"]["9139"]
    _, test = paper_split(dataset.episodes, 9139)
    turns = sum(len(e.turns) for e in test)
    assert len(recorded_actions) == turns
    assert all(0 <= a < 17 for a in recorded_actions)  # 1 + 2**(3 + 1)
    mix = run["actions"]
    assert mix["local"] + mix["cloud_text"] + mix["cloud_views"] == turns
    assert mix["audio"] == sum(3 in action_views(a, 4) for a in recorded_actions)
    assert result["settings"]["modalities"][3] == {"name": "mic", "kind": "audio"}
    if method == "cloud":  # half of the cloud actions send the mic
        assert mix["audio"] > 0
    if method == "local":
        assert mix["audio"] == 0


def test_a_planner_sends_the_mic_where_it_pays(tmp_path: Path) -> None:
    """The planner sends the mic far more often when every turn needs it (and a sent clip
    adds 2 to the score) than when none does. (Per turn, the paper's response model sees
    the task and the history, not the need: a policy learns how much audio is worth per
    task, and reads the need on the turn only through the clip's association score.)
    Sent shares measured on three generator seeds: 0.28 / 0.30 / 0.25 without need, 0.78 /
    0.88 / 0.53 with."""
    from tmo_graph.policy.planner import LookaheadPlanner
    from tmo_graph.sim.evaluate import evaluate

    shares = []
    for need in (0.0, 1.0):
        _, dataset = _generated(tmp_path, 50, seed=0, need_low=need, need_high=need, gain=2.0)
        train, test = paper_split(dataset.episodes, 1)
        spec = ObservationSpec(
            4, dataset.task_names, with_budgets=True, modality_kinds=dataset.kinds
        )
        planner = LookaheadPlanner.fit(train, spec, SimSettings())
        result = evaluate(planner.world, test, planner)
        shares.append(result["actions"]["audio"] / sum(len(e.turns) for e in test))
    assert shares[1] > shares[0] + 0.2, shares


# ---- policy files and the CLI -----------------------------------------------------------------


def test_a_policy_trained_with_a_mic_is_refused_where_the_modality_is_an_image(
    tmp_path: Path,
) -> None:
    from tmo_graph.sim.train import load_policy, train_policy

    _, dataset = _generated(tmp_path, 10)
    spec = ObservationSpec(4, dataset.task_names, modality_kinds=dataset.kinds)
    trained = train_policy("ppo", dataset.episodes, spec, SimSettings(), steps=64, seed=0)
    trained.save(tmp_path / "p.zip")
    assert load_policy(tmp_path / "p.zip", expect=spec).spec == spec
    images = ObservationSpec(4, dataset.task_names)
    with pytest.raises(
        TmoGraphError, match=r"trained for modalities \['image', 'image', 'image', 'audio'\]"
    ):
        load_policy(tmp_path / "p.zip", expect=images)


def test_cli_generates_and_benchmarks_dialogues_with_a_mic(tmp_path: Path) -> None:
    src, _ = _source(tmp_path, 20)
    out = tmp_path / "audio.json"
    made = CliRunner().invoke(
        app, ["bench", "generate", "--data", str(src), "--out", str(out), "--dialogues", "15"]
    )
    assert made.exit_code == 0, made.output
    assert "15 dialogues" in made.stdout and "view0, view1, view2, mic" in made.stdout
    args = ["bench", "m4a1", "--data", str(out), "--seeds", "1", "--methods", "local,cloud"]
    ran = CliRunner().invoke(app, [*args, "--audio-seconds", "20"])
    assert ran.exit_code == 0, ran.output
    assert "mic (audio); audio clips of 20.0 s" in ran.stdout
    assert "actions local/text/views/audio" in ran.stdout
    judged = CliRunner().invoke(app, [*args, "--protocol", "judges", "--judge", "knn:k=3"])
    assert judged.exit_code == 0, judged.output
    assert "mic (audio); audio clips of 10.0 s" in judged.stdout
    bad = CliRunner().invoke(
        app, ["bench", "generate", "--data", str(src), "--out", str(out), "--views", "5"]
    )
    assert bad.exit_code == 2 and "--views 5: the source has 3 camera views" in bad.stderr
    same = CliRunner().invoke(app, ["bench", "generate", "--data", str(src), "--out", str(src)])
    assert same.exit_code == 2 and "is the source dataset" in same.stderr
