"""``tmo-graph eval answers``: what the device model actually says to M4A1's local prompts.

Each of M4A1's recorded local turns (170) is answered again by the local model, as the graph
asks it (the persona, the dialogue so far with its recorded answers, the question), under the
configured decoding settings (``local.repetition_penalty``, ``local.no_repeat_ngram_size``,
``local.max_new_tokens``). Reported per part of seed 9139's split (train / held-out / all):

- the loop share: answers whose repeated word trigrams pass the confidence check's loop guard
  (:data:`tmo_graph.policy.confidence.LOOP_REPETITION`),
- mean length (tokens and words) and the share cut at ``max_new_tokens``,
- the AUROC of the graph's combined confidence on these answers against the label of the
  confidence evaluation ("the recorded local answer scored above the median"): the judge
  scored the recorded answer, not this one, so this measures whether the confidence on what
  the model says now still tells the prompts a local answer does well on from the others.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tmo_graph.context import DEFAULT_SYSTEM_PROMPT
from tmo_graph.errors import TmoGraphError
from tmo_graph.eval import metrics
from tmo_graph.eval.estimators import local_turn_prompts
from tmo_graph.eval.tables import render, table
from tmo_graph.models.base import LocalBackend
from tmo_graph.policy.confidence import LOOP_REPETITION, confidence, repetition
from tmo_graph.sim.data import Dataset, paper_split

if TYPE_CHECKING:
    from tmo_graph.settings import Settings

SPLIT_SEED = 9139  # the confidence evaluation's split (train / held-out dialogues)


@dataclass(frozen=True)
class GeneratedAnswer:
    """One answer of the local model to a recorded local turn, with its token scores."""

    episode: str
    label_score: float  # the recorded local answer's judge score (the evaluation's label)
    text: str
    logprobs: list[float]
    entropies: list[float]
    n_tokens: int
    max_new_tokens: int

    @cached_property
    def repetition(self) -> float:
        return repetition(self.logprobs, self.entropies, self.text)

    @property
    def loops(self) -> bool:
        return self.repetition > LOOP_REPETITION

    @property
    def cut(self) -> bool:
        return self.n_tokens >= self.max_new_tokens

    @cached_property
    def confidence(self) -> float:
        return confidence(self.logprobs, self.entropies, self.text)[0]


def generate_answers(
    dataset: Dataset,
    local: LocalBackend,
    max_new_tokens: int,
    limit: int | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
) -> list[GeneratedAnswer]:
    """The local model's answers to the recorded local turns (the first ``limit``)."""
    if limit is not None and limit < 1:
        raise TmoGraphError(f"--limit {limit} is not positive", "leave it out, or e.g. 20")
    jobs = local_turn_prompts(dataset, system_prompt)
    jobs = jobs[:limit] if limit else jobs
    out = []
    for i, (episode_id, messages, _recorded, score) in enumerate(jobs):
        text, stats = local.answer(messages, max_new_tokens=max_new_tokens)
        out.append(
            GeneratedAnswer(
                episode_id,
                score,
                text,
                list(stats.logprobs),
                list(stats.entropies),
                len(stats.logprobs),  # one per answer token (the end token is not counted)
                max_new_tokens,
            )
        )
        progress(i + 1, len(jobs))
    return out


def _part_figures(rows: Sequence[GeneratedAnswer], median: float) -> dict[str, Any]:
    labels = [a.label_score > median for a in rows]
    return {
        "answers": len(rows),
        "loops": sum(a.loops for a in rows),
        "loop_share": sum(a.loops for a in rows) / len(rows),
        "mean_tokens": statistics.fmean(a.n_tokens for a in rows),
        "mean_words": statistics.fmean(len(a.text.split()) for a in rows),
        "cut_share": sum(a.cut for a in rows) / len(rows),
        "empty": sum(not a.text.strip() for a in rows),
        "combined_auroc": metrics.auroc([a.confidence for a in rows], labels),
    }


