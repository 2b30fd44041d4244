"""The answer-only guard against loops: penalises and forbids repeats of the answer's own
tokens, never the prompt's."""

from __future__ import annotations

import pytest

from tmo_graph.models.local import _AnswerRepetitionGuard

torch = pytest.importorskip("torch")


def _step(guard: _AnswerRepetitionGuard, ids: list[int], vocab: int = 10) -> list[float]:
    scores = torch.full((1, vocab), 2.0)
    scores[0, 0] = -2.0
    return guard(torch.tensor([ids]), scores)[0].tolist()


def test_the_penalty_falls_on_the_answer_tokens_only() -> None:
    guard = _AnswerRepetitionGuard(penalty=2.0, ngram=0)
    assert _step(guard, [5, 6, 7]) == [-2.0] + [2.0] * 9  # first step: the prompt, untouched
    after = _step(guard, [5, 6, 7, 0, 8])  # the answer so far: tokens 0 and 8
    assert after[8] == 1.0 and after[0] == -4.0  # positive divided, negative multiplied
    assert after[5] == after[6] == after[7] == 2.0  # prompt tokens keep their scores


def test_a_run_of_answer_tokens_is_never_repeated() -> None:
    guard = _AnswerRepetitionGuard(penalty=1.0, ngram=3)
    _step(guard, [9, 9])  # prompt [9, 9]
    scores = _step(guard, [9, 9, 1, 2, 3, 1, 2])  # answer 1 2 3 1 2: "3" would repeat 1 2 3
    assert scores[3] == float("-inf")
    assert all(s == 2.0 for i, s in enumerate(scores) if i not in (0, 3))
    # The prompt's own runs do not count: [9, 9] then 9 is allowed.
    guard = _AnswerRepetitionGuard(penalty=1.0, ngram=3)
    _step(guard, [9, 9, 9])
    assert _step(guard, [9, 9, 9, 4, 9, 9])[9] == 2.0
