"""The M4A1 loader: schema checks with errors naming the episode and field, labels, the split."""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from tmo_graph.errors import TmoGraphError
from tmo_graph.sim.data import load_m4a1, paper_split

M4A1 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "M4A1.json"
needs_m4a1 = pytest.mark.skipif(
    not M4A1.is_file(), reason=f"the M4A1 sample is not at {M4A1} (see ../shared/data/README.md)"
)


def generated_dialogues(
    n_episodes: int = 60, n_views: int = 4, n_tasks: int = 5, n_turns: int = 6, seed: int = 0
) -> list[dict[str, Any]]:
    """M4A1-format dialogues of any shape, reproducible from ``seed``.

    Other test files (and the published-code cross-check that produced their expected numbers)
    use exactly this generator: do not change it without recomputing those numbers.
    """
    rng = random.Random(seed)
    tasks = [f"task {i}" for i in range(n_tasks)]
    episodes = []
    for e in range(n_episodes):
        interactions = []
        for t in range(n_turns):
            action = rng.choice([0, 1])
            views = None
            if action == 1 and rng.random() < 0.8:  # some cloud turns are text only
                views = rng.sample(range(n_views), rng.randint(1, n_views))  # upload order
            interactions.append(
                {
                    "question": f"question {t}",
                    "task_cat": rng.choice(tasks),
                    "action": action,
                    "image_index": views,
                    "answer": rng.choice(["Sure.", "Here it is.", "Sorry, I can't see it."]),
                    "score": rng.randint(0, 9) / 3,
                }
            )
        association = [
            [round(rng.uniform(0.15, 0.3), 4) for _ in range(n_views)] for _ in range(n_turns)
        ]
        episodes.append(
            {"id": f"gen-{e}", "interactions": interactions, "association_score": association}
        )
    return episodes


