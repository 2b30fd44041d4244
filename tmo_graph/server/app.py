"""The app: :func:`create_app` builds it (its typed state, the routes, the error handlers) and
opens the graph and the thread store when it starts; :func:`create_platform_app` is the same
app for mounting on a LangGraph server (``langgraph.json`` ``http.app``). The API it serves is
described in :mod:`tmo_graph.server`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from tmo_graph.errors import TmoGraphError
from tmo_graph.server.console import router as console_router
from tmo_graph.server.errors import add_error_handlers
from tmo_graph.server.feedback import router as feedback_router
from tmo_graph.server.keys import KeyRing
from tmo_graph.server.limits import RateLimiter
from tmo_graph.server.media import router as media_router
from tmo_graph.server.metrics import check_metrics_access, open_tracer, with_telemetry
from tmo_graph.server.metrics import router as metrics_router
from tmo_graph.server.policy_watch import PolicyWatch
from tmo_graph.server.routes import router
from tmo_graph.server.runtime import KeyCheck, ServerState
from tmo_graph.server.turns import TurnRunner
from tmo_graph.settings import Settings, load_settings
from tmo_graph.threads.chains import MemoryChains, ThreadChains
from tmo_graph.threads.labels import MemoryLabels, TurnLabels
from tmo_graph.threads.owners import MemoryOwners, ThreadOwners

if TYPE_CHECKING:
    from langgraph.store.base import BaseStore
    from opentelemetry.trace import Tracer

    from tmo_graph.learning.shadow import ShadowJudge
    from tmo_graph.observe.metrics import TurnMetrics
    from tmo_graph.services import ServiceProvider, Services

# How the app gets the LangGraph server's own store when it starts (langgraph_api's get_store).
StoreGetter = Callable[[], Awaitable["BaseStore"]]


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
    labels: TurnLabels | None = None,
    provider: ServiceProvider | None = None,
    platform: bool = False,
    platform_store: StoreGetter | None = None,
    tracer: Tracer | None = None,
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
    dialogue carry the memory of the turns before the fork. The turns' labels (``POST
    /v1/feedback``, and the judges' scores when ``learning.shadow_rate`` > 0 and the services
    are known: docs/learning.md) go to ``labels``, by default the thread store's table, like
    the owners.

    ``provider``: the services of another graph in this process (LangGraph's, see
    :func:`create_platform_app`); the app's graph then runs on the very same services, loaded
    once. ``platform=True``: the app is mounted on a LangGraph server (its media route also
    serves the platform's threads; CORS and errors of other routes are left to the platform).
    ``platform_store``: gives the platform's store when the app starts; the app's turns then
    remember and recall in it, as the platform's runs do (with ``provider`` only).

    ``GET /metrics`` and the spans per turn and node follow ``telemetry:``
    (:mod:`tmo_graph.server.metrics`); ``tracer``: the spans' tracer instead of the one
    ``telemetry.traces`` names (tests pass one on an in-memory exporter).
    """
    if max_concurrent_turns < 1:
        raise TmoGraphError("max_concurrent_turns must be >= 1", "use e.g. 32")
    cfg = settings or (services.settings if services else None) or load_settings()
    if graph is not None and provider is not None:
        raise TmoGraphError(
            "both a graph and a service provider were given",
            "pass the graph (built on its services), or the provider to build one on",
        )
    key_check = _key_check(cfg, keys, no_auth)
    check_metrics_access(cfg, key_check is not None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            compiled, thread_owners, thread_chains = graph, owners, chains
            turn_labels, ran = labels, services
            if compiled is None:
                compiled, opened, ran = await stack.enter_async_context(
                    _default_graph(cfg, services, db, provider, platform_store)
                )
                thread_owners = thread_owners or opened.owners
                thread_chains = thread_chains or opened.chains
                turn_labels = turn_labels or opened.labels
            spans = tracer if tracer is not None else stack.enter_context(open_tracer(cfg))
            compiled, metrics = with_telemetry(compiled, cfg, ran, spans)
            if metrics is not None:
                stack.callback(metrics.close)
            memory = ran.memory if ran is not None else None
            policy_file = cfg.routing.policy_file
            watch = PolicyWatch(Path(policy_file) if policy_file else None)
            if watch.path is not None:
                task = asyncio.get_running_loop().create_task(watch.run())
                stack.callback(task.cancel)
            turn_labels = turn_labels or MemoryLabels()
            judge = _judge(ran, turn_labels, metrics)
            runner = TurnRunner(compiled, max_concurrent_turns, thread_wait_s, memory, judge)
            app.state.server = ServerState(
                settings=cfg,
                keys=key_check,
                owners=thread_owners or MemoryOwners(),
                runner=runner,
                local=ran.local if ran is not None else None,
                chains=thread_chains or MemoryChains(),
                **({"media_dir": ran.media_dir} if ran is not None else {}),
                platform_threads=platform,
                metrics=metrics,
                labels=turn_labels,
                audit=ran.audit if ran is not None else None,
                policy=watch,
            )
            yield
            await runner.drain()

    app = FastAPI(title="tmo-graph", lifespan=lifespan)
    if cfg.server.cors_origins and not platform:
        from fastapi.middleware.cors import CORSMiddleware

        named = [cfg.server.thread_header.lower()] if cfg.server.thread_header else []

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cfg.server.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=[
                "authorization",
                "x-api-key",
                "content-type",
                "x-tmo-thread-id",
                "x-tmo-user",
                "x-tmo-chore",
                *named,
            ],
            expose_headers=["x-tmo-thread-id", "retry-after"],
        )
    add_error_handlers(app)
    if platform:
        # The app becomes the LangGraph server's app: its handlers would answer the
        # platform's own 404s and 500s in OpenAI's shape. The routes here raise ApiError.
        app.exception_handlers.pop(StarletteHTTPException, None)
        app.exception_handlers.pop(Exception, None)
    app.include_router(router)
    app.include_router(media_router)
    app.include_router(feedback_router)
    app.include_router(metrics_router)
    app.include_router(console_router)  # /console: pages on the same keys
    return app


