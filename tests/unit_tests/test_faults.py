"""The circuit breaker and the attempts policy (tmo_graph.guards.faults), on a fake clock."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services
from tmo_graph import Context, build_graph
from tmo_graph.guards.faults import (
    CIRCUIT_OPEN,
    MIN_ATTEMPT_S,
    NO_TIME_LEFT,
    CircuitBreaker,
    EmptyAnswer,
    attempt_timeout,
    breaker_for,
    classify,
    cloud_time_left_s,
    endpoint_of,
    reset_breakers,
    run_attempts,
    safe_url,
)
from tmo_graph.settings import Settings


class Clock:
    """A clock that moves only when told to (or when the code under test sleeps)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    response = httpx.Response(status, headers=headers or {}, request=request)
    cls = openai.RateLimitError if status == 429 else openai.APIStatusError
    return cls("boom", response=response, body=None)


# ---- the breaker ----------------------------------------------------------------------


def test_breaker_opens_after_n_failures_in_a_row_and_half_opens_after_cooldown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    breaker = CircuitBreaker("ep", failures=3, cooldown_s=30.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="tmo_graph.cloud")
    for _ in range(2):
        assert breaker.allow()
        breaker.failed()
    assert breaker.state == "closed"
    assert breaker.allow()
    breaker.succeeded()  # a success resets the count
    for _ in range(2):
        breaker.failed()
    assert breaker.state == "closed"
    breaker.failed()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 29.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.state == "half-open"
    assert breaker.allow()  # the one trial call
    assert not breaker.allow()  # no second call while the trial is in flight
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.allow()
    moves = [r.getMessage() for r in caplog.records]
    assert any("closed -> open" in m for m in moves)
    assert any("open -> half-open" in m for m in moves)
    assert any("half-open -> closed" in m for m in moves)
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_a_failed_trial_reopens_for_a_full_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker("ep", failures=1, cooldown_s=5.0, clock=clock)
    breaker.failed()
    clock.now += 5.0
    assert breaker.allow()
    breaker.failed()
    assert breaker.state == "open"
    clock.now += 4.0
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()


def test_one_breaker_per_endpoint_and_model() -> None:
    reset_breakers()
    a = breaker_for(("http://h:1/v1", "m"), 3, 30.0)
    assert breaker_for(("http://h:1/v1", "m"), 3, 30.0) is a
    assert breaker_for(("http://h:1/v1", "other"), 3, 30.0) is not a
    assert breaker_for(("http://h:2/v1", "m"), 3, 30.0) is not a
    reset_breakers()


def test_endpoint_names_carry_no_credentials() -> None:
    assert safe_url("https://user:sk-secret@api.example.com:8443/v1?key=sk-x") == (
        "https://api.example.com:8443/v1"
    )
    a, b = FakeCloud(), FakeCloud()
    assert endpoint_of(a) != endpoint_of(b)  # a model without a URL is its own endpoint
    reset_breakers()
    breaker = breaker_for(endpoint_of(a), 3, 30.0, a)
    assert breaker_for(endpoint_of(a), 3, 30.0, a) is breaker
    # Another object that ends up at the same key (a reused id) gets a breaker of its own.
    assert breaker_for(endpoint_of(a), 3, 30.0, b) is not breaker
    reset_breakers()


# ---- classification -------------------------------------------------------------------


def test_faults_are_classified() -> None:
    request = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    assert classify(_status_error(500)).kind == "server error"
    limited = classify(_status_error(429, {"retry-after": "1.5"}))
    assert (limited.kind, limited.status, limited.retry_after_s) == ("rate limited", 429, 1.5)
    assert classify(_status_error(429, {"retry-after-ms": "250"})).retry_after_s == 0.25
    bad = classify(_status_error(400))
    assert not bad.retryable and not bad.endpoint_fault
    auth = classify(_status_error(401))
    assert not auth.retryable and auth.endpoint_fault
    assert classify(openai.APITimeoutError(request=request)).kind == "timeout"
    assert classify(openai.APIConnectionError(request=request)).kind == "connection"
    assert classify(ConnectionRefusedError()).kind == "connection"
    cut = httpx.RemoteProtocolError("peer closed connection without sending complete body")
    assert classify(cut).kind == "stream cut"
    empty = classify(EmptyAnswer("empty"))
    assert empty.kind == "empty answer" and not empty.endpoint_fault


