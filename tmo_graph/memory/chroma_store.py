"""A LangGraph ``BaseStore`` over Chroma: the embedded default of the graph's memory.

Chroma is the project's vector store (embedded in a folder, or a ``chroma run`` server that
several workers share). Items live in one collection per first two namespace labels (for
the graph's memory: one per user, ``("tmo_memory", user)``), so a user's search never
scans another user's vectors; deeper labels and the value's scalar fields are metadata a
search filters on. One vector per item: the texts at the index's ``fields`` joined, embedded
with the store's own embeddings (Chroma's default embedding function downloads a model).
Scores are cosine similarities, as :class:`langgraph.store.memory.InMemoryStore` gives.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from langchain_core.embeddings import Embeddings
from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    validate_op_namespace,
)
from langgraph.store.base.embed import get_text_at_path, tokenize_path

from tmo_graph.errors import TmoGraphError
from tmo_graph.memory.clients import is_connection_error

_T = TypeVar("_T")
# Namespace labels kept as metadata, for filters on a prefix deeper than the collection's.
_MAX_LABELS = 8
_OPERATORS = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte"}


def _now() -> str:
    return datetime.now(UTC).isoformat()


# HNSW as bench/memory_backends.py measured it on 100,000 stored turns: Chroma's defaults
# (16 links, ef_construction 100, ef_search 100) gave recall@5 0.79 against an exact search,
# these 0.995 (docs/memory.md, "Measured"). A collection keeps the settings it was
# made with.
CHROMA_HNSW = {"space": "cosine", "max_neighbors": 32, "ef_construction": 200, "ef_search": 3200}


class ChromaStore(BaseStore):
    """Items in Chroma collections named ``<prefix>_<hash of the first two labels>``.

    ``client``: a chromadb client (:func:`tmo_graph.memory.clients.chroma_client` or
    ``chroma_server_client``); ``embeddings`` embed what is indexed and the search queries;
    ``fields``: the value's paths embedded (``"$"``: the whole value as JSON); ``where``:
    named in errors (the folder or the server).
    """

    supports_ttl = False

    def __init__(
        self,
        client: Any,
        embeddings: Embeddings,
        *,
        fields: Sequence[str] = ("text",),
        prefix: str = "tmo_store",
        where: str = "Chroma",
        server: bool = False,
    ) -> None:
        if not isinstance(embeddings, Embeddings):
            raise TmoGraphError(
                f"ChromaStore needs LangChain Embeddings, got {type(embeddings).__name__}",
                "pass e.g. tmo_graph.models.embeddings.local_embeddings(...)",
            )
        if not fields:
            raise TmoGraphError("ChromaStore got no index fields", 'pass e.g. fields=["text"]')
        self.client = client
        self.embeddings = embeddings
        self.fields = [(f, f if f == "$" else tokenize_path(f)) for f in fields]
        self.prefix = prefix
        self.where = where
        self.server = server
        self._collections: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    # BaseStore's two entry points; get/put/search/delete/list_namespaces all come here.

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        results: list[Result] = []
        puts: list[PutOp] = []  # consecutive puts go together: one embedding call, one upsert
        for op in ops:
            validate_op_namespace(op)
            if isinstance(op, PutOp):
                puts.append(op)
                results.append(None)
                continue
            self._put(puts)
            puts = []
            if isinstance(op, GetOp):
                results.append(self._get(op))
            elif isinstance(op, SearchOp):
                results.append(self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._list_namespaces(op))
            else:
                raise TmoGraphError(
                    f"ChromaStore got an unknown operation {type(op).__name__}",
                    "pass GetOp, SearchOp, PutOp or ListNamespacesOp",
                )
        self._put(puts)
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        # Chroma's client is synchronous: a worker thread keeps the event loop free.
        return await asyncio.to_thread(self.batch, list(ops))

    # Collections and records

    def _call(self, action: Callable[[], _T]) -> _T:
        """One Chroma request; a server that went away gets the clear error."""
        try:
            return action()
        except TmoGraphError:
            raise
        except Exception as exc:
            if not (self.server and is_connection_error(exc)):
                raise
            raise TmoGraphError(
                f"lost {self.where}: {type(exc).__name__}: {exc}",
                "check that `chroma run` is still up and reachable from this machine, "
                "then retry the turn (its thread is checkpointed)",
            ) from None

    def _name(self, head: tuple[str, ...]) -> str:
        # Hashed: any labels map to a valid, fixed-length collection name.
        return f"{self.prefix}_{hashlib.sha256(json.dumps(head).encode()).hexdigest()[:24]}"

    def _collection(self, head: tuple[str, ...], create: bool) -> Any | None:
        """The collection of the namespaces starting with ``head`` (None: none yet)."""
        with self._lock:
            if head in self._collections:
                return self._collections[head]
        if create:
            collection = self._call(
                lambda: self.client.get_or_create_collection(
                    name=self._name(head),
                    embedding_function=None,
                    metadata={"namespace": json.dumps(head)},
                    configuration={"hnsw": CHROMA_HNSW},
                )
            )
        else:
            try:
                collection = self._call(
                    lambda: self.client.get_collection(self._name(head), embedding_function=None)
                )
            except TmoGraphError:
                raise
            except Exception:  # NotFoundError and its kin across Chroma versions
                return None
        with self._lock:
            self._collections[head] = collection
        return collection

    def _heads(self, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
        """The collections' namespace heads under ``prefix`` (the namespace's first labels)."""
        if len(prefix) >= 2:
            return [prefix[:2]]
        heads = []
        for entry in self._call(self.client.list_collections):
            name = getattr(entry, "name", entry)
            if not str(name).startswith(f"{self.prefix}_"):
                continue
            metadata = getattr(entry, "metadata", None)
            if metadata is None:
                metadata = self._call(partial(_metadata, self.client, str(name)))
            head = tuple(json.loads((metadata or {}).get("namespace", "[]")))
            if head and head[: len(prefix)] == prefix:
                heads.append(head)
        return heads

    @staticmethod
    def _id(namespace: tuple[str, ...], key: str) -> str:
        return json.dumps([list(namespace), key])

    def _text(self, value: Mapping[str, Any], index: list[str] | None) -> str:
        """What an item is found by: the texts at the index fields, joined."""
        paths = self.fields if index is None else [(f, tokenize_path(f)) for f in index]
        texts: list[str] = []
        for _, path in paths:
            texts.extend(get_text_at_path(value, path))
        return "\n".join(t for t in texts if t)

    def _put(self, ops: list[PutOp]) -> None:
        """Store or delete items (the last op on one item wins), a collection at a time."""
        latest = {(op.namespace, op.key): op for op in ops}
        by_head: dict[tuple[str, ...], list[PutOp]] = {}
        for op in latest.values():
            by_head.setdefault(op.namespace[:2], []).append(op)
        for head, group in by_head.items():
            gone = [self._id(op.namespace, op.key) for op in group if op.value is None]
            if gone and (collection := self._collection(head, create=False)) is not None:
                self._call(partial(collection.delete, ids=gone))
            kept = [op for op in group if op.value is not None]
            if kept:
                self._upsert(head, kept)

    def _upsert(self, head: tuple[str, ...], ops: list[PutOp]) -> None:
        collection = self._collection(head, create=True)
        assert collection is not None  # created
        ids = [self._id(op.namespace, op.key) for op in ops]
        texts = [
            "" if op.index is False else self._text(op.value or {}, op.index or None) for op in ops
        ]
        embedded = iter(self.embeddings.embed_documents([t for t in texts if t]))
        # An item found by no text still needs a vector of the collection's size.
        blank: list[float] = []
        if not all(texts):
            blank = [1.0] + [0.0] * (self._dims(collection) - 1)
        vectors = [next(embedded) if text else blank for text in texts]
        old = self._call(partial(collection.get, ids=ids, include=["metadatas"]))
        created = {i: m["created_at"] for i, m in zip(old["ids"], old["metadatas"], strict=True)}
        now = _now()
        metadatas = []
        for record_id, op, text in zip(ids, ops, texts, strict=True):
            value = op.value or {}
            metadata: dict[str, Any] = {
                "key": op.key,
                "namespace": json.dumps(op.namespace),
                "depth": len(op.namespace),
                "value": json.dumps(value),
                "indexed": bool(text),
                "created_at": created.get(record_id, now),
                "updated_at": now,
            }
            for at, label in enumerate(op.namespace[:_MAX_LABELS]):
                metadata[f"ns{at}"] = label
            for name, field in value.items():  # scalar fields: what a filter can test
                if isinstance(field, str | int | float | bool):
                    metadata[f"v_{name}"] = field
            metadatas.append(metadata)
        self._call(
            partial(
                collection.upsert,
                ids=ids,
                documents=texts,
                embeddings=[list(map(float, v)) for v in vectors],
                metadatas=metadatas,
            )
        )

    def _dims(self, collection: Any) -> int:
        """The vector size of ``collection`` (of the embeddings when it is still empty)."""
        one = self._call(lambda: collection.get(limit=1, include=["embeddings"]))
        embeddings = one.get("embeddings")
        if embeddings is not None and len(embeddings):
            return len(embeddings[0])
        return len(self.embeddings.embed_query("dimension"))

    @staticmethod
    def _item(metadata: Mapping[str, Any], score: float | None = None) -> SearchItem:
        return SearchItem(
            namespace=tuple(json.loads(str(metadata["namespace"]))),
            key=str(metadata["key"]),
            value=json.loads(str(metadata["value"])),
            created_at=datetime.fromisoformat(str(metadata["created_at"])),
            updated_at=datetime.fromisoformat(str(metadata["updated_at"])),
            score=score,
        )

    def _get(self, op: GetOp) -> Item | None:
        collection = self._collection(op.namespace[:2], create=False)
        if collection is None:
            return None
        found = self._call(
            lambda: collection.get(ids=[self._id(op.namespace, op.key)], include=["metadatas"])
        )
        if not found["ids"]:
            return None
        item = self._item(found["metadatas"][0])
        return Item(
            value=item.value,
            key=item.key,
            namespace=item.namespace,
            created_at=item.created_at,
            updated_at=item.updated_at,
        )

    @staticmethod
    def _where(op: SearchOp, with_query: bool) -> dict[str, Any] | None:
        """Chroma's metadata filter for the namespace prefix beyond the collection's two
        labels and the value filter (scalar fields; $eq $ne $gt $gte $lt $lte)."""
        clauses: list[dict[str, Any]] = [
            {f"ns{at}": label}
            for at, label in enumerate(op.namespace_prefix)
            if at >= 2 and at < _MAX_LABELS
        ]
        if with_query:
            clauses.append({"indexed": True})
        for name, wanted in (op.filter or {}).items():
            if isinstance(wanted, dict):
                unknown = set(wanted) - _OPERATORS
                if unknown:
                    raise TmoGraphError(
                        f"ChromaStore cannot filter with {sorted(unknown)}",
                        f"use {sorted(_OPERATORS)} on a scalar field of the value",
                    )
                clauses.extend({f"v_{name}": {o: v}} for o, v in wanted.items())
            else:
                clauses.append({f"v_{name}": wanted})
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}

    def _search(self, op: SearchOp) -> list[SearchItem]:
        if op.limit <= 0 or op.offset < 0:
            return []
        prefix = op.namespace_prefix
        where = self._where(op, with_query=bool(op.query))
        wanted = op.offset + op.limit
        found: list[SearchItem] = []
        vector = self.embeddings.embed_query(op.query) if op.query else None
        heads = self._heads(tuple(prefix))
        if vector is None and len(prefix) >= 2:
            # One collection, filtered by its own query: Chroma pages it. Fetching offset +
            # limit rows to slice here fails past about 32,000 (SQLite's variable limit).
            collection = self._collection(heads[0], create=False)
            if collection is None:
                return []
            page = self._call(
                partial(
                    collection.get,
                    where=where,
                    limit=op.limit,
                    offset=op.offset,
                    include=["metadatas"],
                )
            )
            return [self._item(m) for m in page["metadatas"]]
        for head in heads:
            collection = self._collection(head, create=False)
            if collection is None:
                continue
            if vector is None:
                page = self._call(
                    partial(collection.get, where=where, limit=wanted, include=["metadatas"])
                )
                found.extend(self._item(m) for m in page["metadatas"])
                continue
            # Without the "indexed" filter first: a filter that every stored turn passes
            # makes Chroma list them all before the HNSW search (48 ms against 5.6 ms at
            # 10,000 turns, 346 ms at 100,000). Only when an item stored without an index
            # took a place among the best is the search made again with it.
            hits = self._query(collection, vector, wanted, self._where(op, with_query=False))
            if len(hits) == wanted and not all(m.get("indexed") for m, _ in hits):
                hits = self._query(collection, vector, wanted, where)
            found.extend(self._item(m, 1.0 - d) for m, d in hits if m.get("indexed"))
        if vector is not None:
            found.sort(key=lambda item: item.score or 0.0, reverse=True)
        # A prefix shorter than two labels may end inside a collection's head.
        found = [i for i in found if i.namespace[: len(prefix)] == tuple(prefix)]
        return found[op.offset : wanted]

    def _query(
        self, collection: Any, vector: list[float], n: int, where: dict[str, Any] | None
    ) -> list[tuple[Mapping[str, Any], float]]:
        """The ``n`` nearest items' metadata and cosine distances."""
        result = self._call(
            partial(
                collection.query,
                query_embeddings=[vector],
                n_results=n,
                where=where,
                include=["metadatas", "distances"],
            )
        )
        metadatas = (result.get("metadatas") or [[]])[0]
        distances = (result.get("distances") or [[]])[0]
        return [(m, float(d)) for m, d in zip(metadatas, distances, strict=True)]

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        namespaces: set[tuple[str, ...]] = set()
        for head in self._heads(()):
            collection = self._collection(head, create=False)
            if collection is None:
                continue
            page = self._call(partial(collection.get, include=["metadatas"]))
            namespaces.update(tuple(json.loads(str(m["namespace"]))) for m in page["metadatas"])
        kept = [ns for ns in namespaces if all(_matches(c, ns) for c in op.match_conditions or ())]
        if op.max_depth is not None:
            kept = list({ns[: op.max_depth] for ns in kept})
        return sorted(kept)[op.offset : op.offset + op.limit]


def _metadata(client: Any, name: str) -> Any:
    return client.get_collection(name).metadata


def _matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    """A namespace against a prefix or suffix pattern ("*" matches any label)."""
    path = tuple(condition.path)
    if not path:
        return True
    if len(path) > len(namespace):
        return False
    part = namespace[: len(path)] if condition.match_type == "prefix" else namespace[-len(path) :]
    return all(p in ("*", label) for p, label in zip(path, part, strict=True))
