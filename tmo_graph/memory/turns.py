"""The memory before the LangGraph store: older turns in Chroma, one collection per user.

The graph no longer uses it (its memory is a LangGraph store: :mod:`tmo_graph.memory.recall`);
it is kept for ``bench/recall_scale.py``, which compares Chroma's HNSW index with the
in-process search of :mod:`tmo_graph.memory.index` on the same stored turns.

Each user's turns live in their own collection, so a query can only ever see its owner's
history (and needs no metadata filter, which is slow on large collections).

Chroma runs embedded (a folder of this machine) or as a server that several workers share
(:mod:`tmo_graph.memory.clients`). Embedded, this process searches its own copy of each
user's stored turns (:mod:`tmo_graph.memory.index`: 19 of 20 rare facts found among 100,000
stored turns where Chroma's HNSW index found 3), loaded from Chroma at the user's first
search (about 5 s per 100,000 turns) and kept in step by every ``add`` and
``forget_thread``. ``memory.search: chroma`` keeps Chroma's index; a Chroma server is always
searched by Chroma (other workers write to it, so no process holds all of it).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from tmo_graph.errors import TmoGraphError
from tmo_graph.memory.clients import chroma_client, chroma_server_client, is_connection_error
from tmo_graph.memory.index import TurnTable, shared_table
from tmo_graph.state import Recalled

_T = TypeVar("_T")
# Chroma's rule for collection names; the prefix is followed by "_" and 24 hex digits.
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,400}$")
Search = Literal["in-process", "chroma"]
_LOAD_PAGE = 5000  # rows per Chroma request when a user's turns are loaded


class TurnMemory:
    """Older turns of all dialogues, searchable by meaning, kept apart per user."""

    def __init__(
        self,
        persist_dir: Path | None,
        collection: str = "tmo_turns",
        *,
        server_url: str | None = None,
        search: Search = "in-process",
    ) -> None:
        """Embedded Chroma in ``persist_dir``, or the Chroma server at ``server_url``;
        ``search``: how an embedded memory is searched (a server's: by Chroma)."""
        if not isinstance(collection, str) or not _PREFIX.match(collection):
            raise TmoGraphError(
                f"memory.collection {collection!r} is not a valid Chroma collection prefix",
                "use letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
        self.prefix = collection
        self.server_url = server_url
        self.persist_dir = Path(persist_dir) if persist_dir is not None else None
        if server_url is not None:
            self._client = chroma_server_client(server_url)
            self.where = f"the Chroma server at {server_url}"
        elif self.persist_dir is not None:
            self._client = chroma_client(self.persist_dir)
            self.where = f"Chroma in {self.persist_dir}"
        else:
            raise TmoGraphError(
                "TurnMemory needs a folder or a Chroma server URL, got neither",
                "pass persist_dir, or server_url='http://HOST:PORT'",
            )
        if search not in ("in-process", "chroma"):
            raise TmoGraphError(f"memory.search {search!r} is unknown", "use in-process or chroma")
        self.search_by = "chroma" if server_url is not None else search
        self._root = str(self.persist_dir.resolve()) if self.persist_dir is not None else ""
        self._collections: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _call(self, action: Callable[[], _T]) -> _T:
        """Run one Chroma request; a server that went away mid-run gets the clear error."""
        if self.server_url is None:
            return action()
        try:
            return action()
        except TmoGraphError:
            raise
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            raise TmoGraphError(
                f"lost the Chroma server at {self.server_url}: {type(exc).__name__}: {exc}",
                "check that `chroma run` is still up and reachable from this machine, "
                "then retry the turn (its thread is checkpointed)",
            ) from None

    def _name(self, user_id: str) -> str:
        # Hashed: any user id maps to a valid, fixed-length collection name.
        return f"{self.prefix}_{hashlib.sha256(user_id.encode()).hexdigest()[:24]}"

    def _table(self, user_id: str) -> TurnTable | None:
        """This process's copy of the user's turns (None: searched by Chroma)."""
        if self.search_by == "chroma":
            return None
        return shared_table(self._root, self._name(user_id))

    def _loaded_table(self, user_id: str) -> TurnTable | None:
        """:meth:`_table`, filled from Chroma on its first use; the caller holds its lock."""
        table = self._table(user_id)
        if table is None or table.loaded:
            return table
        collection = self._collection(user_id)
        table.reserve(int(self._call(collection.count)))
        offset = 0
        while True:
            page = collection.get(
                include=["embeddings", "documents", "metadatas"], limit=_LOAD_PAGE, offset=offset
            )
            ids = page["ids"]
            if len(ids):
                metas = page["metadatas"]
                table.put(
                    ids,
                    [str(m["thread_id"]) for m in metas],
                    [int(m["turn"]) for m in metas],
                    [str(d) for d in page["documents"]],
                    np.asarray(page["embeddings"], dtype=np.float32),
                )
            if len(ids) < _LOAD_PAGE:
                break
            offset += _LOAD_PAGE
        table.loaded = True
        return table

    def _collection(self, user_id: str) -> Any:
        with self._lock:
            if user_id not in self._collections:
                # Embeddings are always passed in: Chroma's default function downloads a model.
                self._collections[user_id] = self._call(
                    lambda: self._client.get_or_create_collection(
                        name=self._name(user_id),
                        embedding_function=None,
                        metadata={"hnsw:space": "cosine", "user_id": user_id},
                    )
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
        if not len(turns) == len(texts) == len(vectors):
            raise TmoGraphError(
                f"memory.add got {len(turns)} turns, {len(texts)} texts, {len(vectors)} vectors",
                "pass one turn number and one vector per text",
            )
        collection = self._collection(user_id)
        ids = [f"{thread_id}\x1f{turn}" for turn in turns]
        table = self._table(user_id)
        if table is None:
            self._upsert(collection, ids, thread_id, turns, texts, vectors)
            return
        with table.lock:  # Chroma first: the copy never holds what the store does not
            self._upsert(collection, ids, thread_id, turns, texts, vectors)
            if table.loaded:
                array = np.asarray(vectors, dtype=np.float32)
                table.put(ids, [thread_id] * len(ids), turns, list(texts), array)

    def _upsert(
        self,
        collection: Any,
        ids: list[str],
        thread_id: str,
        turns: Sequence[int],
        texts: Sequence[str],
        vectors: Sequence[Sequence[float]],
    ) -> None:
        # Upsert: a worker retrying a turn, or another worker moving the same turn, is harmless.
        self._call(
            lambda: collection.upsert(
                ids=ids,
                documents=list(texts),
                embeddings=[list(map(float, v)) for v in vectors],
                metadatas=[{"thread_id": thread_id, "turn": int(turn)} for turn in turns],
            )
        )

    def search(
        self,
        *,
        user_id: str,
        vector: Sequence[float],
        k: int,
        min_score: float = -1.0,
        thread_id: str | None = None,
    ) -> list[Recalled]:
        """The ``k`` stored turns of ``user_id`` closest to ``vector`` with cosine >= min_score;
        only those of ``thread_id`` when it is given (None: all the user's dialogues)."""
        if k <= 0:  # nothing asked: no database call
            return []
        table = self._table(user_id)
        if table is not None:
            with table.lock:
                loaded = self._loaded_table(user_id)
                assert loaded is not None
                return loaded.search(vector, k, min_score, thread_id)
        collection = self._collection(user_id)
        # No count() first: Chroma >= 1.0 answers an empty collection with no results, and
        # the extra call cost about a millisecond per turn at 10,000 stored turns.
        where = {"thread_id": thread_id} if thread_id is not None else None
        result = self._call(
            lambda: collection.query(
                query_embeddings=[list(map(float, vector))],
                n_results=k,
                where=where,
                include=["documents", "metadatas", "distances"],
            )
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
        collection = self._collection(user_id)
        table = self._table(user_id)
        if table is None:
            self._call(lambda: collection.delete(where={"thread_id": thread_id}))
            return
        with table.lock:
            self._call(lambda: collection.delete(where={"thread_id": thread_id}))
            table.drop_thread(thread_id)

    def copy_thread(self, *, user_id: str, source: str, target: str, before: int) -> int:
        """Store ``source``'s turns numbered below ``before`` again under ``target``: a dialogue
        forked from ``source`` at that turn recalls what was said before it. How many."""
        collection = self._collection(user_id)
        where = {"$and": [{"thread_id": source}, {"turn": {"$lt": int(before)}}]}
        page = self._call(
            lambda: collection.get(where=where, include=["embeddings", "documents", "metadatas"])
        )
        if not len(page["ids"]):
            return 0
        self.add(
            user_id=user_id,
            thread_id=target,
            turns=[int(m["turn"]) for m in page["metadatas"]],
            texts=[str(d) for d in page["documents"]],
            vectors=[list(map(float, v)) for v in page["embeddings"]],
        )
        return len(page["ids"])

    def count(self, user_id: str) -> int:
        return int(self._call(self._collection(user_id).count))
