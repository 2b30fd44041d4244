"""Long-term dialogue memory: older turns in a Chroma collection, recalled per user.

Every stored turn carries its owner's ``user_id``; every query filters on it, so one
user's history is never recalled into another's dialogue.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tmo_graph.errors import TmoGraphError
from tmo_graph.state import Recalled

_CLIENTS: dict[str, Any] = {}
_LOCK = threading.Lock()


def chroma_client(persist_dir: Path) -> Any:
    """One PersistentClient per folder and process (Chroma refuses two with other settings)."""
    try:
        import chromadb
        from chromadb.config import Settings as ChromaSettings
    except ImportError:
        raise TmoGraphError("chromadb is not installed", "pip install 'tmo-graph[local]'") from None
    key = str(Path(persist_dir).resolve())
    with _LOCK:
        if key not in _CLIENTS:
            Path(key).mkdir(parents=True, exist_ok=True)
            _CLIENTS[key] = chromadb.PersistentClient(
                path=key, settings=ChromaSettings(anonymized_telemetry=False)
            )
        return _CLIENTS[key]


class TurnMemory:
    """Older turns of all dialogues, searchable by meaning, scoped by user."""

    def __init__(self, persist_dir: Path, collection: str = "tmo_turns") -> None:
        self.persist_dir = Path(persist_dir)
        # Embeddings are always passed in: Chroma's default embedding function downloads a model.
        self._collection = chroma_client(self.persist_dir).get_or_create_collection(
            name=collection, embedding_function=None, metadata={"hnsw:space": "cosine"}
        )

    def add(
        self,
        *,
        user_id: str,
        thread_id: str,
        turns: Sequence[int],
        texts: Sequence[str],
        vectors: Sequence[Sequence[float]],
    ) -> None:
        """Store turns; re-adding the same (user, thread, turn) overwrites it."""
        if not texts:
            return
        self._collection.upsert(
            ids=[f"{user_id}\x1f{thread_id}\x1f{turn}" for turn in turns],
            documents=list(texts),
            embeddings=[list(map(float, v)) for v in vectors],
            metadatas=[
                {"user_id": user_id, "thread_id": thread_id, "turn": int(turn)} for turn in turns
            ],
        )

    def search(
        self, *, user_id: str, vector: Sequence[float], k: int, min_score: float = -1.0
    ) -> list[Recalled]:
        """The ``k`` stored turns of ``user_id`` closest to ``vector`` with cosine >= min_score."""
        if k <= 0:
            return []
        result = self._collection.query(
            query_embeddings=[list(map(float, vector))],
            n_results=k,
            where={"user_id": user_id},
            include=["documents", "metadatas", "distances"],
        )
        docs = (result.get("documents") or [[]])[0]
        metas = (result.get("metadatas") or [[]])[0]
        dists = (result.get("distances") or [[]])[0]
        return [
            Recalled(
                text=str(doc),
                score=round(1.0 - float(dist), 4),
                thread_id=str(meta["thread_id"]),
                turn=int(meta["turn"]),
            )
            for doc, meta, dist in zip(docs, metas, dists, strict=True)
            if 1.0 - float(dist) >= min_score
        ]

    def forget_thread(self, *, user_id: str, thread_id: str) -> None:
        """Delete every stored turn of one thread (when a dialogue is restarted)."""
        self._collection.delete(where={"$and": [{"user_id": user_id}, {"thread_id": thread_id}]})

    def count(self) -> int:
        return int(self._collection.count())
