"""The answer-only guard against loops: penalises and forbids repeats of the answer's own
tokens, never the prompt's."""

from __future__ import annotations

import pytest

from tmo_graph.models.local.decoding import AnswerRepetitionGuard, DeadlineGuard

torch = pytest.importorskip("torch")


def _step(guard: AnswerRepetitionGuard, ids: list[int], vocab: int = 10) -> list[float]:
    scores = torch.full((1, vocab), 2.0)
    scores[0, 0] = -2.0
    return guard(torch.tensor([ids]), scores)[0].tolist()


def test_the_penalty_falls_on_the_answer_tokens_only() -> None:
    guard = AnswerRepetitionGuard(penalty=2.0, ngram=0)
    assert _step(guard, [5, 6, 7]) == [-2.0] + [2.0] * 9  # first step: the prompt, untouched
    after = _step(guard, [5, 6, 7, 0, 8])  # the answer so far: tokens 0 and 8
    assert after[8] == 1.0 and after[0] == -4.0  # positive divided, negative multiplied
    assert after[5] == after[6] == after[7] == 2.0  # prompt tokens keep their scores


def test_a_run_of_answer_tokens_is_never_repeated() -> None:
    guard = AnswerRepetitionGuard(penalty=1.0, ngram=3)
    _step(guard, [9, 9])  # prompt [9, 9]
    scores = _step(guard, [9, 9, 1, 2, 3, 1, 2])  # answer 1 2 3 1 2: "3" would repeat 1 2 3
    assert scores[3] == float("-inf")
    assert all(s == 2.0 for i, s in enumerate(scores) if i not in (0, 3))
    # The prompt's own runs do not count: [9, 9] then 9 is allowed.
    guard = AnswerRepetitionGuard(penalty=1.0, ngram=3)
    _step(guard, [9, 9, 9])
    assert _step(guard, [9, 9, 9, 4, 9, 9])[9] == 2.0


def test_forbidden_tokens_leave_the_recorded_entropy_finite() -> None:
    import math

    from tmo_graph.models.local.decoding import GreedyStepRecorder

    recorder = GreedyStepRecorder()
    scores = torch.tensor([[1.0, 2.0, float("-inf"), 0.5]])
    recorder(torch.tensor([[3]]), scores)
    p = torch.softmax(torch.tensor([1.0, 2.0, 0.5]), dim=-1)
    assert math.isfinite(recorder.entropies[0])
    assert recorder.entropies[0] == pytest.approx(float(-(p * p.log()).sum()), abs=1e-6)
    assert recorder.chosen == [1]


def test_the_loopback_stand_in_gets_the_same_guard(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from tmo_graph.models.cloud import loopback_generation_config
    from tmo_graph.sections import Decoding

    (tmp_path / "generation_config.json").write_text(
        json.dumps({"_from_model_config": True, "eos_token_id": 2, "pad_token_id": 2})
    )
    assert loopback_generation_config(tmp_path, Decoding(1.0, 0)) is None  # guard off
    sent = loopback_generation_config(tmp_path, Decoding(1.1, 4))
    assert sent is not None
    # transformers serve replaces the model's config whole: its own fields travel along.
    assert json.loads(sent["generation_config"]) == {
        "eos_token_id": 2,
        "pad_token_id": 2,
        "no_repeat_ngram_size": 4,
        "repetition_penalty": 1.1,
    }


def test_the_deadline_guard_ends_the_answer_one_step_early_not_one_step_late() -> None:
    """Each step is expected to take as long as the one before: at 0.7 s, after a 0.4 s
    step, the next would end at 1.1 s, past the 1 s deadline, so this step's token becomes
    the end token, where transformers' max_time would let it run on to about 1.1 s."""
    import torch

    now = [0.0]
    end = 2
    guard = DeadlineGuard(1.0, end_token=end, clock=lambda: now[0])
    ids = torch.zeros((1, 5), dtype=torch.long)
    chosen = []
    for t in (0.3, 0.7, 0.75, 0.95):  # after the prompt, then steps of 0.4, 0.05, 0.2 s
        now[0] = t
        scores = torch.tensor([[0.0, 5.0, 1.0, 0.5]])
        chosen.append(int(guard(ids, scores).argmax()))
    assert chosen == [1, end, 1, end]
