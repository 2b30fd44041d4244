"""The server's telemetry over real HTTP: uvicorn on 127.0.0.1 with ``telemetry.traces: otlp``
sends its spans over OTLP/HTTP to a collector (a capturing HTTP server here), and Prometheus'
text on ``/metrics`` is read by a real client; neither holds the dialogue's text or the
personal values planted in it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration_tests.test_server import Served
from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services
from tmo_graph.graph import build_graph
from tmo_graph.guards.faults import reset_breakers
from tmo_graph.models.cloud import free_port
from tmo_graph.sections import TelemetrySettings
from tmo_graph.server.app import create_app
from tmo_graph.settings import Settings

pytestmark = pytest.mark.integration
EMAIL = "morgan.lee@example.net"
QUESTIONS = [f"Write to {EMAIL} that the stew is ready.", "Is the oven hot enough for bread?"]


class Collector:
    """An OTLP/HTTP trace receiver on 127.0.0.1 that keeps every request's body."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, bytes]] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("content-length") or 0)
                bodies.append((self.path, self.rfile.read(length)))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> list[Any]:
        out = []
        for _, body in self.bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    out.extend(scope.spans)
        return out

    def stop(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.stop()


def test_spans_reach_an_otlp_collector_and_metrics_a_client(
    tmp_path: Path, collector: Collector
) -> None:
    reset_breakers()
    settings = Settings(
        telemetry=TelemetrySettings(traces="otlp", otlp_endpoint=collector.url, metrics="local")
    )
    cloud = FakeCloud(answer="The stew is ready.")
    cloud.sent = []
    services = fake_services(tmp_path, FakeLocal(["Yes, 220 degrees."]), cloud, settings=settings)
    app = create_app(build_graph(services, checkpointer=InMemorySaver()), settings, no_auth=True)
    served = Served(app)
    try:
        client = served.client()
        for question, model in zip(
            QUESTIONS, ["tmo-always-cloud", "tmo-always-local"], strict=True
        ):
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": question}]
            )
        scraped = httpx.get(f"{served.url}/metrics", timeout=10)
    finally:
        served.stop()  # the app's shutdown flushes the batched spans to the collector

    assert scraped.status_code == 200
    turns = {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
        if s.name == "tmo_turns_total"
    }
    assert turns == {
        (("policy", "always-cloud"), ("route", "cloud_text")): 1.0,
        (("policy", "always-local"), ("route", "local")): 1.0,
    }

    assert collector.bodies and all(path == "/v1/traces" for path, _ in collector.bodies)
    spans = collector.spans()
    turn_spans = [s for s in spans if s.name == "tmo.turn"]
    assert len(turn_spans) == 2
    routes = sorted(
        a.value.string_value for s in turn_spans for a in s.attributes if a.key == "tmo.route"
    )
    assert routes == ["cloud_text", "local"]
    nodes = {s.name for s in spans if s.parent_span_id}
    assert {"route", "answer_cloud", "answer_local", "account"} <= nodes
    everything = b"".join(body for _, body in collector.bodies) + scraped.content
    for secret in [EMAIL, "stew", "oven", "220 degrees"]:
        assert secret.encode() not in everything, secret
