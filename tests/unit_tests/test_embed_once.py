"""A turn embeds its prompt once: task, views, recall (and follow-ups) share the vector."""

from __future__ import annotations

from pathlib import Path

from langchain_core.embeddings import DeterministicFakeEmbedding
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeLocal
from tmo_graph.context import Context
from tmo_graph.graph import build_graph
from tmo_graph.services import Services
from tmo_graph.settings import Settings


class CountingEmbeddings(DeterministicFakeEmbedding):
    queries: list[str] = []
    documents: list[str] = []

    def embed_query(self, text: str) -> list[float]:
        self.queries.append(text)
        return super().embed_query(text)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.documents.extend(texts)
        return super().embed_documents(texts)


def test_each_prompt_is_embedded_once(tmp_path: Path) -> None:
    embeddings = CountingEmbeddings(size=32, queries=[], documents=[])
    services = Services(
        settings=Settings(),
        local=FakeLocal(["sure"], logprob=-0.05),
        cloud=None,
        embeddings=embeddings,
        media_dir=tmp_path / "media",
    )
    embeddings.queries.clear()
    embeddings.documents.clear()
    graph = build_graph(services, checkpointer=InMemorySaver())
    views = {
        "overhead": {"description": "camera above the stove"},
        "side": {"description": "camera facing the fridge"},
    }
    prompts = [
        "Is the pot boiling?",
        "And the kettle?",  # refers back: the previous prompt scores the views too
        "What about the one on the left?",
        "How long for an egg?",
        "And for two eggs?",
        "Is the pot boiling?",  # asked again: the cached vector
    ]
    context = Context(user_id="u", recent_turns=2, recall_k=3, recall_scope="thread")
    for i, prompt in enumerate(prompts):
        inputs: dict[str, object] = {"messages": [("user", prompt)]}
        if i == 0:
            inputs["views"] = views
        graph.invoke(inputs, {"configurable": {"thread_id": "t"}}, context=context)
    captions = [v["description"] for v in views.values()]
    # Every distinct prompt and caption once, however many nodes and follow-ups read them.
    assert sorted(embeddings.queries) == sorted({*prompts, *captions})
    # The turns that left the two-turn window before the last question (turns 0..2), once each.
    assert len(embeddings.documents) == 3
    assert embeddings.documents[0].startswith("User: Is the pot boiling?")