def write(tmp_path: Path, data: Any, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_a_generated_file_with_four_views_five_tasks_and_six_turns_loads(tmp_path: Path) -> None:
    dataset = load_m4a1(write(tmp_path, generated_dialogues()))
    assert dataset.n_views == 4
    assert dataset.task_names == tuple(f"task {i}" for i in range(5))  # sorted, as published
    assert len(dataset.episodes) == 60
    assert {len(e.turns) for e in dataset.episodes} == {6}
    assert all(len(row) == 4 for e in dataset.episodes for row in e.association)


def test_reward_labels_zero_refusals_with_the_published_test(tmp_path: Path) -> None:
    data = generated_dialogues(n_episodes=1, n_turns=5)
    answers = ["Sorry, I can't.", "I don't have that.", "I cant", "Fine, sorry.", "All good"]
    for turn, answer in zip(data[0]["interactions"], answers, strict=True):
        turn["answer"], turn["score"] = answer, 2.0
    labels = [t.label for t in load_m4a1(write(tmp_path, data)).episodes[0].turns]
    # Case-sensitive substring test, as published: "Sorry" alone does not match "sorry".
    assert labels == [0.0, 0.0, 2.0, 0.0, 2.0]


def test_cloud_turns_keep_their_views_in_upload_order(tmp_path: Path) -> None:
    data = generated_dialogues(n_episodes=1, n_turns=3)
    data[0]["interactions"][0].update(action=1, image_index=[2, 0])
    data[0]["interactions"][1].update(action=1, image_index=None)
    data[0]["interactions"][2].update(action=0, image_index=None)
    turns = load_m4a1(write(tmp_path, data)).episodes[0].turns
    assert [(t.action, t.views) for t in turns] == [(1, (2, 0)), (1, None), (0, None)]


Mutation = Callable[[list[dict[str, Any]]], object]
BROKEN: list[tuple[str, Mutation, str]] = [
    ("no task", lambda d: d[1]["interactions"][0].pop("task_cat"), r"interactions\[0\]\.task_cat"),
    ("action 2", lambda d: d[2]["interactions"][1].update(action=2), r"interactions\[1\]\.action"),
    ("action true", lambda d: d[2]["interactions"][0].update(action=True), r"\]\.action"),
    ("view 7", lambda d: d[3]["interactions"][0].update(action=1, image_index=[7]), "image_index"),
    ("view true", lambda d: d[3]["interactions"][0].update(image_index=[True]), "image_index"),
    ("views int", lambda d: d[3]["interactions"][0].update(image_index=1), "image_index"),
    ("score text", lambda d: d[4]["interactions"][0].update(score="high"), r"\[0\]\.score"),
    ("score missing", lambda d: d[4]["interactions"][2].pop("score"), r"\[2\]\.score"),
    ("score inf", lambda d: d[4]["interactions"][0].update(score=float("inf")), "score"),
    ("answer null", lambda d: d[2]["interactions"][0].update(answer=None), "answer"),
    ("row missing", lambda d: d[1]["association_score"].pop(), "association_score"),
    ("row short", lambda d: d[3]["association_score"][2].pop(), r"association_score\[2\]"),
    ("row nan", lambda d: d[3]["association_score"][1].__setitem__(0, float("nan")), "score"),
    ("flat rows", lambda d: d[0].update(association_score=[0.2] * 6), r"association_score\[0\]"),
    ("no turns", lambda d: d[2].update(interactions=[]), "interactions"),
    ("not object", lambda d: d.__setitem__(4, cast(Any, ["turn"])), r"\(episode\)"),
]


@pytest.mark.parametrize(("mutate", "field"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_files_name_the_episode_and_field(
    tmp_path: Path, mutate: Mutation, field: str
) -> None:
    data = generated_dialogues(n_episodes=6)
    mutate(data)
    broken = next(i for i, e in enumerate(data) if e != generated_dialogues(n_episodes=6)[i])
    with pytest.raises(TmoGraphError, match=rf"episode {broken}\b.*{field}") as error:
        load_m4a1(write(tmp_path, data))
    if isinstance(data[broken], dict):  # the id is named too, when there is one
        assert f"(id gen-{broken})" in str(error.value)
    assert "Fix:" in str(error.value)


def test_files_that_are_not_datasets(tmp_path: Path) -> None:
    with pytest.raises(TmoGraphError, match="does not exist"):
        load_m4a1(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('[{"id": 1,')
    with pytest.raises(TmoGraphError, match="not valid JSON"):
        load_m4a1(tmp_path / "bad.json")
    with pytest.raises(TmoGraphError, match="non-empty JSON list"):
        load_m4a1(write(tmp_path, {"episodes": []}))
    (tmp_path / "latin.json").write_bytes(b'["\xe9"]')
    with pytest.raises(TmoGraphError, match="UTF-8"):
        load_m4a1(tmp_path / "latin.json")


def test_episodes_must_agree_on_the_number_of_views(tmp_path: Path) -> None:
    data = generated_dialogues(n_episodes=3, n_views=3)
    data[2] = generated_dialogues(n_episodes=3, n_views=2)[2]
    with pytest.raises(TmoGraphError, match=r"episode 2 .*must list 3 view scores"):
        load_m4a1(write(tmp_path, data))


def test_split_seeds_both_generators_and_puts_the_first_fifth_in_test(tmp_path: Path) -> None:
    episodes = load_m4a1(write(tmp_path, generated_dialogues(n_episodes=11))).episodes
    train, test = paper_split(episodes, 7)
    assert len(test) == 2 and len(train) == 9  # int(11 * 0.2)
    shuffled = list(episodes)
    random.seed(7)
    random.shuffle(shuffled)
    assert test + train == shuffled
    assert list(episodes) == sorted(episodes, key=lambda e: int(e.id.split("-")[1]))  # untouched
    before = copy.deepcopy(test)
    assert paper_split(episodes, 7)[1] == before  # same seed, same split


@needs_m4a1
def test_the_m4a1_sample() -> None:
    dataset = load_m4a1(M4A1)
    assert dataset.n_views == 3 and len(dataset.task_names) == 4
    assert len(dataset.episodes) == 100
    assert sum(len(e.turns) for e in dataset.episodes) == 352
    assert {len(e.turns) for e in dataset.episodes} == {2, 3, 4, 5}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d[0]["interactions"][0].update(action=True),
            "action` must be an integer, got True",
        ),
        (
            lambda d: d[0]["interactions"][0].update(action=2),
            "must be 0 (local) or 1 (cloud), got 2",
        ),
        (
            lambda d: d[0]["interactions"][0].update(answer=None),
            "answer` must be a string, got None",
        ),
        (
            lambda d: d[0]["interactions"][0].update(score="high"),
            "must be a finite number, got 'high'",
        ),
        (lambda d: d[0].update(interactions=[]), "`interactions` must be a non-empty list"),
        (lambda d: d[0]["interactions"][1].update(image_index=1), "must be a list, got 1"),
    ],
)
def test_broken_fields_say_what_they_must_be(
    tmp_path: Path, mutate: Mutation, message: str
) -> None:
    data = generated_dialogues(n_episodes=2)
    mutate(data)
    with pytest.raises(TmoGraphError, match=re.escape("episode 0 (id gen-0): field `")) as error:
        load_m4a1(write(tmp_path, data))
    assert message in str(error.value)


def test_extra_fields_of_the_published_file_are_ignored(tmp_path: Path) -> None:
    data = generated_dialogues(n_episodes=2)
    data[0]["image_paths"] = ["a.png", "b.png", "c.png", "d.png"]
    data[0]["interactions"][0].update(interaction_time=2.1, usage_cost=6.75e-05)
    assert len(load_m4a1(write(tmp_path, data)).episodes) == 2
