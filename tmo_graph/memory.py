"""Long-term dialogue memory: older turns in Chroma, one collection per user.

Each user's turns live in their own collection, so a query can only ever see its owner's
history (and needs no metadata filter, which is slow on large collections).
"""

from __future__ import annotations

import hashlib
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
    """Older turns of all dialogues, searchable by meaning, kept apart per user."""

    def __init__(self, persist_dir: Path, collection: str = "tmo_turns") -> None:
        self.persist_dir = Path(persist_dir)
        self.prefix = collection
        self._client = chroma_client(self.persist_dir)
        self._collections: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _collection(self, user_id: str) -> Any:
        with self._lock:
            if user_id not in self._collections:
                # Hashed: any user id maps to a valid, fixed-length collection name.
                digest = hashlib.sha256(user_id.encode()).hexdigest()[:24]
                # Embeddings are always passed in: Chroma's default function downloads a model.
                self._collections[user_id] = self._client.get_or_create_collection(
                    name=f"{self.prefix}_{digest}",
                    embedding_function=None,
                    metadata={"hnsw:space": "cosine", "user_id": user_id},
                )
            return self._collections[user_id]

    def add(
        self,
        *,
        user_id: str,
        thread_id: str,
        turns: Sequence[int],
        texts: Sequence[str],
        vectors: Sequence[Sequence[float]],
    ) -> None:
        """Store turns; re-adding the same (thread, turn) overwrites it."""
        if not texts:
            return
        self._collection(user_id).upsert(
            ids=[f"{thread_id}\x1f{turn}" for turn in turns],
            documents=list(texts),
            embeddings=[list(map(float, v)) for v in vectors],
            metadatas=[{"thread_id": thread_id, "turn": int(turn)} for turn in turns],
        )

    def search(
        self, *, user_id: str, vector: Sequence[float], k: int, min_score: float = -1.0
    ) -> list[Recalled]:
        """The ``k`` stored turns of ``user_id`` closest to ``vector`` with cosine >= min_score."""
        collection = self._collection(user_id)
        if k <= 0 or collection.count() == 0:
            return []
        result = collection.query(
            query_embeddings=[list(map(float, vector))],
            n_results=k,
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
        self._collection(user_id).delete(where={"thread_id": thread_id})

    def count(self, user_id: str) -> int:
        return int(self._collection(user_id).count())
