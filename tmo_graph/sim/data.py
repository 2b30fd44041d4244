"""M4A1-format dialogues: loading with schema checks, reward labels, the paper's split."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.observation import MODALITY_KINDS

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
class Modality:
    """A device modality of the dataset: a camera view or an audio clip."""

    name: str
    kind: str  # "image" or "audio" (tmo_graph.policy.observation.MODALITY_KINDS)


@dataclass(frozen=True)
class Dataset:
    episodes: tuple[Episode, ...]
    n_views: int  # every modality, images and audio clips (the association table's width)
    task_names: tuple[str, ...]  # sorted, as the published code orders them
    # As declared by the file; empty: n_views camera views (every M4A1 file).
    modalities: tuple[Modality, ...] = ()

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kind of every modality, in the association table's column order."""
        if not self.modalities:
            return ("image",) * self.n_views
        return tuple(m.kind for m in self.modalities)


# --- the file format: types by pydantic, cross-field shape checks in parse_episode ------------


class _Recorded(BaseModel):
    # Strict: no "1" -> 1 or true -> 1 in a dataset; finite: NaN / inf would silently poison
    # the nearest-neighbour response model. Unknown fields (the published file's
    # interaction_time, usage_cost, image_paths) are ignored, not refused.
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class InteractionSpec(_Recorded):
    """One recorded turn of an M4A1 episode."""

    question: str = ""
    task_cat: str
    action: int
    image_index: list[int] | None = None  # views uploaded, in upload order; checked < width
    answer: str
    score: float

    @field_validator("action")
    @classmethod
    def _local_or_cloud(cls, value: int) -> int:
        if value not in (0, 1):
            raise ValueError(f"must be 0 (local) or 1 (cloud), got {value!r}")
        return value


class ModalitySpec(_Recorded):
    """One declared modality: ``{"name": "mic", "kind": "audio"}``."""

    model_config = ConfigDict(extra="forbid", strict=True)  # a typo must not pass unseen
    name: str = Field(min_length=1)
    kind: str

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in MODALITY_KINDS:
            raise ValueError(f"must be one of {', '.join(MODALITY_KINDS)}, got {value!r}")
        return value


class EpisodeSpec(_Recorded):
    """One M4A1 episode (dialogue): its turns and the turns x views association table.

    ``modalities`` (optional): the name and kind of each column of the association
    table (and of the ids in ``image_index``, which may then name audio clips too). Every
    episode of a file declares the same list, or none does: then all are camera views.
    """

    id: str | int | None = None
    interactions: list[InteractionSpec] = Field(min_length=1)
    association_score: list[list[float]]
    modalities: list[ModalitySpec] | None = None


def _fail(where: str, field: str, problem: str) -> TmoGraphError:
    return TmoGraphError(
        f"{where}: field `{field}` {problem}", "see the M4A1 format in ../shared/data/README.md"
    )


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_MUST_BE = {
    "int_type": "an integer",
    "string_type": "a string",
    "list_type": "a list",
    "model_type": "an object",
}


def _problem(err: ErrorDetails) -> str:
    kind, got = err["type"], err.get("input")
    if kind == "missing":
        return "is missing"
    if kind in ("float_type", "finite_number", "float_parsing"):
        return f"must be a finite number, got {got!r}"
    if kind in _MUST_BE:
        return f"must be {_MUST_BE[kind]}, got {got!r}"
    if kind == "too_short":
        return "must be a non-empty list"
    message = err["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return message  # ours, already says what it got
    return f"{message[:1].lower()}{message[1:]} (got {got!r})"


def parse_episode(raw: Any, index: int, n_views: int | None) -> Episode:
    """One episode, checked; ``n_views`` None takes the view count from this episode."""
    where = f"episode {index}"
    if isinstance(raw, dict):
        where = f"episode {index} (id {raw.get('id', '?')})"
    try:
        spec = EpisodeSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        if not err["loc"]:
            raise _fail(where, "(episode)", "must be an object") from None
        raise _fail(where, _dotted(tuple(err["loc"])), _problem(err)) from None
    association = spec.association_score
    if spec.modalities is not None:
        names = [m.name for m in spec.modalities]
        if not names or len(set(names)) != len(names):
            raise _fail(where, "modalities", f"must list distinct names, got {names}")
        if n_views is None and association and len(association[0]) != len(names):
            raise _fail(
                where,
                "association_score[0]",
                f"must list {len(names)} scores, one per declared modality ({', '.join(names)})",
            )
    if len(association) != len(spec.interactions):
        raise _fail(
            where,
            "association_score",
            f"must be a list of {len(spec.interactions)} rows, one per interaction",
        )
    width = n_views if n_views is not None else len(association[0])
    if width < 1:
        raise _fail(where, "association_score[0]", "must list one score per view (>= 1 view)")
    for t, row in enumerate(association):
        if len(row) != width:
            raise _fail(where, f"association_score[{t}]", f"must list {width} view scores")
    for t, item in enumerate(spec.interactions):
        if item.image_index is not None and not all(0 <= v < width for v in item.image_index):
            raise _fail(
                where,
                f"interactions[{t}].image_index",
                f"must be null or a list of view ids < {width}",
            )
    turns = tuple(
        Turn(
            question=item.question,
            task=item.task_cat,
            action=item.action,
            views=tuple(item.image_index) if item.image_index is not None else None,
            answer=item.answer,
            score=item.score,
        )
        for item in spec.interactions
    )
    return Episode(
        id=str(index if spec.id is None else spec.id),
        turns=turns,
        association=tuple(tuple(row) for row in association),
    )


def _declared(raw: Any) -> tuple[Modality, ...]:
    """The ``modalities`` an already-checked episode declares (empty: none)."""
    items = raw.get("modalities") if isinstance(raw, dict) else None
    return tuple(Modality(str(m["name"]), str(m["kind"])) for m in items or ())


def load_m4a1(path: str | Path) -> Dataset:
    """Load and check an M4A1-format file (any number of views, tasks and turns)."""
    path = Path(path)
    if not path.is_file():
        raise TmoGraphError(
            f"dataset {path} does not exist",
            "give the path of an M4A1-format JSON file (--data, or $TMO_GRAPH_M4A1)",
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
    modalities = _declared(raw[0])
    for i, item in enumerate(raw[1:], start=1):
        if _declared(item) != modalities:
            shown = [f"{m.name}:{m.kind}" for m in modalities] or "none"
            raise TmoGraphError(
                f"episode {i} (id {item.get('id', '?')}): field `modalities` differs from "
                f"episode 0's ({shown})",
                "declare the same modalities in every episode, or in none (all camera views)",
            )
    tasks = tuple(sorted({turn.task for episode in episodes for turn in episode.turns}))
    return Dataset(
        episodes=tuple(episodes), n_views=n_views, task_names=tasks, modalities=modalities
    )


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
