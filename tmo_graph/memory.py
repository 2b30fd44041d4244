"""Long-term dialogue memory: older turns in Chroma, one collection per user.

Each user's turns live in their own collection, so a query can only ever see its owner's
history (and needs no metadata filter, which is slow on large collections).

Chroma runs embedded (a PersistentClient on a folder of this machine) or as a server
(`chroma run`, reached with an HttpClient), so several workers can share one memory.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from tmo_graph.errors import TmoGraphError
from tmo_graph.state import Recalled

if TYPE_CHECKING:
    from tmo_graph.settings import Settings

_CLIENTS: dict[str, Any] = {}
_LOCK = threading.Lock()
_T = TypeVar("_T")
# Chroma's rule for collection names; the prefix is followed by "_" and 24 hex digits.
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,400}$")


def _chromadb() -> tuple[Any, Any]:
    try:
        import chromadb
        from chromadb.config import Settings as ChromaSettings
    except ImportError:
        raise TmoGraphError("chromadb is not installed", "pip install 'tmo-graph[local]'") from None
    return chromadb, ChromaSettings


def chroma_client(persist_dir: Path) -> Any:
    """One PersistentClient per folder and process (Chroma refuses two with other settings)."""
    chromadb, chroma_settings = _chromadb()
    key = str(Path(persist_dir).resolve())
    with _LOCK:
        if key not in _CLIENTS:
            Path(key).mkdir(parents=True, exist_ok=True)
            _CLIENTS[key] = chromadb.PersistentClient(
                path=key, settings=chroma_settings(anonymized_telemetry=False)
            )
        return _CLIENTS[key]


def parse_server_url(url: str) -> tuple[str, int, bool]:
    """(host, port, ssl) of a Chroma server URL such as ``http://127.0.0.1:8000``."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        raise TmoGraphError(
            f"memory.server_url {url!r} is not an http(s) URL with a host",
            "write it as http://HOST:PORT, e.g. http://127.0.0.1:8000 (the address `chroma run` "
            "listens on), or null for embedded Chroma",
        )
    ssl = parts.scheme == "https"
    return parts.hostname, port or (443 if ssl else 8000), ssl


def chroma_server_client(url: str) -> Any:
    """One HttpClient per server URL and process; fails at once if the server is not there."""
    host, port, ssl = parse_server_url(url)
    key = f"{'https' if ssl else 'http'}://{host}:{port}"
    chromadb, chroma_settings = _chromadb()
    with _LOCK:
        if key not in _CLIENTS:
            try:  # the constructor already asks the server for its tenant
                _CLIENTS[key] = chromadb.HttpClient(
                    host=host,
                    port=port,
                    ssl=ssl,
                    settings=chroma_settings(anonymized_telemetry=False),
                )
            except Exception as exc:  # ValueError, httpx errors: all mean "not reachable"
                raise TmoGraphError(
                    f"cannot reach the Chroma server at {key} (memory.server_url): "
                    f"{(str(exc).splitlines() or [type(exc).__name__])[0].rstrip('.?! ')}",
                    f"start it (`chroma run --path DIR --host {host} --port {port}`), "
                    "correct memory.server_url / TMO_MEMORY__SERVER_URL, "
                    "or set it to null for embedded Chroma",
                ) from None
        return _CLIENTS[key]


class TurnMemory:
    """Older turns of all dialogues, searchable by meaning, kept apart per user."""

    def __init__(
        self,
        persist_dir: Path | None,
        collection: str = "tmo_turns",
        *,
        server_url: str | None = None,
    ) -> None:
        """Embedded Chroma in ``persist_dir``, or the Chroma server at ``server_url``."""
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
        self._collections: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> TurnMemory:
        """The memory the settings name: memory.server_url if set, else memory.persist_dir."""
        server_url = settings.memory.server_url
        persist_dir = None if server_url else settings.memory_dir()
        return cls(persist_dir, settings.memory.collection, server_url=server_url)

    def _call(self, action: Callable[[], _T]) -> _T:
        """Run one Chroma request; a server that went away mid-run gets the clear error."""
        if self.server_url is None:
            return action()
        try:
            return action()
        except TmoGraphError:
            raise
        except Exception as exc:
            if not _is_connection_error(exc):
                raise
            raise TmoGraphError(
                f"lost the Chroma server at {self.server_url}: {type(exc).__name__}: {exc}",
                "check that `chroma run` is still up and reachable from this machine, "
                "then retry the turn (its thread is checkpointed)",
            ) from None

    def _collection(self, user_id: str) -> Any:
        with self._lock:
            if user_id not in self._collections:
                # Hashed: any user id maps to a valid, fixed-length collection name.
                digest = hashlib.sha256(user_id.encode()).hexdigest()[:24]
                # Embeddings are always passed in: Chroma's default function downloads a model.
                self._collections[user_id] = self._call(
                    lambda: self._client.get_or_create_collection(
                        name=f"{self.prefix}_{digest}",
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
        # Upsert: a worker retrying a turn, or another worker moving the same turn, is harmless.
        self._call(
            lambda: collection.upsert(
                ids=[f"{thread_id}\x1f{turn}" for turn in turns],
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
        self._call(lambda: collection.delete(where={"thread_id": thread_id}))

    def count(self, user_id: str) -> int:
        return int(self._call(self._collection(user_id).count))


def _is_connection_error(exc: BaseException) -> bool:
    """httpx's transport errors (refused, reset, timed out) without importing httpx here."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"TransportError", "ConnectError", "ConnectionError", "TimeoutException"})
