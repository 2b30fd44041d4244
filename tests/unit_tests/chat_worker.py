"""`tmo-graph chat` on fake models whose answers stream slowly, for the terminal tests.

python -m tests.unit_tests.chat_worker SCENARIO [chat options ...]

SCENARIO ``sure``: the device model is sure of its answer (kept); ``unsure``: it is not, and
the cloud replaces its draft; ``long``: a sure answer of :data:`LONG` words, taller than a
small terminal. Each model writes one word every :data:`DELAY_S` seconds, so
a test can see the first words on the terminal long before the turn ends.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import Stats, fake_services
from tmo_graph.cli import talk
from tmo_graph.cli.app import app
from tmo_graph.graph import build_graph
from tmo_graph.settings import Settings

DELAY_S = 0.25
DRAFT = "draftone drafttwo draftthree draftfour draftfive draftsix"
SURE = "alpha bravo charlie delta echo foxtrot"
CLOUD = "cloudone cloudtwo cloudthree cloudfour"
LONG = 320  # words w001 ... w320: eight lines of a 160-column terminal


class SlowChat(BaseChatModel):
    """Streams ``text`` a word at a time, ``delay_s`` apart; reports token usage."""

    text: str
    delay_s: float = DELAY_S

    @property
    def _llm_type(self) -> str:
        return "slow-fake"

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        words = self.text.split(" ")
        for i, word in enumerate(words):
            time.sleep(self.delay_s)
            piece = word if i == 0 else " " + word
            chunk = AIMessageChunk(content=piece)
            if i == len(words) - 1:
                chunk.usage_metadata = {
                    "input_tokens": 30,
                    "output_tokens": len(words),
                    "total_tokens": 30 + len(words),
                }
            yield ChatGenerationChunk(message=chunk)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = "".join(c.text for c in self._stream(messages, stop, run_manager))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


class SlowLocal:
    """The device model: its answer streams through a chat model (as the real one's does)."""

    def __init__(self, text: str, logprob: float, delay_s: float = DELAY_S) -> None:
        self.text, self.logprob, self.delay_s = text, logprob, delay_s

    def answer(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int | None = None,
        tags: list[str] | None = None,
        max_time_s: float | None = None,
    ) -> tuple[str, Stats]:
        chat = SlowChat(text=self.text, delay_s=self.delay_s)
        reply = chat.invoke("question", config={"tags": tags or []})
        n = len(self.text.split())
        stats = Stats([self.logprob] * n, [0.5 - 2.0 * self.logprob] * n)
        stats.message_id = reply.id  # type: ignore[attr-defined]
        return str(reply.content), stats

    def score_answer(self, messages: list[dict[str, str]], answer: str) -> Stats:
        n = len(answer.split())
        return Stats([self.logprob] * n, [0.5 - 2.0 * self.logprob] * n)


def main(scenario: str, args: list[str]) -> None:
    local = {
        "sure": SlowLocal(SURE, -0.05),
        "unsure": SlowLocal(DRAFT, -3.0),
        "long": SlowLocal(" ".join(f"w{i:03d}" for i in range(1, LONG + 1)), -0.05, 0.01),
    }[scenario]
    folder = Path(tempfile.mkdtemp(prefix="chat-worker-"))

    @contextmanager
    def fake_graph(settings: Settings, db: Path | None) -> Iterator[tuple[Any, Any]]:
        services = fake_services(folder, local, SlowChat(text=CLOUD), settings=settings)
        yield build_graph(services, checkpointer=InMemorySaver()), services

    talk._graph = fake_graph  # type: ignore[assignment]  # no models, no SQLite
    app(args=args, prog_name="tmo-graph")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
