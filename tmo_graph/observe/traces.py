"""OpenTelemetry spans: one per turn (``tmo.turn``), one per graph node inside it, made by
:class:`tmo_graph.observe.graph_events.GraphObserver` with the attributes built here.

The exporter is the settings' ``telemetry.traces``: ``off`` (the default: no spans),
``console`` (stdout) or ``otlp`` (OTLP over HTTP to ``telemetry.otlp_endpoint``, a collector).
Attributes are numbers, flags and names from fixed sets (route, policy, fault kinds, the kinds
of the views sent): never message text, view names, user or thread ids, image bytes or any
personal value (docs/observability.md).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tmo_graph.errors import TmoGraphError
from tmo_graph.observe.metrics import budget_reached, fallback_kind, policy_label, route_label
from tmo_graph.sections import TelemetrySettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

TRACER_NAME = "tmo_graph"
TURN_SPAN = "tmo.turn"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_ -]{0,63}$")  # a task category, not free text

Attributes = dict[str, str | bool | int | float | Sequence[str]]


def tracer_provider(telemetry: TelemetrySettings) -> TracerProvider | None:
    """The provider ``telemetry.traces`` asks for (None for ``off``); its owner shuts it down
    (that flushes the spans still batched)."""
    if telemetry.traces == "off":
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
    except ImportError:
        raise TmoGraphError(
            f"telemetry.traces is {telemetry.traces!r} but opentelemetry-sdk is not installed",
            'pip install "tmo-graph[serve]", or set telemetry.traces: off',
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": telemetry.service_name}))
    if telemetry.traces == "console":
        # sys.stdout as it is now (the exporter's default is the one at its import).
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
        return provider
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise TmoGraphError(
            "telemetry.traces is 'otlp' but opentelemetry-exporter-otlp-proto-http is not "
            "installed",
            'pip install "tmo-graph[serve]", or set telemetry.traces: console or off',
        ) from None
    # endpoint None: the exporter's own default (OTEL_EXPORTER_OTLP_*ENDPOINT, localhost).
    exporter = OTLPSpanExporter(endpoint=telemetry.otlp_endpoint)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def view_kind(candidate: Mapping[str, Any] | None) -> str:
    """What a sent view was, without its name: a device camera ``view``, an attached
    ``image`` or an ``audio`` clip."""
    if candidate is None:
        return "other"
    if candidate.get("audio"):
        return "audio"
    return "view" if candidate.get("kind") == "device" else "image"


def turn_attributes(record: Mapping[str, Any], kinds: Sequence[str]) -> Attributes:
    """A finished turn's span attributes; ``kinds``: the kind of each view sent, in order."""
    attrs: Attributes = {
        "tmo.turn": int(record.get("turn", 0)),
        "tmo.route": route_label(record),
        "tmo.policy": policy_label(record),
        "tmo.views_sent.count": len(record.get("views_sent") or []),
        "tmo.views_sent.kinds": list(kinds),
        "tmo.escalated": bool(record.get("escalated")),
        "tmo.budget_reached": budget_reached(record),
        "tmo.latency_s": float(record.get("latency_s") or 0.0),
        "tmo.cost_usd": float(record.get("cost_usd") or 0.0),
        "tmo.input_tokens": int(record.get("input_tokens") or 0),
        "tmo.output_tokens": int(record.get("output_tokens") or 0),
        "tmo.redactions": sum(int(n) for n in (record.get("redactions") or {}).values()),
    }
    task = record.get("task")
    if isinstance(task, str) and _NAME.match(task):
        attrs["tmo.task"] = task
    if record.get("confidence") is not None:
        attrs["tmo.confidence"] = float(record["confidence"])
    kind = fallback_kind(record)
    attrs["tmo.fallback"] = kind is not None
    if kind is not None:
        attrs["tmo.fallback.kind"] = kind
    if record.get("breaker"):
        attrs["tmo.breaker"] = str(record["breaker"])
    return attrs


def call_attributes(call: Mapping[str, Any]) -> Attributes:
    """A model call's attributes, on its node's span."""
    attrs: Attributes = {
        "tmo.call.where": "cloud" if call.get("where") == "cloud" else "local",
        "tmo.call.ok": bool(call.get("ok")),
        "tmo.call.latency_s": float(call.get("latency_s") or 0.0),
        "tmo.call.cost_usd": float(call.get("cost_usd") or 0.0),
        "tmo.call.input_tokens": int(call.get("input_tokens") or 0),
        "tmo.call.output_tokens": int(call.get("output_tokens") or 0),
    }
    if not call.get("ok"):
        failed = {"fallback": call.get("error") or "error", **call}
        attrs["tmo.call.fault"] = fallback_kind(failed) or "error"
    return attrs
