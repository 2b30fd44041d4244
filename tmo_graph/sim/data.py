"""M4A1-format dialogues: loading with schema checks, reward labels, the paper's split."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from tmo_graph.errors import TmoGraphError

# An answer with any of these earns 0, whatever its score (the published code's test).
REFUSAL_KEYWORDS = ("sorry", "I don't have", "can't")


@dataclass(frozen=True)
class Turn:
    question: str
    task: str
    action: int  # 0 local, 1 cloud
    views: tuple[int, ...] | None  # views uploaded by a cloud turn, None when none
    answer: str
    score: float

    @property
    def label(self) -> float:
        """The reward label of the recorded answer."""
        return 0.0 if any(k in self.answer for k in REFUSAL_KEYWORDS) else self.score


@dataclass(frozen=True)
class Episode:
    id: str
    turns: tuple[Turn, ...]
    association: tuple[tuple[float, ...], ...]  # turns x views


@dataclass(frozen=True)
class Dataset:
    episodes: tuple[Episode, ...]
    n_views: int
    task_names: tuple[str, ...]  # sorted, as the published code orders them


def _fail(where: str, field: str, problem: str) -> TmoGraphError:
    return TmoGraphError(
        f"{where}: field `{field}` {problem}", "see the M4A1 format in ../shared/data/README.md"
    )


def _number(value: Any, where: str, field: str) -> float:
    # NaN / inf would silently poison the nearest-neighbour response model.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(where, field, f"must be a finite number, got {value!r}")
    return float(value)


def _view_id(value: Any, width: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < width


def parse_episode(raw: Any, index: int, n_views: int | None) -> Episode:
    """One episode, checked; ``n_views`` None takes the view count from this episode."""
    where = f"episode {index}"
    if not isinstance(raw, dict):
        raise _fail(where, "(episode)", "must be an object")
    where = f"episode {index} (id {raw.get('id', '?')})"
    interactions = raw.get("interactions")
    if not isinstance(interactions, list) or len(interactions) < 1:
        raise _fail(where, "interactions", "must be a non-empty list")
    association = raw.get("association_score")
    if not isinstance(association, list) or len(association) != len(interactions):
        raise _fail(
            where,
            "association_score",
            f"must be a list of {len(interactions)} rows, one per interaction",
        )
    if n_views is not None:
        width = n_views
    else:
        first = association[0]
        width = len(first) if isinstance(first, list) else 0
        if width < 1:
            raise _fail(where, "association_score[0]", "must list one score per view (>= 1 view)")
    rows = []
    for t, row in enumerate(association):
        if not isinstance(row, list) or len(row) != width:
            raise _fail(where, f"association_score[{t}]", f"must list {width} view scores")
        rows.append(tuple(_number(v, where, f"association_score[{t}]") for v in row))
    turns = []
    for t, item in enumerate(interactions):
        field = f"interactions[{t}]"
        if not isinstance(item, dict):
            raise _fail(where, field, "must be an object")
        for key in ("task_cat", "answer"):
            if not isinstance(item.get(key), str):
                raise _fail(where, f"{field}.{key}", "must be a string")
        action = item.get("action")
        if isinstance(action, bool) or not isinstance(action, int) or action not in (0, 1):
            raise _fail(where, f"{field}.action", f"must be 0 (local) or 1 (cloud), got {action!r}")
        views = item.get("image_index")
        if views is not None and (
            not isinstance(views, list) or not all(_view_id(v, width) for v in views)
        ):
            raise _fail(
                where, f"{field}.image_index", f"must be null or a list of view ids < {width}"
            )
        turns.append(
            Turn(
                question=str(item.get("question", "")),
                task=item["task_cat"],
                action=int(action),
                views=tuple(views) if views is not None else None,
                answer=item["answer"],
                score=_number(item.get("score"), where, f"{field}.score"),
            )
        )
    return Episode(id=str(raw.get("id", index)), turns=tuple(turns), association=tuple(rows))


def load_m4a1(path: str | Path) -> Dataset:
    """Load and check an M4A1-format file (any number of views, tasks and turns)."""
    path = Path(path)
    if not path.is_file():
        raise TmoGraphError(
            f"dataset {path} does not exist", "pass --data ../shared/data/M4A1.json or your file"
        )
    try:
        raw = json.loads(path.read_bytes())
    except UnicodeDecodeError:
        raise TmoGraphError(
            f"dataset {path} is not UTF-8 JSON", "pass an M4A1 .json file"
        ) from None
    except json.JSONDecodeError as exc:
        raise TmoGraphError(
            f"dataset {path} is not valid JSON ({exc.msg}, line {exc.lineno})",
            "fix the file, or pass another with --data",
        ) from None
    if not isinstance(raw, list) or not raw:
        raise TmoGraphError(
            f"dataset {path} must be a non-empty JSON list of episodes",
            "see the M4A1 format in ../shared/data/README.md",
        )
    first = parse_episode(raw[0], 0, None)
    n_views = len(first.association[0])
    episodes = [first] + [parse_episode(e, i, n_views) for i, e in enumerate(raw[1:], start=1)]
    tasks = tuple(sorted({turn.task for episode in episodes for turn in episode.turns}))
    return Dataset(episodes=tuple(episodes), n_views=n_views, task_names=tasks)


T = TypeVar("T")


def paper_split(
    episodes: Sequence[T], seed: int, test_ratio: float = 0.2
) -> tuple[list[T], list[T]]:
    """The published protocol: seed ``random`` and ``numpy``, shuffle a copy, test first.

    Seeding happens here, so the random baselines that run right after draw exactly the
    numbers the published code draws.
    """
    random.seed(seed)
    np.random.seed(seed)
    shuffled = list(episodes)
    random.shuffle(shuffled)
    test_size = int(len(episodes) * test_ratio)
    return shuffled[test_size:], shuffled[:test_size]
