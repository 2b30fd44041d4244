"""Values put back into a cloud answer come back in later requests: they must be replaced
there too (found by tests/integration_tests/test_privacy_fuzz.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services
from tmo_graph.context import Context
from tmo_graph.graph import build_graph
from tmo_graph.guards.privacy import Redactor
from tmo_graph.prompts import message_text

SECRET = "hunter2x"


def test_a_value_found_once_is_replaced_wherever_it_appears() -> None:
    redactor = Redactor()
    said = f"My wifi password is {SECRET}, thanks."
    assert redactor.redact(said) == "My wifi password is [SECRET_1], thanks."
    # no "password is" here: found because the request already holds it
    assert (
        redactor.redact(f"Noted: {SECRET}. Also {SECRET}!") == "Noted: [SECRET_1]. Also [SECRET_1]!"
    )
    assert redactor.redact(f"{SECRET}9 and x{SECRET} are other words") == (
        f"{SECRET}9 and x{SECRET} are other words"
    )
    assert redactor.counts == {"secret": 1}


class EchoCloud(FakeCloud):
    """Answers with every placeholder of the request, as a model that repeats what it is told."""

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.sent.append(messages)
        said = sorted({p for m in messages for p in re.findall(r"\[[A-Z]+_\d+\]", message_text(m))})
        usage = {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120}
        reply = AIMessage(content=f"Noted: {', '.join(said)}.", usage_metadata=usage)  # type: ignore[arg-type]
        return ChatResult(generations=[ChatGeneration(message=reply)])


def _sent_texts(tmp_path: Path, recall_k: int) -> list[str]:
    cloud = EchoCloud()
    cloud.sent = []
    graph = build_graph(
        fake_services(tmp_path, FakeLocal(["ok"]), cloud), checkpointer=InMemorySaver()
    )
    context = Context(
        policy="always-cloud", recent_turns=1, recall_k=recall_k, min_recall_score=-1.0
    )
    config = {"configurable": {"thread_id": "wifi"}}
    for text in (f"My wifi password is {SECRET}, thanks.", "Thanks.", "And the fridge?"):
        out = graph.invoke({"messages": [("user", text)]}, config, context=context)
    assert out["turns"][1]["answer"] == f"Noted: {SECRET}."  # put back on the device
    return ["\n".join(message_text(m) for m in request) for request in cloud.sent]


def test_a_restored_value_is_replaced_while_its_finding_is_in_the_request(tmp_path: Path) -> None:
    # Turn 3's request recalls turn 1 ("password is ...") and carries turn 2's answer.
    sent = _sent_texts(tmp_path, recall_k=1)
    assert len(sent) == 3 and all(SECRET not in text for text in sent)
    assert "Noted: [SECRET_1]." in sent[2]


def test_a_restored_secret_never_reaches_a_later_request(tmp_path: Path) -> None:
    # recall_k=0: turn 3's request holds turn 2 ("Thanks." / "Noted: hunter2x.") only.
    sent = _sent_texts(tmp_path, recall_k=0)
    assert SECRET not in sent[2]
