"""What a running app holds, typed: one :class:`ServerState` on ``app.state.server``, read by
the routes through the :func:`server_state` dependency."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Request

from tmo_graph.guards.audit import AuditLog
from tmo_graph.models.base import LocalBackend
from tmo_graph.server.errors import ApiError
from tmo_graph.server.keys import KeyRing
from tmo_graph.server.limits import RateLimiter
from tmo_graph.server.policy_watch import PolicyWatch
from tmo_graph.server.turns import TurnRunner
from tmo_graph.settings import Settings, default_cache_dir
from tmo_graph.threads.chains import MemoryChains, ThreadChains
from tmo_graph.threads.labels import MemoryLabels, TurnLabels
from tmo_graph.threads.owners import ThreadOwners

if TYPE_CHECKING:
    from tmo_graph.observe.metrics import TurnMetrics


@dataclass(frozen=True)
class KeyCheck:
    """The API keys and the rate limiter that counts their requests (always both)."""

    ring: KeyRing
    limiter: RateLimiter


@dataclass(frozen=True)
class ServerState:
    """The app's state once it has started (the graph is built then)."""

    settings: Settings
    keys: KeyCheck | None  # None: no API keys (``no_auth``, 127.0.0.1 only)
    owners: ThreadOwners
    runner: TurnRunner
    local: LocalBackend | None = None  # answers front-end chores (None: chores get 503)
    # Each thread's dialogue by content, to find the thread of a request that names none.
    chains: ThreadChains = field(default_factory=MemoryChains)
    # Where the graph stores the turns' images and clips (the services' media_dir).
    media_dir: Path = field(default_factory=lambda: default_cache_dir() / "media")
    # Mounted on a LangGraph server: the media route also serves the platform's threads.
    platform_threads: bool = False
    # The turns' Prometheus metrics (None: telemetry.metrics is off).
    metrics: TurnMetrics | None = None
    # The turns' labels (feedback, judges' scores: docs/learning.md), beside the threads.
    labels: TurnLabels = field(default_factory=MemoryLabels)
    # The audit log of the graph's services, which also gets a line per feedback.
    audit: AuditLog | None = None
    # The routing.policy_file the turns load (reloaded when it changes), for /health.
    policy: PolicyWatch | None = None


async def server_state(request: Request) -> ServerState:
    """The app's state (a dependency); 503 while the app has not started."""
    state = getattr(request.app.state, "server", None)
    if not isinstance(state, ServerState):
        raise ApiError(
            503,
            "the server is still starting; retry in a moment",
            "server_error",
            code="starting",
            headers={"retry-after": "1"},
        )
    return state
