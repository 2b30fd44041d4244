"""Prometheus metrics of the server's turns (``GET /metrics``, docs/observability.md).

Fed twice per turn, each from where the number is exact: :meth:`TurnMetrics.turn` from the
finished turn's record (the one the response's ``tmo`` field carries: route, policy,
escalation, fall-back, budget, circuit breaker), and :meth:`TurnMetrics.node` /
:meth:`TurnMetrics.call` from the graph run (each node's seconds, each model call's tokens,
money and speed; :mod:`tmo_graph.observe.graph_events`).

Labels take values from small fixed sets only (route ``local`` / ``cloud_text`` /
``cloud_views``, the policy names, fault kinds, node names, the cloud endpoint's
``host:port``): never a user, a thread, a view name or text.

Several workers: with ``PROMETHEUS_MULTIPROC_DIR`` set (an empty folder, the same for every
worker of the machine, set before they start) prometheus-client's multiprocess mode keeps
each worker's values in files there, and any worker's ``/metrics`` adds them all up; without
it the values are this process's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from tmo_graph.errors import TmoGraphError
from tmo_graph.guards.faults import CIRCUIT_OPEN, NO_TIME_LEFT, endpoint_of, safe_url
from tmo_graph.sections import POLICIES
from tmo_graph.settings import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ROUTES = ("local", "cloud_text", "cloud_views")
# The circuit breaker's states as the gauge's values.
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}
# guards.faults' fault kinds (a cloud attempt's outcome) as label values; anything else: error.
_FAULT_KINDS = {
    "timeout": "timeout",
    "connection": "connection",
    "stream cut": "stream_cut",
    "rate limited": "rate_limited",
    "server error": "server_error",
    "http error": "http_error",
    "empty answer": "empty_answer",
    "budget reached": "budget",
}
FALLBACK_KINDS = (*_FAULT_KINDS.values(), "circuit_open", "no_time", "error")
BUDGET_REACHED_WARNING = "budget reached"  # answer_local's warning when no token fits
_NODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # graph node names (code, not content)
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
_TOKENS_PER_S = (1, 2, 5, 10, 15, 20, 30, 50, 75, 100, 200, 500, 1000)


def route_label(record: Mapping[str, Any]) -> str:
    """Where the answer came from: ``local``, ``cloud_text`` or ``cloud_views`` (the cloud
    with views, images or clips)."""
    if record.get("route") != "cloud":
        return "local"
    return "cloud_views" if record.get("views_sent") else "cloud_text"


def policy_label(record: Mapping[str, Any]) -> str:
    policy = record.get("policy")
    return policy if policy in POLICIES else "other"


def fallback_kind(record: Mapping[str, Any]) -> str | None:
    """Why the cloud answer was replaced by the device's, as one of :data:`FALLBACK_KINDS`
    (the raw reason may quote an endpoint's error text); None without a fall-back."""
    reason = record.get("fallback")
    if reason is None:
        return None
    reason = str(reason)
    if reason.startswith("budget reached"):
        return "budget"
    failed = [
        str(a.get("outcome"))
        for a in record.get("cloud_attempts") or []
        if a.get("outcome") != "ok"
    ]
    if failed:
        return _FAULT_KINDS.get(failed[-1], "error")
    if CIRCUIT_OPEN in reason:
        return "circuit_open"
    if NO_TIME_LEFT in reason:
        return "no_time"
    return "error"


def budget_reached(record: Mapping[str, Any]) -> bool:
    """Whether the answer is the budget's "cannot answer" (no model call was affordable)."""
    return BUDGET_REACHED_WARNING in (record.get("warnings") or [])


def endpoint_label(cloud: Any, settings: Settings) -> str:
    """The cloud endpoint as ``host:port`` (never its path, user or key); ``in-process`` for a
    model without a URL; the configured mode when the model is not known here."""
    if cloud is not None:
        base_url, _ = endpoint_of(cloud)
        netloc = urlsplit(base_url).netloc if "://" in base_url else ""
        return netloc or "in-process"
    if settings.cloud.base_url:
        return urlsplit(safe_url(settings.cloud.base_url)).netloc or "unknown"
    return settings.cloud.mode


def multiprocess_dir() -> Path | None:
    """``PROMETHEUS_MULTIPROC_DIR``, checked; None when unset (one process's metrics)."""
    value = os.environ.get(MULTIPROC_ENV)
    if not value:
        return None
    path = Path(value)
    if not path.is_dir():
        raise TmoGraphError(
            f"{MULTIPROC_ENV}={value!r} is not a folder",
            f"create it empty before the workers start (mkdir -p {value}), or unset "
            f"{MULTIPROC_ENV} to serve one process's metrics",
        )
    return path


class TurnMetrics:
    """The metrics of one app, in ``registry`` (default: a new one, so that several apps in
    one process keep their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.multiprocess = multiprocess_dir()
        if self.multiprocess is not None:
            from prometheus_client import values

            if values.ValueClass is values.MutexValue:  # chosen when prometheus_client loaded
                raise TmoGraphError(
                    f"{MULTIPROC_ENV} was set after prometheus-client was imported",
                    f"set {MULTIPROC_ENV} in the environment the server starts in",
                )
        self.registry = registry if registry is not None else CollectorRegistry()
        self.endpoint = "unknown"  # the cloud endpoint's label, set when the app starts
        r = self.registry
        self.turns = Counter(
            "tmo_turns", "Turns answered, by route and policy", ["route", "policy"], registry=r
        )
        self.escalations = Counter(
            "tmo_escalations",
            "Turns whose local answer was replaced by the cloud's",
            ["policy"],
            registry=r,
        )
        self.fallbacks = Counter(
            "tmo_fallbacks",
            "Turns whose cloud answer was replaced by the device's, by fault kind",
            ["kind"],
            registry=r,
        )
        self.budget_reached = Counter(
            "tmo_budget_reached_answers",
            "Turns answered 'budget used up' without a model call",
            registry=r,
        )
        self.turn_cost = Counter(
            "tmo_turn_cost_usd", "Money the turns spent (cloud bills and device energy)", registry=r
        )
        self.turn_seconds = Histogram(
            "tmo_turn_seconds",
            "Turn latency as the budgets count it, by route",
            ["route"],
            buckets=_SECONDS,
            registry=r,
        )
        self.breaker = Gauge(
            "tmo_cloud_breaker_state",
            "The cloud endpoint's circuit after the last cloud call: 0 closed, 1 half-open, "
            "2 open (several workers: the highest of the live ones)",
            ["endpoint"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.cloud_input_tokens = Counter(
            "tmo_cloud_input_tokens", "Input tokens of the cloud calls", registry=r
        )
        self.cloud_output_tokens = Counter(
            "tmo_cloud_output_tokens", "Output tokens of the cloud calls", registry=r
        )
        self.cloud_cost = Counter(
            "tmo_cloud_cost_usd", "Money the cloud calls were billed", registry=r
        )
        self.cloud_calls = Counter(
            "tmo_cloud_calls", "Cloud calls, by outcome", ["outcome"], registry=r
        )
        self.learning_requests = Counter(
            "tmo_learning_requests",
            "Requests made to learn, not to answer (shadow questions, judge grades), by "
            "purpose and outcome",
            ["purpose", "outcome"],
            registry=r,
        )
        self.node_seconds = Histogram(
            "tmo_node_seconds",
            "Seconds each graph node took, by node",
            ["node"],
            buckets=_SECONDS,
            registry=r,
        )
        self.local_speed = Histogram(
            "tmo_local_tokens_per_second",
            "The device model's answer tokens per second of its call (reading the prompt included)",
            buckets=_TOKENS_PER_S,
            registry=r,
        )

        self.local_decode = Gauge(
            "tmo_local_decode_tokens_per_second",
            "The device model's measured decode speed (tokens/s, prompt reading excluded) the "
            "last turn's budgets used",
            multiprocess_mode="livemostrecent",
            registry=r,
        )

    def turn(self, record: Mapping[str, Any]) -> None:
        """Count one finished turn from its record."""
        route, policy = route_label(record), policy_label(record)
        self.turns.labels(route=route, policy=policy).inc()
        if record.get("escalated"):
            self.escalations.labels(policy=policy).inc()
        kind = fallback_kind(record)
        if kind is not None:
            self.fallbacks.labels(kind=kind).inc()
        if budget_reached(record):
            self.budget_reached.inc()
        self.turn_cost.inc(max(float(record.get("cost_usd") or 0.0), 0.0))
        self.turn_seconds.labels(route=route).observe(float(record.get("latency_s") or 0.0))
        device = record.get("device") or {}
        if device.get("local_tokens_per_s"):
            self.local_decode.set(float(device["local_tokens_per_s"]))
        state = record.get("breaker")
        if state in BREAKER_STATES:
            self.breaker.labels(endpoint=self.endpoint).set(BREAKER_STATES[state])

    def node(self, name: str, seconds: float) -> None:
        """One run of a graph node."""
        if _NODE.match(name):
            self.node_seconds.labels(node=name).observe(max(seconds, 0.0))

    def call(self, call: Mapping[str, Any]) -> None:
        """One model call (a call record of the graph's state)."""
        if call.get("where") == "cloud":
            self.cloud_calls.labels(outcome="ok" if call.get("ok") else "failed").inc()
            self.cloud_input_tokens.inc(max(int(call.get("input_tokens") or 0), 0))
            self.cloud_output_tokens.inc(max(int(call.get("output_tokens") or 0), 0))
            self.cloud_cost.inc(max(float(call.get("cost_usd") or 0.0), 0.0))
            return
        tokens, seconds = int(call.get("output_tokens") or 0), float(call.get("latency_s") or 0)
        if tokens > 0 and seconds > 0:
            self.local_speed.observe(tokens / seconds)

    def learning_request(self, purpose: str, outcome: str) -> None:
        """One shadow or judge request (docs/learning.md)."""
        if purpose in ("shadow", "judge") and outcome in ("ok", "error"):
            self.learning_requests.labels(purpose=purpose, outcome=outcome).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type: every worker's values in multiprocess
        mode, else this registry's."""
        if self.multiprocess is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=str(self.multiprocess))
        return generate_latest(merged), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """The process is stopping: its live gauges leave the multiprocess sums."""
        if self.multiprocess is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), path=str(self.multiprocess))
