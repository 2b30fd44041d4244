"""M4A1-shaped dialogues with audio modalities, generated from M4A1's own turns.

M4A1 has camera views only, so the simulator's audio is tested on dialogues made here. The
generator keeps everything M4A1 measured and adds audio clips (``mic``, ``mic2``, ...) by a
simple model, stated here and in :class:`AudioModel` (every number is a default you can change):

1. **Dialogues.** ``n_dialogues`` of the source's dialogues drawn with replacement (seeded),
   each with its questions, tasks, recorded actions, answers and scores; the first
   ``n_views`` camera views keep their association scores, uploads of the other views are
   dropped from the recorded action.
2. **Which turns need audio.** Per turn and clip, the turn *needs* the clip (it refers to
   something said or heard: a voice note, a machine's noise) with a probability set by its
   task: the source's tasks, in sorted order, get probabilities spread evenly from
   ``need_low`` to ``need_high`` (M4A1: Assistive System 0.1, Message Editing 0.3, Query
   0.5, Recommendation 0.7). A policy can therefore learn from the task when audio is worth
   sending, and from the association score below on the turn itself.
3. **Association.** A needed clip's prompt/clip relevance is drawn uniformly from
   ``assoc_needed`` (0.25-0.35), an unneeded one's from ``assoc_idle`` (0.10-0.20); M4A1's
   view scores lie between 0.13 and 0.28.
4. **The recorded action.** Local turns stay local (the device model hears no clip). A
   cloud turn also uploads each clip with probability ``send_prob`` (1/2: the published
   collection varied its uploads at random too), after its views in upload order.
5. **Its score.** From the recorded score ``s``: each needed clip not sent multiplies it by
   ``missing`` (0.6: the answer misses what was said), each needed clip sent adds ``gain``
   (0.8, about twice M4A1's mean cloud-over-local gain of 0.45), an unneeded clip changes
   nothing (its cost is paid for nothing). A refusal still earns 0 (the loader's rule).

Like M4A1, the file records one action per turn; the simulator's response model learns the
other actions' scores from the recorded ones. Every episode declares its ``modalities`` and
every turn carries its ground truth, ``needs_audio`` (one flag per clip; the loader ignores
it, tests read it). Nothing is downloaded; the source file is read, never changed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tmo_graph.errors import TmoGraphError
from tmo_graph.sim.data import Dataset


@dataclass(frozen=True)
class AudioModel:
    """The numbers of the generator's model (see the module docstring)."""

    need_low: float = 0.1
    need_high: float = 0.7
    gain: float = 0.8
    missing: float = 0.6
    send_prob: float = 0.5
    assoc_needed: tuple[float, float] = (0.25, 0.35)
    assoc_idle: tuple[float, float] = (0.10, 0.20)

    def __post_init__(self) -> None:
        probs = {
            "need_low": self.need_low,
            "need_high": self.need_high,
            "missing": self.missing,
            "send_prob": self.send_prob,
        }
        for name, value in probs.items():
            if not 0.0 <= value <= 1.0:
                raise TmoGraphError(f"audio model: {name} {value!r} is not in [0, 1]", "e.g. 0.5")
        if not self.gain >= 0:
            raise TmoGraphError(f"audio model: gain {self.gain!r} is negative", "e.g. 0.8")
        for name, (low, high) in (
            ("assoc_needed", self.assoc_needed),
            ("assoc_idle", self.assoc_idle),
        ):
            if not 0.0 <= low <= high:
                raise TmoGraphError(
                    f"audio model: {name} ({low!r}, {high!r}) is not a range (0 <= low <= high)",
                    "e.g. (0.25, 0.35)",
                )

    def need_by_task(self, tasks: tuple[str, ...]) -> dict[str, float]:
        """Each task's probability that a turn needs a clip (sorted tasks, evenly spread)."""
        if len(tasks) == 1:
            return {tasks[0]: (self.need_low + self.need_high) / 2}
        step = (self.need_high - self.need_low) / (len(tasks) - 1)
        return {task: self.need_low + i * step for i, task in enumerate(sorted(tasks))}


