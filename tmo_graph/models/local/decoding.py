"""How the on-device model decodes: the scores it records and the logits processors it runs.

Decoding is greedy. Each answer carries :class:`TokenScores` (per token log-prob and
entropy, and how long reading the prompt and each step took); the logits processors here
record those scores during generation (:class:`GreedyStepRecorder`), end an answer before
a deadline (:class:`DeadlineGuard`) and keep an answer from looping
(:class:`AnswerRepetitionGuard`). They need torch only when called.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TokenScores:
    """Per answer token: log-prob of the actual token and entropy (nats) of the prediction."""

    logprobs: list[float]
    entropies: list[float]
    n_tokens: int
    message_id: str | None = None  # id of the chat message the answer was streamed as
    warnings: list[str] = field(default_factory=list)  # e.g. the prompt was cut to fit
    # How the call went, for the device's speed estimates (tmo_graph.costs.device): the prompt's
    # tokens read in prefill_s (call start to the first answer token), then decode_tokens
    # more forward steps in decode_s. None / 0 when the answer was not generated here.
    prompt_tokens: int = 0
    prefill_s: float | None = None
    decode_tokens: int = 0
    decode_s: float | None = None


class GreedyStepRecorder:
    """A logits processor that keeps, per generated token, its log-prob and the entropy.

    Decoding is greedy, so the chosen token is the arg-max of the scores this processor
    sees (it runs last); the log-probs come for free during generation, with no second pass.
    """

    def __init__(self) -> None:
        self.logprobs: list[float] = []
        self.entropies: list[float] = []
        self.chosen: list[int] = []
        # When each step's scores arrived: the first after the prompt was read, each later
        # one after one more forward step (the device's measured speeds).
        self.times: list[float] = []
        self.prompt_tokens = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        self.times.append(time.perf_counter())
        if not self.prompt_tokens:
            self.prompt_tokens = int(input_ids.shape[1])
        logp = torch.log_softmax(scores[0].float(), dim=-1)
        best = int(torch.argmax(logp))
        self.chosen.append(best)
        self.logprobs.append(float(logp[best]))
        # entr(0) = 0: tokens a processor forbade (score -inf) add nothing (0 * -inf is NaN).
        self.entropies.append(float(torch.special.entr(logp.exp()).sum()))
        return scores


class DeadlineGuard:
    """A logits processor that ends the answer when its next token would end after the
    deadline: it makes this step's token the end token.

    transformers' ``max_time`` stops only once a step has already overrun it; on a device
    that just turned busy a step takes longer than the speed estimate the deadline's margin
    was sized with. Here each step is expected to take as long as the one before it, so the
    answer ends a step early rather than a step late. (A logits processor, not a stopping
    criterion: langchain-huggingface's streaming path sets the stopping criteria itself.)
    """

    def __init__(
        self, seconds: float, end_token: int, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.clock = clock
        self.deadline = clock() + seconds
        self.end_token = end_token
        self.last: float | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        now = self.clock()
        step = None if self.last is None else now - self.last  # first call: after the prompt
        self.last = now
        if step is not None and now + step > self.deadline:
            scores = scores.clone()
            scores[:, :] = float("-inf")
            scores[:, self.end_token] = 0.0
        return scores


class AnswerRepetitionGuard:
    """A logits processor against loops that looks at the answer only, never the prompt.

    ``penalty`` > 1 lowers every token the answer already holds (as transformers' repetition
    penalty: positive scores divided, negative multiplied); ``ngram`` > 0 forbids the token
    that would repeat a run of that many answer tokens. transformers' own processors also
    count the prompt, so an answer could not repeat the user's words or the persona's.
    The prompt's length is taken at the first step (the whole prompt is its input then).
    """

    def __init__(self, penalty: float, ngram: int) -> None:
        self.penalty = penalty
        self.ngram = ngram
        self.start: int | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.start is None:
            self.start = int(input_ids.shape[1])
        answer = input_ids[0, self.start :].tolist()
        if not answer:
            return scores
        if self.penalty != 1.0:
            seen = torch.tensor(sorted(set(answer)), device=scores.device)
            values = scores[0, seen]
            scores[0, seen] = torch.where(values > 0, values / self.penalty, values * self.penalty)
        n = self.ngram
        if n and len(answer) >= n:
            prefix = tuple(answer[len(answer) - n + 1 :])
            banned = {
                answer[i + n - 1]
                for i in range(len(answer) - n + 1)
                if tuple(answer[i : i + n - 1]) == prefix
            }
            if banned:
                scores[0, sorted(banned)] = float("-inf")
        return scores
