"""This process's searchable copy of each user's stored turns: a bit-signature index.

Embedded, Chroma is the durable store and this process searches its own copy of each user's
stored turns (:class:`TurnTable`: loaded from Chroma at the user's first search, then kept in
step by every ``add`` and ``forget_thread`` of :class:`tmo_graph.memory.turns.TurnMemory`).
A search compares the query with every stored turn, by sign bits first (one bit per
dimension), then with the full vectors of the :data:`CANDIDATES` closest; a search within one
dialogue, or of a user with fewer turns, compares full vectors only. Chroma's own (HNSW)
index lost the rare turn among many alike: with 100,000 stored turns it returned 3 of 20
planted facts in its top 5, where this search returns 19 (as many as comparing every vector
in float32) in 2.7 ms; a search within one dialogue (a metadata filter) took 59-100 ms there,
0.1 ms here (``bench/recall_scale.py``). The copy costs about 1 KB of memory per stored turn.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from tmo_graph.errors import TmoGraphError
from tmo_graph.state import Recalled

# Above this many stored turns, a search compares every vector's sign bits with the query's
# first and the full vectors of the closest CANDIDATES only.
CANDIDATES = 256
# One table per memory folder and collection in the process, whichever TurnMemory asks.
_TABLES: dict[tuple[str, str], TurnTable] = {}
_TABLES_LOCK = threading.Lock()
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def shared_table(root: str, collection: str) -> TurnTable:
    """The process's one table for the collection ``collection`` of the memory in ``root``
    (empty and not yet loaded the first time it is asked for)."""
    with _TABLES_LOCK:
        return _TABLES.setdefault((root, collection), TurnTable())


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


class TurnTable:
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
