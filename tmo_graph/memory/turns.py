"""Long-term dialogue memory: older turns in Chroma, one collection per user.

Each user's turns live in their own collection, so a query can only ever see its owner's
history (and needs no metadata filter, which is slow on large collections).

Chroma runs embedded (a PersistentClient on a folder of this machine) or as a server
(`chroma run`, reached with an HttpClient), so several workers can share one memory.

Searching: embedded, Chroma is the durable store and this process searches its own copy of
each user's stored turns (:class:`_Table`: loaded from Chroma at the user's first search,
then kept in step by every ``add`` and ``forget_thread``). A search compares the query with
every stored turn, by sign bits first (one bit per dimension), then with the full vectors of
the :data:`CANDIDATES` closest; a search within one dialogue, or of a user with fewer turns,
compares full vectors only. Chroma's own (HNSW) index lost the rare turn among many alike:
with 100,000 stored turns it returned 3 of 20 planted facts in its top 5, where this search
returns 19 (as many as comparing every vector in float32) in 2.7 ms; a search within one
dialogue (a metadata filter) took 59-100 ms there, 0.1 ms here (``bench/recall_scale.py``).
The copy costs about 1 KB of memory per stored turn, and loading it about 5 s per 100,000
turns at a user's first search in a process. ``memory.search: chroma`` keeps Chroma's index;
a Chroma server is always searched by Chroma (other workers write to it, so no process holds
all of it).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

import numpy as np

from tmo_graph.errors import TmoGraphError
from tmo_graph.state import Recalled

if TYPE_CHECKING:
    from tmo_graph.settings import Settings

_CLIENTS: dict[str, Any] = {}
_LOCK = threading.Lock()
_T = TypeVar("_T")
# Chroma's rule for collection names; the prefix is followed by "_" and 24 hex digits.
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,400}$")
Search = Literal["in-process", "chroma"]
# Above this many stored turns, a search compares every vector's sign bits with the query's
# first and the full vectors of the closest CANDIDATES only.
CANDIDATES = 256
_LOAD_PAGE = 5000  # rows per Chroma request when a user's turns are loaded
_TABLES: dict[tuple[str, str], _Table] = {}
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _sign_bits(vectors: np.ndarray) -> np.ndarray:
    """Each row's signs, packed into 64-bit words (rows padded with zero bits)."""
    bits = np.packbits(vectors > 0, axis=1)
    pad = -bits.shape[1] % 8
    if pad:
        bits = np.pad(bits, ((0, 0), (0, pad)))
    return np.ascontiguousarray(bits).view(np.uint64)


