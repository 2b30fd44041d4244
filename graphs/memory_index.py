"""The embedding function of the memory's store index under `langgraph dev` and a LangGraph
deployment (langgraph.json: ``"store": {"index": {"embed": "./graphs/memory_index.py:embed",
"dims": 384, "fields": ["text"]}}``).

It is the project's MiniLM as the settings name it (``TMO_GRAPH_CONFIG``, ``TMO_EMBEDDINGS__*``),
the same model instance the graph's nodes use, loaded on the first stored or searched turn.
Another embedding model needs ``dims`` changed to its size.
"""

from __future__ import annotations

import os
from functools import lru_cache

from langchain_core.embeddings import Embeddings

from tmo_graph.models.embeddings import local_embeddings
from tmo_graph.settings import load_settings


@lru_cache(maxsize=1)
def _embeddings() -> Embeddings:
    emb = load_settings(os.environ.get("TMO_GRAPH_CONFIG")).embeddings
    return local_embeddings(emb.source, backend=emb.backend, dtype=emb.dtype, threads=emb.threads)


def embed(texts: list[str]) -> list[list[float]]:
    """One vector per text (stored turns and search queries alike)."""
    return _embeddings().embed_documents(list(texts))