# ---- attempt sizing -------------------------------------------------------------------


def test_attempt_timeout_is_the_smaller_of_config_and_latency_left() -> None:
    assert attempt_timeout(3.0, 10.0) == 3.0
    assert attempt_timeout(3.0, 1.25) == 1.25
    assert attempt_timeout(3.0, MIN_ATTEMPT_S / 2) is None
    assert cloud_time_left_s(10.0, 4.0) == 6.0
    assert cloud_time_left_s(3.0, 4.0) == 0.0


def _runner(clock: Clock, script: list[Any], timeouts: list[float]) -> Any:
    def call(timeout: float) -> str:
        timeouts.append(timeout)
        step = script.pop(0)
        if isinstance(step, tuple):  # (seconds taken, exception)
            clock.now += step[0]
            raise step[1]
        clock.now += 0.1
        return str(step)

    return call


def test_attempts_are_sized_to_the_time_left_and_stop_at_max() -> None:
    clock = Clock()
    breaker = CircuitBreaker("ep", failures=10, cooldown_s=1.0, clock=clock)
    timeouts: list[float] = []
    request = httpx.Request("POST", "http://x")
    script: list[Any] = [(2.0, openai.APITimeoutError(request=request))] * 3
    out = run_attempts(
        _runner(clock, script, timeouts),
        breaker,
        timeout_s=2.0,
        time_left_s=3.0,
        max_attempts=3,
        clock=clock,
        sleep=clock.sleep,
    )
    assert not out.ok
    # 2 s (config), then the 1 s left; never a third: nothing is left.
    assert timeouts == [2.0, 1.0]
    assert [a["outcome"] for a in out.records] == ["timeout", "timeout"]


def test_a_retry_after_that_fits_is_honoured_and_one_that_does_not_gives_up() -> None:
    clock = Clock()
    breaker = CircuitBreaker("ep", failures=10, cooldown_s=1.0, clock=clock)
    timeouts: list[float] = []
    script: list[Any] = [(0.1, _status_error(429, {"retry-after": "1"})), "hello"]
    out = run_attempts(
        _runner(clock, script, timeouts),
        breaker,
        timeout_s=5.0,
        time_left_s=5.0,
        max_attempts=2,
        clock=clock,
        sleep=clock.sleep,
    )
    assert out.ok and out.result == "hello" and clock.slept == [1.0]
    assert out.records[0] == {"outcome": "rate limited", "status": 429, "seconds": 0.1}
    assert out.records[1]["outcome"] == "ok"
    assert timeouts == [5.0, pytest.approx(3.9)]

    clock.slept.clear()
    script = [(0.1, _status_error(429, {"retry-after": "30"})), "never"]
    out = run_attempts(
        _runner(clock, script, []),
        breaker,
        timeout_s=5.0,
        time_left_s=5.0,
        max_attempts=2,
        clock=clock,
        sleep=clock.sleep,
    )
    assert not out.ok and clock.slept == [] and len(out.records) == 1
    assert "Retry-After 30 s does not fit" in out.error


def test_no_attempt_without_time_and_none_through_an_open_breaker() -> None:
    clock = Clock()
    breaker = CircuitBreaker("ep", failures=1, cooldown_s=10.0, clock=clock)
    calls: list[float] = []
    out = run_attempts(
        _runner(clock, ["x"], calls), breaker, timeout_s=5.0, time_left_s=0.0, max_attempts=2
    )
    assert (out.ok, out.error, out.records, calls) == (False, NO_TIME_LEFT, [], [])
    breaker.failed()
    out = run_attempts(
        _runner(clock, ["x"], calls),
        breaker,
        timeout_s=5.0,
        time_left_s=5.0,
        max_attempts=2,
        clock=clock,
    )
    assert (out.ok, out.error, out.records, out.breaker) == (False, CIRCUIT_OPEN, [], "open")
    assert calls == []


