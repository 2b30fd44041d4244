"""What the graph and the evaluation need of a model, as protocols (no heavy imports)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class TokenStats(Protocol):
    """Per answer token: the log-prob of the chosen token and the entropy of the prediction."""

    logprobs: list[float]
    entropies: list[float]


class LocalBackend(Protocol):
    """The on-device model: answers with per-token scores; scores any given answer.

    ``tags`` go on the model call's run, so a streaming caller can tell its tokens apart
    (the graph tags a draft that may be replaced ``draft``). ``max_time_s``: stop writing
    once that many seconds have passed. A backend may set ``message_id`` on the returned
    stats: the id of the message it streamed. A backend that can count its prompt tokens
    offers ``prompt_tokens(messages) -> int`` (else the graph assumes one per UTF-8 byte).
    A backend that times its calls sets ``prompt_tokens``, ``prefill_s``, ``decode_tokens``
    and ``decode_s`` on the stats (see :class:`tmo_graph.models.local.decoding.TokenScores`): the
    device's speed estimates learn from them; without them the estimates stay as they are.
    """

    def answer(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int | None = None,
        tags: list[str] | None = None,
        max_time_s: float | None = None,
    ) -> tuple[str, TokenStats]: ...

    def score_answer(self, messages: list[dict[str, str]], answer: str) -> TokenStats: ...


class GapPredictor(Protocol):
    """Predicts, from the prompt alone, how much better the cloud answer would score."""

    def predict_gap(
        self,
        prompt_vector: Sequence[float],
        task: str,
        previous_vector: Sequence[float] | None = None,
    ) -> float: ...