def audio_names(n_audio: int) -> list[str]:
    """``mic``, ``mic2``, ``mic3`` ..."""
    return ["mic" if i == 0 else f"mic{i + 1}" for i in range(n_audio)]


def generate_dialogues(
    source: Dataset,
    n_dialogues: int,
    n_views: int | None = None,
    n_audio: int = 1,
    seed: int = 0,
    model: AudioModel | None = None,
) -> list[dict[str, Any]]:
    """``n_dialogues`` M4A1-format episodes: ``n_views`` of the source's camera views (default
    all) and ``n_audio`` audio clips, by the module's model; reproducible from ``seed``."""
    model = model or AudioModel()
    if any(kind != "image" for kind in source.kinds):
        raise TmoGraphError(
            "the source dataset already has audio modalities",
            "generate from an images-only M4A1-format file (e.g. ../shared/data/M4A1.json)",
        )
    views = source.n_views if n_views is None else n_views
    if not 0 <= views <= source.n_views:
        raise TmoGraphError(
            f"--views {views}: the source has {source.n_views} camera views",
            f"use 0..{source.n_views}",
        )
    if n_audio < 1:
        raise TmoGraphError(f"--audio {n_audio}: at least one audio clip", "e.g. --audio 1")
    if n_dialogues < 1:
        raise TmoGraphError(f"--dialogues {n_dialogues}: at least one", "e.g. --dialogues 100")
    rng = random.Random(seed)
    need = model.need_by_task(source.task_names)
    mics = list(range(views, views + n_audio))  # clips come after the views
    modalities = [{"name": f"view{v}", "kind": "image"} for v in range(views)] + [
        {"name": name, "kind": "audio"} for name in audio_names(n_audio)
    ]
    out = []
    for index in range(n_dialogues):
        episode = source.episodes[rng.randrange(len(source.episodes))]
        interactions, association = [], []
        for turn, row in zip(episode.turns, episode.association, strict=True):
            needed = [rng.random() < need[turn.task] for _ in mics]
            clip_scores = [
                rng.uniform(*(model.assoc_needed if n else model.assoc_idle)) for n in needed
            ]
            sent_views = [v for v in turn.views or () if v < views]
            sent_clips = [m for m in mics if turn.action == 1 and rng.random() < model.send_prob]
            score = turn.score
            for m, is_needed in zip(mics, needed, strict=True):
                if is_needed and m in sent_clips:
                    score += model.gain
                elif is_needed:
                    score *= model.missing
            uploaded = sent_views + sent_clips
            interactions.append(
                {
                    "question": turn.question,
                    "task_cat": turn.task,
                    "action": turn.action,
                    "image_index": uploaded if turn.action == 1 and uploaded else None,
                    "answer": turn.answer,
                    "score": round(score, 6),
                    "needs_audio": needed,
                }
            )
            association.append([*row[:views], *(round(s, 6) for s in clip_scores)])
        out.append(
            {
                "id": f"gen-{index}",
                "source_id": episode.id,
                "modalities": modalities,
                "interactions": interactions,
                "association_score": association,
            }
        )
    return out


def write_dialogues(path: Path, episodes: list[dict[str, Any]], source: Path | None = None) -> None:
    """Write generated episodes as JSON; never over the ``source`` file they came from."""
    path = Path(path)
    if source is not None and path.resolve() == Path(source).resolve():
        raise TmoGraphError(
            f"--out {path} is the source dataset", "write the generated file somewhere else"
        )
    if path.is_dir():
        raise TmoGraphError(f"--out {path} is a directory", "give a file name, e.g. audio.json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(episodes, indent=1))
    except OSError as error:
        raise TmoGraphError(
            f"cannot write {path} ({error.strerror})", "give a writable path"
        ) from None