def test_a_request_fault_is_not_retried_and_does_not_trip_the_breaker() -> None:
    clock = Clock()
    breaker = CircuitBreaker("ep", failures=1, cooldown_s=10.0, clock=clock)
    script: list[Any] = [(0.1, _status_error(400)), "unused"]
    out = run_attempts(
        _runner(clock, script, []),
        breaker,
        timeout_s=5.0,
        time_left_s=5.0,
        max_attempts=2,
        clock=clock,
        sleep=clock.sleep,
    )
    assert not out.ok and len(out.records) == 1 and out.breaker == "closed"


def test_failed_attempts_are_logged_without_content(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    breaker = CircuitBreaker("http://127.0.0.1:9/v1 (m)", failures=5, cooldown_s=1.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="tmo_graph.cloud")
    script: list[Any] = [(0.1, _status_error(500)), (0.1, ConnectionError("secret prompt"))]
    run_attempts(
        _runner(clock, script, []),
        breaker,
        timeout_s=5.0,
        time_left_s=5.0,
        max_attempts=2,
        clock=clock,
        sleep=clock.sleep,
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "tmo_graph.cloud"]
    assert len(lines) == 2 and "server error 500" in lines[0] and "connection" in lines[1]
    assert not any("secret" in line for line in lines)


# ---- in the graph -------------------------------------------------------------------


def test_graph_records_attempts_and_skips_an_open_circuit(tmp_path: Path) -> None:
    settings = Settings(cloud={"max_attempts": 2, "breaker_failures": 3})
    cloud = FakeCloud(fail=True)
    cloud.sent = []
    services = fake_services(tmp_path, FakeLocal(["local says"]), cloud, settings=settings)
    graph = build_graph(services=services, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t"}}
    ctx = Context(policy="always-cloud")
    turns = [
        graph.invoke({"messages": [("user", f"q{i}")]}, config, context=ctx)["turns"][-1]
        for i in range(3)
    ]
    assert [t["answer"] for t in turns] == ["local says"] * 3
    assert [len(t["cloud_attempts"]) for t in turns] == [2, 1, 0]
    assert [t["breaker"] for t in turns] == ["closed", "open", "open"]
    assert turns[0]["cloud_attempts"][0]["outcome"] == "connection"
    assert turns[2]["fallback"] == CIRCUIT_OPEN
    assert len(cloud.sent) == 3  # the open circuit sent nothing


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_an_escalation_takes_at_most_its_share_of_the_time_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, share: float
) -> None:
    from tmo_graph.nodes import answer_cloud

    given: list[float] = []

    def recorded(*args: Any, **kwargs: Any) -> Any:
        given.append(kwargs["time_left_s"])
        return run_attempts(*args, **kwargs)

    monkeypatch.setattr(answer_cloud, "run_attempts", recorded)
    settings = Settings(cloud={"escalation_share": share})
    unsure = FakeLocal(["a draft"], logprob=-3.0)  # the cascade escalates it
    services = fake_services(tmp_path, unsure, FakeCloud(answer="cloud says"), settings=settings)
    graph = build_graph(services=services, checkpointer=InMemorySaver())
    ctx = Context(policy="cascade", latency_budget_s=40.0)
    config = {"configurable": {"thread_id": "t"}}
    turn = graph.invoke({"messages": [("user", "q")]}, config, context=ctx)["turns"][-1]
    assert turn["escalated"] and turn["answer"] == "cloud says"
    # The draft took next to nothing of the 40 s: the call had about share * 40 s.
    assert len(given) == 1
    assert share * 40.0 - 1.0 < given[0] <= share * 40.0
