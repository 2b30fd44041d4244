"""Where dialogue threads are checkpointed: a SQLite file, or PostgreSQL for several workers.

Each turn's state is saved under its thread id, so any process holding a checkpointer to
the same store can continue a thread another one started (``threads.url`` in the settings).
The server keeps each thread's owner (:func:`open_async_owners`) and the content chains of
its dialogues (:func:`open_async_chains`) in the same store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    ExitStack,
    asynccontextmanager,
    contextmanager,
)
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from langgraph.checkpoint.base import BaseCheckpointSaver

from tmo_graph.errors import TmoGraphError
from tmo_graph.settings import Settings, default_cache_dir
from tmo_graph.threads.chains import PostgresChains, SqliteChains, ThreadChains
from tmo_graph.threads.labels import PostgresLabels, SqliteLabels, TurnLabels
from tmo_graph.threads.owners import PostgresOwners, SqliteOwners, ThreadOwners

# Seconds a worker waits for PostgreSQL before saying it is unreachable (libpq waits forever).
CONNECT_TIMEOUT_S = 10


def redact(url: str) -> str:
    """``url`` without its password, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _store(settings: Settings, db_path: Path | None) -> tuple[str | None, Path]:
    """(the PostgreSQL URL, or None) and the SQLite file otherwise, checked."""
    if not isinstance(settings, Settings):
        raise TmoGraphError(
            f"a checkpointer needs Settings, got {type(settings).__name__}",
            "pass tmo_graph.settings.load_settings(...)",
        )
    url = settings.threads.url
    if url is not None and db_path is not None:  # two stores named: say so instead of guessing
        raise TmoGraphError(
            f"both a SQLite file ({db_path}) and threads.url ({redact(url)}) were given",
            "drop --db to keep threads in PostgreSQL, or unset threads.url / TMO_THREADS__URL",
        )
    if url is not None and urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise TmoGraphError(
            f"threads.url {redact(url)!r} is not a PostgreSQL URL",
            "write postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE, or null for a SQLite file",
        )
    db = Path(db_path) if db_path is not None else default_cache_dir() / "threads.sqlite"
    if url is None:
        if db.is_dir():
            raise TmoGraphError(
                f"thread database {db} is a folder", "pass a file path, e.g. t.sqlite"
            )
        db.parent.mkdir(parents=True, exist_ok=True)
    return url, db


@contextmanager
def open_checkpointer(
    settings: Settings, db_path: Path | None = None
) -> Iterator[BaseCheckpointSaver[Any]]:
    """The checkpointer the settings name: PostgreSQL at ``threads.url``, else a SQLite file
    (``db_path``, default ``<cache>/threads.sqlite``). Closed when the block ends."""
    url, db = _store(settings, db_path)
    if url is None:
        from langgraph.checkpoint.sqlite import SqliteSaver

        with SqliteSaver.from_conn_string(str(db)) as saver:
            yield saver
        return
    with _postgres(url) as saver:
        yield saver


@asynccontextmanager
async def open_async_checkpointer(
    settings: Settings, db_path: Path | None = None
) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """:func:`open_checkpointer` for async graphs (the server): the same stores, async."""
    url, db = await asyncio.to_thread(_store, settings, db_path)  # mkdir: off the event loop
    if url is None:
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async with AsyncSqliteSaver.from_conn_string(str(db)) as saver:
            yield saver
        return
    psycopg = _psycopg()
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    async with AsyncExitStack() as stack:
        try:
            conninfo = _with_connect_timeout(url, psycopg)
            pg_saver = await stack.enter_async_context(
                AsyncPostgresSaver.from_conn_string(conninfo)
            )
        except psycopg.Error as exc:
            raise _unreachable(url, exc) from None
        try:
            await pg_saver.setup()
        except psycopg.Error as exc:
            raise _refused(url, exc) from None
        yield pg_saver


class _Table(Protocol):
    """A table the server keeps beside the threads (owners, chains, labels)."""

    async def aclose(self) -> None: ...


