"""The server's telemetry: ``GET /metrics`` after a scripted dialogue equals what the turns'
records (the responses' ``tmo`` and ``usage``) say; the spans per turn and per node carry the
turn's numbers and never its text or a personal value; ``telemetry:`` settings fail clearly;
multiprocess mode adds up the workers."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from langgraph.checkpoint.memory import InMemorySaver
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services, png_bytes
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.guards.faults import reset_breakers
from tmo_graph.nodes.answer_local import BUDGET_REACHED
from tmo_graph.sections import CloudSettings, DeviceSettings, RoutingDefaults, TelemetrySettings
from tmo_graph.server.app import create_app
from tmo_graph.server.keys import KeyRing
from tmo_graph.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
EMAIL = "dana.kowalski@example.org"
PHONE = "+1 415 555 0137"
CLOUD_OUTPUT_TOKENS = 20
GRAPH_NODES = {
    "detect_modality",
    "recall_memory",
    "route",
    "answer_local",
    "check_confidence",
    "answer_cloud",
    "account",
}


class TimedLocal(FakeLocal):
    """A fake local model whose calls take a measurable moment (tokens per second)."""

    def answer(
        self, messages: Any, max_new_tokens: Any = None, tags: Any = None, max_time_s: Any = None
    ) -> Any:
        time.sleep(0.01)
        return super().answer(messages, max_new_tokens, tags)


@dataclass
class Turn:
    question: Any  # the user message's content
    model: str
    cloud_fails: bool = False
    stream: bool = False
    tmo: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    answer: str = ""


def _image() -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes("blue")).decode()


def _script() -> list[Turn]:
    """Local, cloud text, cloud with an image, an escalation (streamed), then two fall-backs:
    a refused connection (which opens the circuit: one failure is enough here) and the open
    circuit."""
    return [
        Turn(f"Hello, my mail is {EMAIL}. What is a good tea?", "tmo-always-local"),
        Turn(f"Call me at {PHONE} about the boiling pot, please.", "tmo-always-cloud"),
        Turn(
            [
                {"type": "text", "text": "What colour is this mug?"},
                {"type": "image_url", "image_url": {"url": _image()}},
            ],
            "tmo-always-cloud",
        ),
        Turn("Explain how an induction hob heats a pan.", "tmo-cascade-1", stream=True),
        Turn("Is the kettle still on?", "tmo-always-cloud", cloud_fails=True),
        Turn("And the oven?", "tmo-always-cloud", cloud_fails=True),
    ]


def _settings(**telemetry: Any) -> Settings:
    # One failure opens the circuit; device energy is free, so the turns' money is the cloud's.
    return Settings(
        cloud=CloudSettings(breaker_failures=1, max_attempts=1),
        device=DeviceSettings(usd_per_kwh=0),
        telemetry=TelemetrySettings(**telemetry),
    )


@pytest.fixture
def dialogue(tmp_path: Path) -> Iterator[tuple[TestClient, list[Turn], InMemorySpanExporter]]:
    """A real app on fake models, with an in-memory span exporter; the script played."""
    reset_breakers()
    settings = _settings()
    cloud = FakeCloud(answer="It is boiling.", output_tokens=CLOUD_OUTPUT_TOKENS)
    cloud.sent = []
    local = TimedLocal(answers=["Green tea is nice."], logprob=-0.05)
    services = fake_services(tmp_path, local, cloud, settings=settings)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    graph = build_graph(services, checkpointer=InMemorySaver())
    app = create_app(
        graph, settings, services=services, no_auth=True, tracer=provider.get_tracer("test")
    )
    turns = _script()
    with TestClient(app) as client:
        for turn in turns:
            cloud.fail = turn.cloud_fails
            _play(client, turn)
        yield client, turns, exporter
    provider.shutdown()


def _play(client: TestClient, turn: Turn) -> None:
    """Send the turn, plain or streamed, and keep what the response says of it."""
    body: dict[str, Any] = {
        "model": turn.model,
        "messages": [{"role": "user", "content": turn.question}],
    }
    if turn.stream:
        body.update(stream=True, stream_options={"include_usage": True})
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    if not turn.stream:
        reply = response.json()
        turn.tmo, turn.usage = reply["tmo"], reply["usage"]
        turn.answer = reply["choices"][0]["message"]["content"]
        return
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    turn.answer = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
    )
    turn.tmo, turn.usage = chunks[-1]["tmo"], chunks[-1]["usage"]


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _route(tmo: dict[str, Any]) -> str:
    if tmo["route"] == "local":
        return "local"
    return "cloud_views" if tmo["views_sent"] else "cloud_text"


def test_the_script_covers_every_route_an_escalation_and_fall_backs(
    dialogue: tuple[TestClient, list[Turn], InMemorySpanExporter],
) -> None:
    _, turns, _ = dialogue
    tmos = [t.tmo for t in turns if t.tmo is not None]
    assert [_route(t) for t in tmos] == [
        "local",
        "cloud_text",
        "cloud_views",
        "cloud_text",
        "local",
        "local",
    ]
    assert [t["escalated"] for t in tmos] == [False, False, False, True, False, False]
    assert tmos[4]["fallback"].startswith("ConnectionError") and tmos[5]["fallback"] == (
        "circuit open"
    )


def test_metrics_equal_what_the_turn_records_say(
    dialogue: tuple[TestClient, list[Turn], InMemorySpanExporter],
) -> None:
    client, turns, _ = dialogue
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    tmos = [t.tmo for t in turns if t.tmo is not None]
    usages = [t.usage for t in turns if t.usage is not None]

    by_route = Counter((_route(t), t["policy"]) for t in tmos)
    for (route, policy), n in by_route.items():
        assert _value(samples, "tmo_turns_total", route=route, policy=policy) == n
    total = sum(v for (name, _), v in samples.items() if name == "tmo_turns_total")
    assert total == len(tmos)

    escalated = Counter(t["policy"] for t in tmos if t["escalated"])
    assert escalated and all(
        _value(samples, "tmo_escalations_total", policy=p) == n for p, n in escalated.items()
    )
    fallbacks = [t["fallback"] for t in tmos if t["fallback"] is not None]
    counted = {dict(k)["kind"]: v for (n, k), v in samples.items() if n == "tmo_fallbacks_total"}
    assert sum(counted.values()) == len(fallbacks) == 2
    assert counted == {"connection": 1, "circuit_open": 1}  # the fault kinds, not error text
    assert _value(samples, "tmo_budget_reached_answers_total") == sum(
        t.answer == BUDGET_REACHED for t in turns
    )

    # Cloud tokens and money: usage's prompt tokens are the cloud's; each cloud answer is
    # the fake's 20 tokens; device energy is free here, so the turns' money is the cloud's.
    assert _value(samples, "tmo_cloud_input_tokens_total") == sum(
        u["prompt_tokens"] for u in usages
    )
    cloud_answers = sum(t["route"] == "cloud" for t in tmos)
    assert _value(samples, "tmo_cloud_output_tokens_total") == cloud_answers * CLOUD_OUTPUT_TOKENS
    money = sum(t["cost_usd"] for t in tmos)
    assert money > 0
    assert _value(samples, "tmo_cloud_cost_usd_total") == pytest.approx(money)
    assert _value(samples, "tmo_turn_cost_usd_total") == pytest.approx(money)

    # The refused connection opened the circuit: 2 = open.
    breaker = {
        dict(k)["endpoint"]: v for (n, k), v in samples.items() if n == "tmo_cloud_breaker_state"
    }
    assert breaker == {"in-process": 2.0}

    # Every node's latency, once per run; account ends every turn.
    nodes = {dict(k)["node"]: v for (n, k), v in samples.items() if n == "tmo_node_seconds_count"}
    assert set(nodes) <= GRAPH_NODES and nodes["account"] == len(tmos)
    assert nodes["answer_cloud"] == sum(
        t["route"] == "cloud" or t["fallback"] is not None for t in tmos
    )
    # One local call per local answer and per escalated draft, each timed.
    local_calls = sum(t["route"] == "local" for t in tmos) + sum(t["escalated"] for t in tmos)
    assert nodes["answer_local"] == local_calls
    assert _value(samples, "tmo_local_tokens_per_second_count") == local_calls
    assert _value(samples, "tmo_local_tokens_per_second_sum") > 0

    # Nothing of the dialogue in any label or value: no text, no personal value, no id.
    text = response.text
    for secret in (EMAIL, PHONE, "boiling pot", "mug", "kettle", *(t["thread_id"] for t in tmos)):
        assert secret not in text


def test_a_budget_reached_answer_is_counted(tmp_path: Path) -> None:
    settings = Settings(routing=RoutingDefaults(latency_budget_s=0.001))
    services = fake_services(tmp_path, TimedLocal(answers=["never said"]), None, settings=settings)
    app = create_app(build_graph(services, checkpointer=InMemorySaver()), settings, no_auth=True)
    with TestClient(app) as client:
        reply = client.post(
            "/v1/chat/completions",
            json={"model": "tmo-always-local", "messages": [{"role": "user", "content": "Hi"}]},
        ).json()
        samples = _samples(client.get("/metrics").text)
    assert reply["choices"][0]["message"]["content"] == BUDGET_REACHED
    assert _value(samples, "tmo_budget_reached_answers_total") == 1
    assert _value(samples, "tmo_turns_total", route="local", policy="always-local") == 1


def _attribute_texts(span: ReadableSpan) -> list[str]:
    return [str(v) for v in (span.attributes or {}).values()] + [span.name]


def test_spans_per_turn_and_node_carry_numbers_never_text(
    dialogue: tuple[TestClient, list[Turn], InMemorySpanExporter],
) -> None:
    _, turns, exporter = dialogue
    spans = exporter.get_finished_spans()
    tmos = [t.tmo for t in turns if t.tmo is not None]
    turn_spans = [s for s in spans if s.name == "tmo.turn"]
    assert len(turn_spans) == len(tmos)
    for span, tmo, turn in zip(turn_spans, tmos, turns, strict=True):
        attrs = dict(span.attributes or {})
        assert span.parent is None
        assert attrs["tmo.route"] == _route(tmo) and attrs["tmo.policy"] == tmo["policy"]
        assert attrs["tmo.views_sent.count"] == len(tmo["views_sent"])
        assert attrs["tmo.escalated"] == tmo["escalated"]
        assert attrs["tmo.fallback"] == (tmo["fallback"] is not None)
        assert attrs["tmo.cost_usd"] == pytest.approx(tmo["cost_usd"])
        assert attrs["tmo.latency_s"] == pytest.approx(tmo["latency_s"])
        assert attrs["tmo.input_tokens"] == turn.usage["prompt_tokens"]  # type: ignore[index]
        assert attrs["tmo.output_tokens"] == turn.usage["completion_tokens"]  # type: ignore[index]
        assert attrs.get("tmo.confidence") == tmo["confidence"]
        nodes = [
            s for s in spans if s.parent is not None and s.parent.span_id == span.context.span_id
        ]
        names = [s.name for s in nodes]
        assert names[0] == "detect_modality" and names[-1] == "account"
        assert set(names) <= GRAPH_NODES
        if tmo["route"] == "cloud" or tmo["fallback"] is not None:
            cloud = next(s for s in nodes if s.name == "answer_cloud")
            assert cloud.attributes is not None
            assert cloud.attributes["tmo.call.ok"] == (tmo["fallback"] is None)
    image_turn = turn_spans[2].attributes or {}
    assert list(image_turn["tmo.views_sent.kinds"]) == ["image"]  # type: ignore[arg-type]
    assert turn_spans[1].attributes is not None and turn_spans[1].attributes["tmo.redactions"] == 1
    assert turn_spans[4].attributes is not None
    assert turn_spans[4].attributes["tmo.fallback.kind"] == "connection"

    # No attribute, of any span, holds a word of the dialogue or a personal value.
    questions = [
        t.question if isinstance(t.question, str) else t.question[0]["text"] for t in turns
    ]
    answers = [t.answer for t in turns]
    planted = [EMAIL, PHONE, "dana", "555 0137", *(t["thread_id"] for t in tmos)]
    for span in spans:
        for value in _attribute_texts(span):
            for secret in [*questions, *answers, *planted]:
                assert secret.lower() not in value.lower(), (span.name, value)
            assert "data:image" not in value and "base64" not in value


def test_metrics_access_follows_the_settings(tmp_path: Path) -> None:
    services = fake_services(tmp_path)
    graph = build_graph(services, checkpointer=InMemorySaver())

    def get(settings: Settings, peer: str = "127.0.0.1", **headers: str) -> int:
        app = create_app(graph, settings, no_auth=settings.telemetry.metrics != "key")
        with TestClient(app, client=(peer, 4000)) as client:
            return client.get("/metrics", headers=headers).status_code

    assert get(_settings()) == 200  # local: this machine
    assert get(_settings(), peer="10.1.2.3") == 403
    assert get(_settings(metrics="open"), peer="10.1.2.3") == 200
    assert get(_settings(metrics="off")) == 404
    secret = "sk-metrics-test-key"
    keyed = _settings(metrics="key").model_copy(
        update={"server": Settings().server.model_copy(update={"keys": _keys(secret)})}
    )
    assert get(keyed, peer="10.1.2.3") == 401
    assert get(keyed, peer="10.1.2.3", authorization=f"Bearer {secret}") == 200


def _keys(secret: str) -> list[Any]:
    from tmo_graph.sections import ApiKey
    from tmo_graph.server.keys import hash_key

    return [ApiKey(id="prom", user="prometheus", sha256=hash_key(secret))]


def test_telemetry_settings_fail_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("telemetry: {traces: zipkin}")
    with pytest.raises(TmoGraphError, match=r"telemetry.traces.*'off', 'console' or 'otlp'"):
        load_settings(config)
    config.write_text("telemetry: {traces: otlp, otlp_endpoint: 'collector:4318'}")
    with pytest.raises(
        TmoGraphError, match=r"telemetry.otlp_endpoint.*http\(s\) url.*got .collector:4318."
    ):
        load_settings(config)
    config.write_text("telemetry: {metrics: public}")
    with pytest.raises(TmoGraphError, match=r"telemetry.metrics.*'off', 'local', 'key' or 'open'"):
        load_settings(config)
    # YAML reads an unquoted `off` as false: it means off.
    config.write_text("telemetry: {traces: off, metrics: off}")
    assert load_settings(config).telemetry.traces == "off"
    assert load_settings(config).telemetry.metrics == "off"
    monkeypatch.setenv("TMO_TELEMETRY__TRACES", "jaeger")
    with pytest.raises(TmoGraphError, match="TMO_TELEMETRY__TRACES"):
        load_settings(None)
    monkeypatch.delenv("TMO_TELEMETRY__TRACES")
    # Metrics behind a key on a server without keys: no one could read them.
    services = fake_services(tmp_path)
    graph = build_graph(services, checkpointer=InMemorySaver())
    with pytest.raises(TmoGraphError, match="telemetry.metrics is 'key'.*Fix: serve with keys"):
        create_app(graph, _settings(metrics="key"), no_auth=True)
    # A key ring is fine.
    create_app(graph, _settings(metrics="key"), keys=KeyRing(_keys("k")))


def test_several_workers_add_up_in_multiprocess_mode(tmp_path: Path) -> None:
    """Two worker processes count a turn each into PROMETHEUS_MULTIPROC_DIR; a third's
    /metrics exposition sees both. A worker that stopped (``close``) leaves the live gauges:
    its open circuit is not shown."""
    folder = tmp_path / "prom"
    folder.mkdir()
    record = {
        "turn": 0,
        "route": "cloud",
        "policy": "rules",
        "views_sent": ["v"],
        "escalated": True,
        "fallback": None,
        "latency_s": 0.5,
        "cost_usd": 0.01,
        "breaker": "closed",
        "device": {"local_tokens_per_s": 17.5},
    }
    worker = textwrap.dedent(
        f"""
        import json
        from tmo_graph.observe.metrics import TurnMetrics
        m = TurnMetrics()
        m.turn(json.loads({json.dumps(json.dumps(record))}))
        m.node("route", 0.2)
        if STOPS:
            m.close()
        """
    )
    reader = (
        "from tmo_graph.observe.metrics import TurnMetrics; "
        "print(TurnMetrics().exposition()[0].decode())"
    )
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
        "PYTHONPATH": str(ROOT),
        "PATH": "/usr/bin:/bin",
    }
    stopped = {**record, "breaker": "open"}
    for code in (
        worker,
        worker,
        worker.replace(json.dumps(json.dumps(record)), json.dumps(json.dumps(stopped))),
    ):
        stops = "True" if code is not worker else "False"
        done = subprocess.run(
            [sys.executable, "-c", f"STOPS = {stops}\n{code}"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    shown = subprocess.run([sys.executable, "-c", reader], env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    samples = _samples(shown.stdout)
    assert _value(samples, "tmo_turns_total", route="cloud_views", policy="rules") == 3
    assert _value(samples, "tmo_escalations_total", policy="rules") == 3
    assert _value(samples, "tmo_node_seconds_count", node="route") == 3
    assert _value(samples, "tmo_cloud_breaker_state", endpoint="unknown") == 0  # 2 if shown
    assert _value(samples, "tmo_local_decode_tokens_per_second") == 17.5
    # A folder that does not exist is named, with the fix.
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "missing")
    bad = subprocess.run([sys.executable, "-c", reader], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "is not a folder" in bad.stderr and "mkdir -p" in bad.stderr


def test_console_traces_print_the_spans_without_the_text(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = _settings(traces="console")
    services = fake_services(tmp_path, TimedLocal(answers=["Tea."]), None, settings=settings)
    app = create_app(build_graph(services, checkpointer=InMemorySaver()), settings, no_auth=True)
    question = f"Which tea for {EMAIL}?"
    with TestClient(app) as client:
        client.post(
            "/v1/chat/completions",
            json={"model": "tmo-always-local", "messages": [{"role": "user", "content": question}]},
        )
    out = capfd.readouterr().out
    assert '"name": "tmo.turn"' in out and '"name": "answer_local"' in out
    assert '"tmo.route": "local"' in out
    assert EMAIL not in out and "Which tea" not in out
