"""The server's telemetry (``telemetry:``, docs/observability.md): ``GET /metrics``, the
turns' Prometheus metrics (:mod:`tmo_graph.observe.metrics`), for whom ``telemetry.metrics``
lets read them: ``local`` (the default) peers on 127.0.0.1 / ::1 only, ``key`` any valid API
key (Prometheus' ``authorization: {credentials: KEY}``), ``open`` anyone, ``off`` no one
(404); and the app's graph wired to feed them and the spans (:func:`with_telemetry`). They
carry no user, thread, text or view name."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tmo_graph.errors import TmoGraphError
from tmo_graph.observe.graph_events import GraphObserver
from tmo_graph.observe.metrics import TurnMetrics, endpoint_label
from tmo_graph.observe.traces import TRACER_NAME, tracer_provider
from tmo_graph.server.auth import authenticate
from tmo_graph.server.errors import ApiError
from tmo_graph.server.runtime import ServerState, server_state
from tmo_graph.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from tmo_graph.services import Services

router = APIRouter()


def check_metrics_access(settings: Settings, has_keys: bool) -> None:
    """Refuse at start a ``key`` setting on a server without keys (no one could read them)."""
    if settings.telemetry.metrics == "key" and not has_keys:
        raise TmoGraphError(
            "telemetry.metrics is 'key' but the server runs without API keys",
            "serve with keys (--keys FILE), or set telemetry.metrics: local",
        )


@contextmanager
def open_tracer(settings: Settings) -> Iterator[Tracer | None]:
    """The tracer ``telemetry.traces`` names (None: off), its spans flushed at exit."""
    provider = tracer_provider(settings.telemetry)
    if provider is None:
        yield None
        return
    try:
        yield provider.get_tracer(TRACER_NAME)
    finally:
        provider.shutdown()


def with_telemetry(
    graph: Any, settings: Settings, services: Services | None, tracer: Tracer | None
) -> tuple[Any, TurnMetrics | None]:
    """``graph`` with the callback that times its nodes for the metrics and the spans, and
    the metrics (None when ``telemetry.metrics`` is off); ``graph`` itself when neither is on."""
    metrics = None if settings.telemetry.metrics == "off" else TurnMetrics()
    if metrics is not None:
        cloud = services.cloud if services is not None else None
        metrics.endpoint = endpoint_label(cloud, settings)
    if metrics is None and tracer is None:
        return graph, None
    return graph.with_config(callbacks=[GraphObserver(metrics, tracer)]), metrics


def _loopback(request: Request) -> bool:
    """Whether the peer is on this machine (a test client or a unix socket has no address:
    it is local too)."""
    host = request.client.host if request.client else None
    try:
        return host is None or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


@router.get("/metrics", include_in_schema=False)
async def metrics(
    request: Request, state: Annotated[ServerState, Depends(server_state)]
) -> Response:
    access = state.settings.telemetry.metrics
    if access == "off" or state.metrics is None:
        raise ApiError(404, "metrics are off (telemetry.metrics)", "not_found_error")
    if access == "local" and not _loopback(request):
        raise ApiError(
            403,
            "metrics are served to 127.0.0.1 only (telemetry.metrics: local); set it to key "
            "and scrape with an API key",
            "permission_error",
            code="loopback_only",
        )
    if access == "key":
        await authenticate(request, state)
    body, content_type = state.metrics.exposition()
    return Response(body, media_type=content_type)
