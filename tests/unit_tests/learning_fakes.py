"""A capturing cloud stand-in that also grades, for the learning tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from tests.unit_tests.fakes import FakeLocal, fake_services
from tmo_graph.learning.shadow import GRADER
from tmo_graph.services import Services
from tmo_graph.settings import Settings


def is_grading(messages: list[BaseMessage]) -> bool:
    return bool(messages) and messages[0].content == GRADER


class JudgingCloud(BaseChatModel):
    """Keeps every request; answers a question with ``answer`` and a grading request with
    ``grade``; reports 100 input and 20 (a grade: 2) output tokens."""

    answer: str = "the cloud's answer"
    grade: str = "7"
    sent: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "judging-cloud"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.sent.append(list(messages))
        text = self.grade if is_grading(messages) else self.answer
        out = 2 if is_grading(messages) else 20
        usage = {"input_tokens": 100, "output_tokens": out, "total_tokens": 100 + out}
        message = AIMessage(content=text, usage_metadata=usage)  # type: ignore[arg-type]
        return ChatResult(generations=[ChatGeneration(message=message)])

    def answers(self) -> list[list[BaseMessage]]:
        return [m for m in self.sent if not is_grading(m)]

    def gradings(self) -> list[list[BaseMessage]]:
        return [m for m in self.sent if is_grading(m)]


def learning_services(
    tmp: Path,
    local: FakeLocal,
    cloud: JudgingCloud,
    shadow_rate: float = 1.0,
    **learning: Any,
) -> Services:
    settings = Settings(
        learning={"shadow_rate": shadow_rate, "ledger": tmp / "shadow.sqlite", **learning},
        audit={"path": tmp / "audit.jsonl"},
        spending={"ledger": tmp / "spend.sqlite"},
        device={"state_path": tmp / "device.json", "live": False},
    )
    return fake_services(tmp, local, cloud, settings=settings)


def sent_text(messages: list[BaseMessage]) -> str:
    return "\n".join(str(m.content) for m in messages)
