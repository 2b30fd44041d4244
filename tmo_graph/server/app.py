"""The app: :func:`create_app` builds it (its typed state, the routes, the error handlers) and
opens the graph and the thread store when it starts. The API it serves is described in
:mod:`tmo_graph.server`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from tmo_graph.errors import TmoGraphError
from tmo_graph.models.base import LocalBackend
from tmo_graph.server.errors import add_error_handlers
from tmo_graph.server.keys import KeyRing
from tmo_graph.server.limits import RateLimiter
from tmo_graph.server.routes import router
from tmo_graph.server.runtime import KeyCheck, ServerState
from tmo_graph.server.turns import TurnRunner
from tmo_graph.settings import Settings, load_settings
from tmo_graph.threads.chains import MemoryChains, ThreadChains
from tmo_graph.threads.owners import MemoryOwners, ThreadOwners

if TYPE_CHECKING:
    from langgraph.store.base import BaseStore

    from tmo_graph.services import Services


def create_app(
    graph: Any = None,
    settings: Settings | None = None,
    *,
    services: Services | None = None,
    db: Path | None = None,
    max_concurrent_turns: int = 32,
    thread_wait_s: float = 30.0,
    keys: KeyRing | None = None,
    no_auth: bool = False,
    owners: ThreadOwners | None = None,
    chains: ThreadChains | None = None,
) -> FastAPI:
    """The FastAPI app.

    ``graph``: a compiled graph with an async-capable checkpointer (tests pass one built on
    fakes with ``InMemorySaver``). Without it, the app builds one when it starts: the given
    ``services`` (else real ones from ``settings``) and the async checkpointer the settings
    name: PostgreSQL at ``threads.url`` (several workers share it), else a SQLite file
    ``db`` (default ``<cache>/threads.sqlite``, the file ``run`` and ``chat`` use).
    ``services.local`` (or the built graph's local model) answers front-end chores
    (:mod:`tmo_graph.server.chores`). ``settings`` give the defaults of each turn's Context
    (``routing:``) and the server's keys and limits (``server:``).

    Every ``/v1`` request needs an API key (``Authorization: Bearer``): ``keys``, else the
    ones ``server.keys`` / ``server.keys_file`` name. ``no_auth=True`` drops keys for a
    server on 127.0.0.1 only (the CLI refuses it on any other address; the app refuses peers
    with another address): the request's ``user`` field is then trusted. Thread owners are
    kept in ``owners`` and the content chains of their dialogues in ``chains``; default: the
    thread store's tables when the app opens the store, else this process's memory (a
    passed ``graph``). With a passed ``graph``, ``services`` (its services) lets a forked
    dialogue carry the memory of the turns before the fork.
    """
    if max_concurrent_turns < 1:
        raise TmoGraphError("max_concurrent_turns must be >= 1", "use e.g. 32")
    cfg = settings or (services.settings if services else None) or load_settings()
    key_check = _key_check(cfg, keys, no_auth)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            compiled, thread_owners, thread_chains = graph, owners, chains
            local = services.local if services is not None else None
            memory = services.store if services is not None else None
            if compiled is None:
                compiled, opened, opened_chains, local, memory = await stack.enter_async_context(
                    _default_graph(cfg, services, db)
                )
                thread_owners = thread_owners or opened
                thread_chains = thread_chains or opened_chains
            runner = TurnRunner(compiled, max_concurrent_turns, thread_wait_s, memory)
            app.state.server = ServerState(
                settings=cfg,
                keys=key_check,
                owners=thread_owners or MemoryOwners(),
                runner=runner,
                local=local,
                chains=thread_chains or MemoryChains(),
            )
            yield
            await runner.drain()

    app = FastAPI(title="tmo-graph", lifespan=lifespan)
    if cfg.server.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        named = [cfg.server.thread_header.lower()] if cfg.server.thread_header else []

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cfg.server.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=[
                "authorization",
                "content-type",
                "x-tmo-thread-id",
                "x-tmo-user",
                "x-tmo-chore",
                *named,
            ],
            expose_headers=["x-tmo-thread-id", "retry-after"],
        )
    add_error_handlers(app)
    app.include_router(router)
    return app


def _key_check(settings: Settings, keys: KeyRing | None, no_auth: bool) -> KeyCheck | None:
    """The keys the app checks (``keys``, else the settings' keys), or None for ``no_auth``."""
    if no_auth:
        if keys is not None:
            raise TmoGraphError(
                "both API keys and no_auth were given", "pass keys, or no_auth=True, not both"
            )
        return None
    if keys is None and not settings.server.keys and settings.server.keys_file is None:
        raise TmoGraphError(
            "the server has no API keys, so it would refuse every request",
            "make one with `tmo-graph keys add --user NAME --file keys.yaml` and pass "
            "--keys keys.yaml (or set server.keys_file / TMO_SERVER__KEYS); on 127.0.0.1 "
            "only, --no-auth serves without keys",
        )
    ring = keys if keys is not None else KeyRing(settings.server.keys, settings.server.keys_file)
    return KeyCheck(ring, RateLimiter())


@asynccontextmanager
async def _default_graph(
    settings: Settings, services: Services | None, db: Path | None
) -> AsyncIterator[tuple[Any, ThreadOwners, ThreadChains, LocalBackend, BaseStore | None]]:
    """The real graph on an async checkpointer (a sync one cannot serve astream), the thread
    owners and dialogue chains kept in the same store, the local model (it answers chores)
    and the graph's memory."""
    from tmo_graph.graph import build_graph
    from tmo_graph.services import build_services
    from tmo_graph.threads.store import (
        open_async_chains,
        open_async_checkpointer,
        open_async_owners,
    )

    # The thread store first: an unreachable database fails before the models load.
    async with (
        open_async_checkpointer(settings, db) as saver,
        open_async_owners(settings, db) as owners,
        open_async_chains(settings, db) as chains,
    ):
        if services is None:
            services = await asyncio.to_thread(build_services, settings)
        yield (
            build_graph(services, checkpointer=saver),
            owners,
            chains,
            services.local,
            services.store,
        )