def create_platform_app(
    provider: ServiceProvider, settings: Settings, store: StoreGetter | None = None
) -> FastAPI:
    """The OpenAI-compatible routes for ``langgraph.json`` ``http.app``: one process serves
    LangGraph's API (``/threads``, ``/runs``, Studio) and ``/v1/chat/completions``.

    The app's graph is built on ``provider``, the platform graph's own (``tmo_graph.studio``),
    so the models load once, when the server starts. Its turns keep their threads in the
    app's own thread store (the SQLite file, or PostgreSQL at ``threads.url``), as
    ``tmo-graph serve`` does: the platform's checkpointer belongs to the platform's runs. Their
    memory is the platform's store when ``store`` gives it (``graphs/openai_app.py`` passes
    LangGraph's ``get_store``), so a user's turns on either surface are recalled on both. The
    API keys are the settings' (``server.keys_file``), the same the platform's auth checks
    (``graphs/auth.py``); without any, the routes answer only on 127.0.0.1, as
    ``tmo-graph serve --no-auth`` does.
    """
    keyless = not settings.server.keys and settings.server.keys_file is None
    return create_app(
        settings=settings, provider=provider, no_auth=keyless, platform=True, platform_store=store
    )


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


def _judge(
    services: Services | None, labels: TurnLabels, metrics: TurnMetrics | None
) -> ShadowJudge | None:
    """The shadow judge when learning.shadow_rate > 0 and a cloud model can answer and grade
    (docs/learning.md); None otherwise: no turn is judged."""
    if services is None or services.settings.learning.shadow_rate <= 0 or services.cloud is None:
        return None
    from tmo_graph.learning.shadow import ShadowJudge

    hook = metrics.learning_request if metrics is not None else None
    return ShadowJudge(services, labels, on_request=hook)


@dataclass(frozen=True)
class _Tables:
    """The tables the app keeps beside the threads."""

    owners: ThreadOwners
    chains: ThreadChains
    labels: TurnLabels


@asynccontextmanager
async def _default_graph(
    settings: Settings,
    services: Services | None,
    db: Path | None,
    provider: ServiceProvider | None = None,
    platform_store: StoreGetter | None = None,
) -> AsyncIterator[tuple[Any, _Tables, Services]]:
    """The real graph on an async checkpointer (a sync one cannot serve astream), the thread
    owners, dialogue chains and turn labels kept in the same store, and the services it runs
    on (their local model answers chores); on ``provider``'s services when given, with
    ``platform_store``'s store as their memory."""
    from tmo_graph.graph import build_graph, make_builder
    from tmo_graph.services import build_services
    from tmo_graph.threads.store import (
        open_async_chains,
        open_async_checkpointer,
        open_async_labels,
        open_async_owners,
    )

    # The thread store first: an unreachable database fails before the models load.
    async with (
        open_async_checkpointer(settings, db) as saver,
        open_async_owners(settings, db) as owners,
        open_async_chains(settings, db) as chains,
        open_async_labels(settings, db) as labels,
    ):
        tables = _Tables(owners, chains, labels)
        if provider is not None:
            # The provider's graph and this one share its services, and its per-run models.
            services = await asyncio.to_thread(provider.get)
            store = await platform_store() if platform_store is not None else None
            if store is not None:
                services = services.with_store(store)
            compiled = make_builder(provider).compile(
                checkpointer=saver, store=store, name="tmo-graph"
            )
            yield compiled, tables, services
            return
        if services is None:
            services = await asyncio.to_thread(build_services, settings)
        yield build_graph(services, checkpointer=saver), tables, services
