"""Scripted stand-ins for the models, so unit tests run fast and offline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from tmo_graph.services import Services
from tmo_graph.settings import Settings


@dataclass
class Stats:
    logprobs: list[float]
    entropies: list[float]


@dataclass
class FakeLocal:
    """Answers from a list, in order; every token of every answer scores alike."""

    answers: list[str]
    logprob: float = -0.1
    calls: int = 0
    seen: list[Any] = field(default_factory=list)
    tags: list[list[str] | None] = field(default_factory=list)
    # The limits the graph gave each call: (max_new_tokens, max_time_s).
    limits: list[tuple[int | None, float | None]] = field(default_factory=list)

    def answer(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int | None = None,
        tags: list[str] | None = None,
        max_time_s: float | None = None,
    ) -> tuple[str, Stats]:
        self.seen.append(messages)
        self.tags.append(tags)
        self.limits.append((max_new_tokens, max_time_s))
        text = self.reply(messages)
        self.calls += 1
        return text, self.score_answer(messages, text)

    def reply(self, messages: list[dict[str, str]]) -> str:
        """The answer's text: the listed answers in turn (a subclass may answer otherwise)."""
        return self.answers[self.calls % len(self.answers)]

    def score_answer(self, messages: list[dict[str, str]], answer: str) -> Stats:
        n = max(len(answer.split()), 1)
        # A sure fake is sure everywhere: entropy rises as the chosen tokens' log-prob falls.
        return Stats(logprobs=[self.logprob] * n, entropies=[0.5 - 2.0 * self.logprob] * n)


class FakeCloud(BaseChatModel):
    """Answers every call with ``answer`` and reports ``input_tokens``/``output_tokens`` of
    usage; records what it was sent and the limits asked (``max_tokens``)."""

    answer: str = "cloud answer"
    fail: bool = False
    input_tokens: int = 100
    output_tokens: int = 20
    sent: list[list[BaseMessage]] = []
    max_tokens_sent: list[int] = []

    @property
    def _llm_type(self) -> str:
        return "fake-cloud"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.sent.append(messages)
        if "max_tokens" in kwargs:
            self.max_tokens_sent.append(kwargs["max_tokens"])
        if self.fail:
            raise ConnectionError("connection refused")
        usage = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }
        message = AIMessage(content=self.answer, usage_metadata=usage)  # type: ignore[arg-type]
        return ChatResult(generations=[ChatGeneration(message=message)])


class FixedScorer:
    """Association scores from a table, so view-choice tests do not depend on embeddings."""

    def __init__(self, scores: Mapping[str, float]) -> None:
        self.scores = dict(scores)

    def score(
        self, prompt_vector: Sequence[float], captions: Mapping[str, str]
    ) -> dict[str, float]:
        return {name: self.scores.get(name, 0.0) for name in captions}


class PromptScorer:
    """Association scores per prompt text, so tests can script what each question points at.

    The scorer only sees the prompt's embedding; it finds the prompt by embedding each known
    text with the same (deterministic) embeddings. Unknown prompts score 0 for every view.
    """

    def __init__(self, embeddings: Embeddings, table: Mapping[str, Mapping[str, float]]) -> None:
        self.table = {
            tuple(embeddings.embed_query(text)): dict(scores) for text, scores in table.items()
        }

    def score(
        self, prompt_vector: Sequence[float], captions: Mapping[str, str]
    ) -> dict[str, float]:
        scores = self.table.get(tuple(prompt_vector), {})
        return {name: scores.get(name, 0.0) for name in captions}


def fake_services(
    tmp: Path,
    local: FakeLocal | None = None,
    cloud: BaseChatModel | None = None,
    scores: Mapping[str, float] | None = None,
    settings: Settings | None = None,
) -> Services:
    settings = settings or Settings()
    return Services(
        settings=settings,
        local=local or FakeLocal(answers=["local answer"]),
        cloud=cloud,
        embeddings=DeterministicFakeEmbedding(size=32),
        association=FixedScorer(scores) if scores is not None else None,
        media_dir=tmp / "media",
    )


def png_bytes(color: str = "red") -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


class ToolCloud(BaseChatModel):
    """Answers each call with the next of ``replies`` (AIMessages, which may carry
    ``tool_calls``); records the messages and the keyword arguments (``tools``,
    ``tool_choice``) of every call."""

    replies: list[AIMessage]
    sent: list[list[BaseMessage]] = []
    kwargs_sent: list[dict[str, Any]] = []

    @property
    def _llm_type(self) -> str:
        return "fake-tool-cloud"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.sent.append(messages)
        self.kwargs_sent.append(kwargs)
        reply = self.replies[(len(self.sent) - 1) % len(self.replies)]
        usage = {"input_tokens": 50, "output_tokens": 10, "total_tokens": 60}
        message = reply.model_copy(update={"usage_metadata": usage})
        return ChatResult(generations=[ChatGeneration(message=message)])


class WordTokenizer:
    """A tokenizer for the local model's context guard: one token per word; the chat
    template adds a role token per message and one to answer."""

    eos_token_id = 0

    def __init__(self, model_max_length: int) -> None:
        self.model_max_length = model_max_length

    def encode(self, text: str, add_special_tokens: bool = False) -> list[str]:
        return text.split()

    def decode(self, ids: list[str]) -> str:
        return " ".join(ids)

    def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> list[int]:
        return [1] * (sum(len(m["content"].split()) + 1 for m in messages) + 1)


def owner_map(owners: Any) -> dict[str, str]:
    """Each thread's owner (thread id -> user) in a :class:`~tmo_graph.threads.owners.ThreadOwners`
    of this process, read through its public ``threads()``."""
    import asyncio

    return {t.thread_id: t.user_id for t in asyncio.run(owners.threads())}