def _hamming(codes: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Bits that differ between ``code`` and each column of ``codes`` (one row per 64-bit
    word: a word of every turn is one contiguous array, counted at once)."""
    count = getattr(np, "bitwise_count", None)  # numpy >= 2

    def bits(words: np.ndarray) -> np.ndarray:
        if count is not None:
            return np.asarray(count(words), dtype=np.uint32)
        return _POPCOUNT[words.view(np.uint8)].reshape(len(words), 8).sum(1, dtype=np.uint32)

    distance = bits(codes[0] ^ code[0])
    for word in range(1, len(code)):
        distance += bits(codes[word] ^ code[word])
    return distance


class _Table:
    """One user's stored turns as this process holds them for search: ids, dialogue and turn,
    texts, unit vectors (float16) and their sign bits. Callers hold ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loaded = False
        self.ids: list[str] = []
        self.threads: list[str] = []
        self.turns: list[int] = []
        self.texts: list[str] = []
        self.row: dict[str, int] = {}
        self.by_thread: dict[str, list[int]] = {}
        self.vectors = np.zeros((0, 0), dtype=np.float16)
        self.codes = np.zeros((0, 0), dtype=np.uint64)  # (words, rows): see _hamming
        self._reserved = 0

    @property
    def n(self) -> int:
        return len(self.ids)

    def put(
        self, ids: Sequence[str], threads: Sequence[str], turns: Sequence[int],
        texts: Sequence[str], vectors: np.ndarray,
    ) -> None:  # fmt: skip
        """Add rows, or overwrite those whose id is already here."""
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms == 0, 1.0, norms)
        if self.vectors.shape[1] == 0:
            self.vectors = np.zeros((0, vectors.shape[1]), dtype=np.float16)
            self.codes = np.zeros((_sign_bits(vectors[:1]).shape[1], 0), dtype=np.uint64)
        if vectors.shape[1] != self.vectors.shape[1]:
            raise TmoGraphError(
                f"memory holds {self.vectors.shape[1]}-dimensional vectors, got {vectors.shape[1]}",
                "use the embeddings the memory was filled with, or another memory folder",
            )
        codes = _sign_bits(vectors)
        new = [i for i, id_ in enumerate(ids) if id_ not in self.row]
        for i, id_ in enumerate(ids):
            if id_ in self.row:
                at = self.row[id_]
                self.texts[at] = texts[i]
                self.vectors[at] = vectors[i]
                self.codes[:, at] = codes[i]
        if not new:
            return
        start = self.n
        for offset, i in enumerate(new):
            self.row[ids[i]] = start + offset
            self.by_thread.setdefault(threads[i], []).append(start + offset)
            self.ids.append(ids[i])
            self.threads.append(threads[i])
            self.turns.append(int(turns[i]))
            self.texts.append(texts[i])
        self._grow(self.n)
        self.vectors[start : self.n] = vectors[new]
        self.codes[:, start : self.n] = codes[new].T

    def reserve(self, n: int) -> None:
        """Room for ``n`` rows once the vectors' width is known (at the first put)."""
        self._reserved = max(self._reserved, n)

    def _grow(self, n: int) -> None:
        """Room for ``n`` rows (capacity doubles, so appending one row is cheap)."""
        if len(self.vectors) >= n:
            return
        size = max(n, 2 * len(self.vectors), 64, self._reserved)
        vectors = np.zeros((size, self.vectors.shape[1]), dtype=np.float16)
        codes = np.zeros((len(self.codes), size), dtype=np.uint64)
        vectors[: len(self.vectors)] = self.vectors
        codes[:, : self.codes.shape[1]] = self.codes
        self.vectors, self.codes = vectors, codes

    def drop_thread(self, thread_id: str) -> None:
        gone = set(self.by_thread.get(thread_id, ()))
        if not gone:
            return
        keep = [i for i in range(self.n) if i not in gone]
        index = np.asarray(keep, dtype=np.int64)
        self.ids = [self.ids[i] for i in keep]
        self.threads = [self.threads[i] for i in keep]
        self.turns = [self.turns[i] for i in keep]
        self.texts = [self.texts[i] for i in keep]
        self.vectors = self.vectors[index].copy()
        self.codes = self.codes[:, index].copy()
        self.row = {id_: i for i, id_ in enumerate(self.ids)}
        self.by_thread = {}
        for i, thread in enumerate(self.threads):
            self.by_thread.setdefault(thread, []).append(i)

    def search(
        self, vector: Sequence[float], k: int, min_score: float, thread_id: str | None
    ) -> list[Recalled]:
        """The ``k`` rows closest to ``vector`` by cosine (>= ``min_score``)."""
        if self.n == 0:
            return []
        query = np.asarray(vector, dtype=np.float32)
        if query.shape != (self.vectors.shape[1],):
            raise TmoGraphError(
                f"memory holds {self.vectors.shape[1]}-dimensional vectors, got a "
                f"{query.size}-dimensional query",
                "search with the embeddings the memory was filled with",
            )
        norm = float(np.linalg.norm(query))
        query = query / (norm or 1.0)
        # Sign bits first, then the full vectors of the closest CANDIDATES only.
        if thread_id is None:
            rows = np.arange(self.n)
            if self.n > CANDIDATES:
                distance = _hamming(self.codes[:, : self.n], _sign_bits(query[None, :])[0])
                rows = np.argpartition(distance, CANDIDATES)[:CANDIDATES]
        else:
            rows = np.asarray(self.by_thread.get(thread_id, ()), dtype=np.int64)
            if len(rows) > CANDIDATES:  # a very long dialogue
                distance = _hamming(self.codes[:, rows], _sign_bits(query[None, :])[0])
                rows = rows[np.argpartition(distance, CANDIDATES)[:CANDIDATES]]
        if rows.size == 0:
            return []
        scores = self.vectors[rows].astype(np.float32) @ query
        best = np.argsort(-scores, kind="stable")[:k]
        return [
            Recalled(
                text=self.texts[int(rows[i])],
                score=round(float(scores[i]), 4),
                thread_id=self.threads[int(rows[i])],
                turn=self.turns[int(rows[i])],
            )
            for i in best
            if float(scores[i]) >= min_score
        ]


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

    @classmethod
    def from_settings(cls, settings: Settings) -> TurnMemory:
        """The memory the settings name: memory.server_url if set, else memory.persist_dir."""
        server_url = settings.memory.server_url
        persist_dir = None if server_url else settings.memory_dir()
        return cls(
            persist_dir,
            settings.memory.collection,
            server_url=server_url,
            search=settings.memory.search,
        )

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

    def _name(self, user_id: str) -> str:
        # Hashed: any user id maps to a valid, fixed-length collection name.
        return f"{self.prefix}_{hashlib.sha256(user_id.encode()).hexdigest()[:24]}"

    def _table(self, user_id: str) -> _Table | None:
        """This process's copy of the user's turns (None: searched by Chroma)."""
        if self.search_by == "chroma":
            return None
        key = (self._root, self._name(user_id))
        with _LOCK:  # one copy per folder and user, whichever TurnMemory asks
            return _TABLES.setdefault(key, _Table())

    def _loaded_table(self, user_id: str) -> _Table | None:
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

    def count(self, user_id: str) -> int:
        return int(self._call(self._collection(user_id).count))


def _is_connection_error(exc: BaseException) -> bool:
    """httpx's transport errors (refused, reset, timed out) without importing httpx here."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"TransportError", "ConnectError", "ConnectionError", "TimeoutException"})