_T = TypeVar("_T", bound=_Table)


@asynccontextmanager
async def _open_table(
    settings: Settings,
    db_path: Path | None,
    sqlite: Callable[[Path], _T],
    postgres: Callable[[str], Awaitable[_T]],
) -> AsyncIterator[_T]:
    """A table in the same store as :func:`open_async_checkpointer`'s threads: the SQLite
    file, or the PostgreSQL database the workers share."""
    url, db = await asyncio.to_thread(_store, settings, db_path)
    if url is None:
        table = await asyncio.to_thread(sqlite, db)  # connects and creates: off the loop
    else:
        psycopg = _psycopg()
        try:
            table = await postgres(_with_connect_timeout(url, psycopg))
        except psycopg.OperationalError as exc:
            raise _unreachable(url, exc) from None
        except psycopg.Error as exc:
            raise _refused(url, exc) from None
    try:
        yield table
    finally:
        await table.aclose()


def open_async_owners(
    settings: Settings, db_path: Path | None = None
) -> AbstractAsyncContextManager[ThreadOwners]:
    """Who owns each thread, beside the threads (a table next to the checkpoints), so owners
    outlive the process and are shared by the workers that share the threads."""
    return _open_table(settings, db_path, SqliteOwners, PostgresOwners.connect)


def open_async_chains(
    settings: Settings, db_path: Path | None = None
) -> AbstractAsyncContextManager[ThreadChains]:
    """The content chains of the threads' dialogues (:mod:`tmo_graph.threads.chains`),
    beside the threads."""
    return _open_table(settings, db_path, SqliteChains, PostgresChains.connect)


def open_async_labels(
    settings: Settings, db_path: Path | None = None
) -> AbstractAsyncContextManager[TurnLabels]:
    """The labels of past turns (:mod:`tmo_graph.threads.labels`: feedback and judges'
    scores), beside the threads."""
    return _open_table(settings, db_path, SqliteLabels, PostgresLabels.connect)


@contextmanager
def _postgres(url: str) -> Iterator[BaseCheckpointSaver[Any]]:
    psycopg = _psycopg()
    from langgraph.checkpoint.postgres import PostgresSaver

    conninfo = _with_connect_timeout(url, psycopg)
    with ExitStack() as stack:
        try:
            saver = stack.enter_context(PostgresSaver.from_conn_string(conninfo))
        except psycopg.Error as exc:
            raise _unreachable(url, exc) from None
        try:
            saver.setup()  # creates or migrates the tables; idempotent, so every worker runs it
        except psycopg.Error as exc:
            raise _refused(url, exc) from None
        yield saver


def _psycopg() -> Any:
    try:
        import langgraph.checkpoint.postgres  # noqa: F401
        import psycopg
    except ImportError:
        raise TmoGraphError(
            "threads.url names PostgreSQL but its checkpointer is not installed",
            "pip install 'tmo-graph[scale]'",
        ) from None
    return psycopg


def _unreachable(url: str, exc: BaseException) -> TmoGraphError:
    return TmoGraphError(
        f"cannot connect to PostgreSQL at {redact(url)} (threads.url): {_first_line(exc)}",
        "start the server and create the database (`createdb NAME`), check host, port, "
        "user and password in threads.url / TMO_THREADS__URL, or set it to null for SQLite",
    )


def _refused(url: str, exc: BaseException) -> TmoGraphError:
    return TmoGraphError(
        f"PostgreSQL at {redact(url)} refused the checkpoint tables: {_first_line(exc)}",
        "give the user of threads.url CREATE rights on the database "
        "(GRANT CREATE ON SCHEMA public TO that_user)",
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _with_connect_timeout(url: str, psycopg: Any) -> str:
    """The URL as a libpq conninfo with a connect timeout, unless the URL sets its own."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise TmoGraphError(
            f"threads.url {redact(url)!r} does not parse: {exc}",
            "write postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE",
        ) from None
    params.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    return str(psycopg.conninfo.make_conninfo("", **params))
