"""`tmo-graph eval answers`: loop share, length and confidence AUROC of generated answers."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tmo_graph.errors import TmoGraphError
from tmo_graph.eval.answers import GeneratedAnswer, format_report, generate_answers, summarize
from tmo_graph.sim.data import Dataset, Episode, Turn

LOOP = "It's a peach, it's a peach. " * 6


def _answer(episode: str, score: float, text: str, tokens: int, sure: bool) -> GeneratedAnswer:
    entropy = 0.2 if sure else 3.0
    return GeneratedAnswer(episode, score, text, [-0.1] * tokens, [entropy] * tokens, tokens, 64)


def test_loop_share_length_cut_and_auroc_per_part() -> None:
    answers = [
        _answer(
            f"e{i}",
            score=1.0 if i % 2 else 0.0,
            text=f"answer number {i} is here",
            tokens=10,
            sure=bool(i % 2),
        )
        for i in range(40)
    ]
    answers[0] = _answer("e0", 0.0, LOOP, 64, sure=False)
    result = summarize(answers)
    everything = result["parts"]["all"]
    assert everything["answers"] == 40 and everything["loops"] == 1
    assert everything["loop_share"] == pytest.approx(1 / 40)
    assert everything["cut_share"] == pytest.approx(1 / 40)  # the 64-token loop
    assert everything["combined_auroc"] == pytest.approx(1.0)  # sure exactly on the good ones
    assert result["parts"]["train"]["answers"] + result["parts"]["held-out"]["answers"] == 40
    assert result["loops"][0]["episode"] == "e0"
    result["decoding"] = {"repetition_penalty": 1.0}
    assert "1 (2.5%)" in format_report(result)


@dataclass
class _Echo:
    said: list[list[dict[str, str]]] = field(default_factory=list)

    def answer(self, messages, max_new_tokens=None, tags=None, max_time_s=None):  # type: ignore[no-untyped-def]
        from tests.unit_tests.fakes import Stats

        self.said.append(messages)
        return "ok then", Stats(logprobs=[-0.1, -0.2], entropies=[0.3, 0.4])

    def score_answer(self, messages, answer):  # type: ignore[no-untyped-def]
        raise AssertionError("not used")


def test_answers_are_generated_for_the_recorded_local_turns_only() -> None:
    turns = (
        Turn(question="q1", task="Query", action=0, views=None, answer="a1", score=0.5),
        Turn(question="q2", task="Query", action=1, views=(0,), answer="a2", score=1.0),
        Turn(question="q3", task="Query", action=0, views=None, answer="a3", score=0.25),
    )
    episode = Episode(id="d1", turns=turns, association=((0.2, 0.2, 0.2),) * 3)
    dataset = Dataset(episodes=(episode,), n_views=3, task_names=("Query",))
    local = _Echo()
    answers = generate_answers(dataset, local, max_new_tokens=16)  # type: ignore[arg-type]
    assert [a.label_score for a in answers] == [0.5, 0.25]
    assert [m["content"] for m in local.said[1]][-1] == "q3"  # with the dialogue so far
    assert answers[0].n_tokens == 2 and not answers[0].cut
    with pytest.raises(TmoGraphError, match="--limit 0 is not positive"):
        generate_answers(dataset, local, 16, limit=0)  # type: ignore[arg-type]
