"""TMOChatModel over the real default graph: SmolLM2 on the device, no cloud, in a chain."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from tmo_graph.chat_model import TMOChatModel
from tmo_graph.context import Context
from tmo_graph.sections import CloudSettings, MemorySettings
from tmo_graph.settings import Settings

pytestmark = pytest.mark.integration


def test_a_chain_invokes_and_streams_the_real_local_model(tmp_path: Path) -> None:
    settings = Settings(
        cloud=CloudSettings(mode="off"), memory=MemorySettings(persist_dir=tmp_path / "chroma")
    )
    model = TMOChatModel(settings=settings, context=Context(policy="always-local"))
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a kitchen helper. Answer in one sentence."), ("human", "{q}")]
    )

    reply = (prompt | model).invoke({"q": "How long should I boil an egg?"})
    assert isinstance(reply.content, str) and reply.content.strip()
    assert reply.response_metadata["route"] == "local"
    assert reply.response_metadata["cost_usd"] >= 0
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] > 0

    pieces = list((prompt | model | StrOutputParser()).stream({"q": "What is a whisk for?"}))
    assert len([p for p in pieces if p]) > 1  # tokens arrive as the model makes them
    assert "".join(pieces).strip()
