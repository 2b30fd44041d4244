"""The graph's runs as metrics and spans: a LangChain callback handler on the compiled graph
(``graph.with_config(callbacks=[GraphObserver(...)])``).

Why a callback handler: LangGraph starts and ends a run for every node task (its name, a
``graph:step:N`` tag and ``langgraph_node`` in its metadata), in the thread the node runs in,
so the node's seconds are measured where it runs, and its output (the call records, the turn
record of ``account``) is at hand, whatever surface streams the turn and in which modes.
A ``debug`` / ``tasks`` stream would have to be asked for by each surface and timed where
it is read, after the event loop gets to it.

The run without a parent is the turn: its span (``tmo.turn``) gets the turn record's
attributes when ``account`` ends; each node's span is its child.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from tmo_graph.observe.metrics import TurnMetrics
from tmo_graph.observe.traces import TURN_SPAN, call_attributes, turn_attributes, view_kind

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

ACCOUNT_NODE = "account"  # the node that writes the turn record


@dataclass
class _Run:
    node: str | None  # None: the turn (the graph's run)
    start: float
    span: Span | None
    turn: UUID | None = None  # a node's turn run
    kinds: dict[str, str] = field(default_factory=dict)  # a turn's candidates: name -> kind


def _field(values: Any, name: str) -> Any:
    """A field of a node's input state (a dataclass or a mapping) or of its update."""
    if isinstance(values, Mapping):
        return values.get(name)
    return getattr(values, name, None)


class GraphObserver(BaseCallbackHandler):
    """Times the graph's nodes into ``metrics`` and makes spans with ``tracer`` (either may
    be None)."""

    run_inline = True  # cheap, and in the node's own thread: its clock
    raise_error = False  # a metrics failure never fails a turn

    def __init__(self, metrics: TurnMetrics | None, tracer: Tracer | None) -> None:
        self.metrics = metrics
        self.tracer = tracer
        self._runs: dict[UUID, _Run] = {}
        self._lock = threading.Lock()

    def _span(self, name: str, parent: Span | None) -> Span | None:
        if self.tracer is None:
            return None
        from opentelemetry import trace

        context = trace.set_span_in_context(parent) if parent is not None else None
        return self.tracer.start_span(name, context=context)

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        now = time.perf_counter()
        if parent_run_id is None:
            with self._lock:
                self._runs[run_id] = _Run(None, now, self._span(TURN_SPAN, None))
            return
        name = kwargs.get("name")
        is_node = (
            name is not None
            and (metadata or {}).get("langgraph_node") == name
            and any(t.startswith("graph:step:") for t in tags or ())
        )
        with self._lock:
            turn = self._runs.get(parent_run_id)
            if not is_node or turn is None or turn.node is not None:
                return  # a model call, a router, a subgraph's node: inside a node's time
            span = self._span(str(name), turn.span)
            if span is not None:
                span.set_attribute("tmo.node", str(name))
            self._runs[run_id] = _Run(str(name), now, span, parent_run_id)
            if name == ACCOUNT_NODE:  # the kinds of the views the turn could send
                turn.kinds = {
                    str(c.get("name")): view_kind(c)
                    for c in _field(inputs, "candidates") or []
                    if isinstance(c, Mapping)
                }

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            run = self._runs.pop(run_id, None)
            turn = self._runs.get(run.turn) if run is not None and run.turn else None
        if run is None:
            return
        if run.node is None:
            if run.span is not None:
                run.span.end()
            return
        seconds = time.perf_counter() - run.start
        if self.metrics is not None:
            self.metrics.node(run.node, seconds)
        for call in _field(outputs, "calls") or []:
            if isinstance(call, Mapping):
                if self.metrics is not None:
                    self.metrics.call(call)
                if run.span is not None:
                    run.span.set_attributes(call_attributes(call))
        if run.node == ACCOUNT_NODE and turn is not None and turn.span is not None:
            records = _field(outputs, "turns")
            if records:
                record = records[-1]
                kinds = [turn.kinds.get(n, "other") for n in record.get("views_sent") or []]
                turn.span.set_attributes(turn_attributes(record, kinds))
        if run.span is not None:
            run.span.end()

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            run = self._runs.pop(run_id, None)
        if run is None:
            return
        if run.node is not None and self.metrics is not None:
            self.metrics.node(run.node, time.perf_counter() - run.start)
        if run.span is not None:
            from opentelemetry.trace import Status, StatusCode

            # The error's type only: its message may quote the dialogue or an endpoint.
            run.span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            run.span.end()