def summarize(answers: Sequence[GeneratedAnswer], seed: int = SPLIT_SEED) -> dict[str, Any]:
    """Loop share, length and confidence AUROC per part of ``seed``'s split by dialogue."""
    if not answers:
        raise TmoGraphError("no answers to summarize", "generate at least one answer")
    ids = sorted({a.episode for a in answers})
    train_ids, test_ids = paper_split(ids, seed)
    median = statistics.median(a.label_score for a in answers)
    parts = {
        "train": [a for a in answers if a.episode in set(train_ids)],
        "held-out": [a for a in answers if a.episode in set(test_ids)],
        "all": list(answers),
    }
    return {
        "median_label_score": median,
        "loop_repetition": LOOP_REPETITION,
        "parts": {name: _part_figures(rows, median) for name, rows in parts.items() if rows},
        "loops": [
            {"episode": a.episode, "repetition": round(a.repetition, 3), "text": a.text}
            for a in answers
            if a.loops
        ],
    }


def decoding_of(settings: Settings) -> dict[str, Any]:
    local = settings.local
    return {
        "precision": local.precision,
        "max_new_tokens": local.max_new_tokens,
        "repetition_penalty": local.repetition_penalty,
        "no_repeat_ngram_size": local.no_repeat_ngram_size,
    }


def run_answers_eval(
    data: str | Path,
    settings: Settings,
    limit: int | None = None,
    answers_out: Path | None = None,
    progress: Callable[[str], None] = lambda line: None,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
) -> dict[str, Any]:
    """Generate, summarize, and (with ``answers_out``) keep every answer for reading."""
    from tmo_graph.models.local.model import configured_local_model
    from tmo_graph.sim.data import load_m4a1

    if limit is not None and limit < 1:  # before the model loads, not after
        raise TmoGraphError(f"--limit {limit} is not positive", "leave it out, or e.g. 20")
    dataset = load_m4a1(data)
    local = configured_local_model(settings)

    def generated(done: int, total: int) -> None:
        if done % 20 == 0 or done == total:
            progress(f"answered {done}/{total} local prompts")

    answers = generate_answers(
        dataset, local, settings.local.max_new_tokens, limit, generated, system_prompt
    )
    decoding = decoding_of(settings)
    if answers_out is not None:  # the slow part is kept before anything else can fail
        _write_answers(answers_out, {"decoding": decoding}, answers)
    result = {"decoding": decoding, **summarize(answers)}
    if answers_out is not None:
        _write_answers(answers_out, result, answers)
    return result


def _write_answers(path: Path, result: dict[str, Any], answers: Sequence[GeneratedAnswer]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**result, "answers": [asdict(a) for a in answers]}, indent=1))
    except OSError as exc:
        raise TmoGraphError(
            f"cannot write the answers to {path} ({exc.strerror})",
            "pass a writable --answers-out",
        ) from None


def format_report(result: dict[str, Any]) -> str:
    decoding = ", ".join(f"{k} {v}" for k, v in result["decoding"].items())
    header = (
        f"local answers to M4A1's local prompts ({decoding}); a loop: more than "
        f"{result['loop_repetition']:.0%} of the word trigrams repeated; confidence label: "
        f"the recorded answer's score > {result['median_label_score']:.3f}"
    )
    out = table(
        "part",
        "answers",
        "loops",
        "tokens",
        "words",
        "cut",
        "empty",
        "combined AUROC",
        right=("answers", "loops", "tokens", "words", "cut", "empty", "combined AUROC"),
    )
    for name, part in result["parts"].items():
        out.add_row(
            *[
                name,
                str(part["answers"]),
                f"{part['loops']} ({part['loop_share']:.1%})",
                f"{part['mean_tokens']:.1f}",
                f"{part['mean_words']:.1f}",
                f"{part['cut_share']:.0%}",
                str(part["empty"]),
                f"{part['combined_auroc']:.3f}",
            ]
        )
    lines = [header, render(out)]
    for loop in result["loops"][:5]:
        lines.append(f"  loop (repetition {loop['repetition']}): {loop['text'][:150]!r}")
    return "\n".join(lines)
