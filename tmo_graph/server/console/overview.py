"""The admin's overview: every user's cloud spend per UTC day against the daily cap, the route
mix per day, escalations, fall-backs, circuit-breaker openings, latency percentiles per route,
and the cloud money spent against what an always-cloud policy would have paid for the same
turns. Numbers come from the turn records and the audit log, nothing else."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from tmo_graph.guards.audit import AuditEntry
from tmo_graph.sections import ApiKey
from tmo_graph.server.console.dialogue import ROUTES
from tmo_graph.server.console.reading import ThreadData


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by the nearest-rank rule; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


@dataclass
class DaySpend:
    user: str
    day: str
    usd: float
    cap_usd: float | None  # the lowest of the user's keys' caps and spending.daily_cost_cap_usd


@dataclass
class Overview:
    spend: list[DaySpend] = field(default_factory=list)
    routes_by_day: dict[str, dict[str, int]] = field(default_factory=dict)
    turns: int = 0
    escalations: int = 0
    fallbacks: int = 0
    breaker_openings: int = 0
    latency: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    cloud_usd: float = 0.0  # the audit log's cost of the threads' cloud requests
    always_cloud_usd: float = 0.0


def user_cap(user: str, keys: Sequence[ApiKey], default: float | None) -> float | None:
    """The daily cap of ``user``: the lowest of its keys' and the settings' (None: no cap)."""
    caps = [k.daily_cost_cap_usd for k in keys if k.user == user and k.daily_cost_cap_usd]
    caps += [default] if default is not None else []
    return min(caps) if caps else None


def build_overview(
    threads: Sequence[ThreadData],
    audit: Sequence[AuditEntry],
    keys: Sequence[ApiKey],
    default_cap: float | None,
) -> Overview:
    """The overview of ``threads`` and the whole audit log ``audit``."""
    view = Overview()
    by_day: dict[tuple[str, str], float] = {}
    for entry in audit:
        day = entry["time"][:10]
        by_day[(entry["user_id"], day)] = (
            by_day.get((entry["user_id"], day), 0.0) + entry["cost_usd"]
        )
    view.spend = [
        DaySpend(user, day, usd, user_cap(user, keys, default_cap))
        for (user, day), usd in sorted(by_day.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]
    latencies: dict[str, list[float]] = {r: [] for r in ROUTES}
    breakers: list[tuple[str, str]] = []
    for thread in threads:
        view.cloud_usd += thread.cloud_usd
        for turn in thread.turns:
            record = turn.record
            view.turns += 1
            day = (turn.time or thread.updated)[:10]
            mix = view.routes_by_day.setdefault(day, dict.fromkeys(ROUTES, 0))
            mix[turn.route] += 1
            view.escalations += bool(record.get("escalated"))
            view.fallbacks += record.get("fallback") is not None
            latencies[turn.route].append(float(record.get("latency_s", 0.0)))
            view.always_cloud_usd += turn.always_cloud_usd
            if record.get("breaker"):
                breakers.append((turn.time or "", str(record["breaker"])))
    # An opening: a turn after which the breaker was open, the cloud turn before it not.
    before = "closed"
    for _, breaker in sorted(breakers):
        view.breaker_openings += breaker == "open" and before != "open"
        before = breaker
    view.routes_by_day = dict(sorted(view.routes_by_day.items()))
    view.latency = {r: (percentile(v, 50), percentile(v, 95)) for r, v in latencies.items()}
    return view
