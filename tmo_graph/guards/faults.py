"""Cloud faults: the attempts a call may make within the latency left, and a circuit breaker.

The cloud node makes its own attempts (the client's retries are off): each attempt's
timeout is ``min(cloud.timeout_s, the latency left)``, at most ``cloud.max_attempts`` of
them, and a wait (a 429's ``Retry-After``, a short back-off after a 5xx or a refused
connection) is taken only when another attempt still fits after it. Every attempt passes
through the endpoint's :class:`CircuitBreaker`: after ``cloud.breaker_failures`` failed
attempts in a row the endpoint is skipped for ``cloud.breaker_cooldown_s``, then one trial
attempt closes it again or re-opens it. One breaker per (base_url, model) per process.

Logs go to the ``tmo_graph.cloud`` logger: every failed attempt and every breaker
transition at WARNING, naming the endpoint (without credentials), never a key or a message.
"""

from __future__ import annotations

import contextvars
import email.utils
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("tmo_graph.cloud")

BreakerState = Literal["closed", "open", "half-open"]
T = TypeVar("T")

# An attempt shorter than this cannot bring an answer back: not worth making.
MIN_ATTEMPT_S = 0.1
# Wait before another attempt after a 5xx or a refused connection (429s say how long).
BACKOFF_S = 0.2
CIRCUIT_OPEN = "circuit open"
NO_TIME_LEFT = "no latency left for a cloud attempt"


class CircuitBreaker:
    """Closed -> open after ``failures`` failed calls in a row; open -> half-open after
    ``cooldown_s``; half-open lets one trial call through, whose outcome closes it or opens
    it again. Thread-safe; ``clock`` is injectable for tests."""

    def __init__(
        self,
        name: str,
        failures: int = 3,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1 or cooldown_s < 0:
            raise ValueError("failures must be >= 1 and cooldown_s >= 0")
        self.name = name
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: BreakerState = "closed"
        self._fails = 0
        self._opened_at = 0.0
        self._trial = False  # a half-open trial call is in flight

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose cool-down is over reads half-open)."""
        with self._lock:
            if self._state == "open" and self._clock() - self._opened_at >= self.cooldown_s:
                return "half-open"
            return self._state

    def allow(self) -> bool:
        """May a call go to the endpoint now? (A half-open breaker admits one trial.)"""
        with self._lock:
            if self._state == "open":
                if self._clock() - self._opened_at < self.cooldown_s:
                    return False
                self._move("half-open", "cool-down over, one trial call")
            if self._state == "half-open":
                if self._trial:
                    return False
                self._trial = True
            return True

    def succeeded(self) -> None:
        """The endpoint answered: closes a half-open breaker; resets the failure count."""
        with self._lock:
            self._fails = 0
            self._trial = False
            if self._state != "closed":
                self._move("closed", "trial call answered")

    def failed(self) -> None:
        """The endpoint failed: re-opens a half-open breaker; opens a closed one after
        ``failures`` in a row."""
        with self._lock:
            self._fails += 1
            self._trial = False
            if self._state == "half-open":
                self._open("trial call failed")
            elif self._state == "closed" and self._fails >= self.failures:
                self._open(f"{self._fails} failures in a row")

    def _open(self, why: str) -> None:
        self._opened_at = self._clock()
        self._move("open", f"{why}; calls skipped for {self.cooldown_s:g} s")

    def _move(self, to: BreakerState, why: str) -> None:
        log.warning("cloud circuit %s: %s -> %s (%s)", self.name, self._state, to, why)
        self._state = to


_BREAKERS: dict[tuple[str, str], CircuitBreaker] = {}
_OWNERS: dict[tuple[str, str], weakref.ref[Any]] = {}
_BREAKERS_LOCK = threading.Lock()


def safe_url(url: str) -> str:
    """``url`` without user, password, query or fragment (fit for a log line)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def endpoint_of(model: Any) -> tuple[str, str]:
    """(base_url, model name) of a chat model; a model without a base URL (a test fake, an
    in-process model) is its own endpoint (pass it as ``owner`` to :func:`breaker_for`)."""
    base_url = getattr(model, "openai_api_base", None)
    name = getattr(model, "model_name", None) or getattr(model, "model", None)
    if not base_url:
        return (f"{type(model).__name__}@{id(model):x}", str(name or ""))
    return (safe_url(str(base_url)), str(name or ""))


def breaker_for(
    endpoint: tuple[str, str],
    failures: int,
    cooldown_s: float,
    owner: object | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> CircuitBreaker:
    """The process's breaker of ``endpoint`` (made on first use; later calls with other
    thresholds or clock update them). ``owner``: the model an endpoint without a URL stands
    for (see :func:`endpoint_of`); its breaker is not handed to another object at the same
    id. ``clock``: what the cool-down is timed by (a simulation passes its own)."""
    with _BREAKERS_LOCK:
        breaker = _BREAKERS.get(endpoint)
        if owner is not None:
            ref = _OWNERS.get(endpoint)
            if ref is None or ref() is not owner:
                breaker = None
        if breaker is None:
            name = f"{endpoint[0]} ({endpoint[1]})" if endpoint[1] else endpoint[0]
            breaker = _BREAKERS[endpoint] = CircuitBreaker(name, failures, cooldown_s, clock)
            if owner is not None:
                _OWNERS[endpoint] = weakref.ref(owner)
        elif breaker._clock is not clock:  # another clock: its times mean nothing here
            breaker = _BREAKERS[endpoint] = CircuitBreaker(
                breaker.name, failures, cooldown_s, clock
            )
        else:
            breaker.failures, breaker.cooldown_s = failures, cooldown_s
        return breaker


def reset_breakers() -> None:
    """Forget every breaker (tests)."""
    with _BREAKERS_LOCK:
        _BREAKERS.clear()
        _OWNERS.clear()


class EmptyAnswer(RuntimeError):
    """The endpoint answered with no text."""


class BudgetReached(RuntimeError):
    """Another request would not fit the budget left (no request is made)."""


class DeadlineExceeded(TimeoutError):
    """The call did not finish within its time (whatever the client's own timeouts)."""


def within_deadline(work: Callable[[threading.Event], T], seconds: float) -> T:
    """``work(stop)`` run in a worker thread, waited for at most ``seconds``.

    A client's timeout bounds each network read, not the whole answer: a stream whose
    tokens keep trickling in would run past the time left. Here the caller gets
    :class:`DeadlineExceeded` at the deadline; ``stop`` is set then, and ``work`` should
    check it between chunks and return (closing its stream). The worker runs in a copy of
    the caller's context, so LangChain callbacks (streamed tokens) still reach the run.
    """
    done = threading.Event()
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work(stop)
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc
        finally:
            done.set()

    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(run,), daemon=True, name="cloud-call").start()
    if not done.wait(max(seconds, 0.0)):
        stop.set()
        raise DeadlineExceeded(f"no complete answer within {seconds:.2f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@dataclass(frozen=True)
class Fault:
    """What went wrong in one attempt."""

    kind: str  # timeout, connection, stream cut, rate limited, server error, http error, ...
    status: int | None = None
    retry_after_s: float | None = None  # a 429's or 503's Retry-After
    retryable: bool = True  # may another attempt help?
    endpoint_fault: bool = True  # does it count against the endpoint's breaker?


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return max(float(ms) / 1000.0, 0.0)
        value = headers.get("retry-after")
    except (AttributeError, ValueError, TypeError):
        return None
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


_TIMEOUTS = {"TimeoutException", "APITimeoutError", "TimeoutError"}
_CUTS = {"RemoteProtocolError", "ReadError", "IncompleteRead", "ChunkedEncodingError"}
_CONNECTION = {"ConnectError", "APIConnectionError", "ConnectionError", "TransportError"}


def classify(exc: BaseException) -> Fault:
    """The fault an exception of a cloud call stands for."""
    if isinstance(exc, EmptyAnswer):  # the endpoint works; the same prompt would repeat it
        return Fault("empty answer", retryable=False, endpoint_fault=False)
    if isinstance(exc, BudgetReached):
        return Fault("budget reached", retryable=False, endpoint_fault=False)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        response = getattr(exc, "response", None)
        after = _retry_after(getattr(response, "headers", None))
        if status == 429:
            return Fault("rate limited", status, after)
        if status >= 500:
            return Fault("server error", status, after)
        if status in (401, 403):  # a wrong key fails every call: let the breaker see it
            return Fault("http error", status, retryable=False)
        if status in (408, 409):
            return Fault("http error", status)
        # Other 4xx: this request's problem (too long, bad image), not the endpoint's.
        return Fault("http error", status, retryable=False, endpoint_fault=False)
    # By class names along the cause chain: the openai client may carry its own copy of
    # httpx (openai 3 raises httpx2 errors), and langchain-openai wraps openai's errors.
    names = {cls.__name__ for err in _chain(exc) for cls in type(err).__mro__}
    if names & _TIMEOUTS:
        return Fault("timeout")
    if names & _CUTS:
        return Fault("stream cut")
    if names & _CONNECTION:
        return Fault("connection")
    return Fault("error", retryable=False, endpoint_fault=False)


def cloud_time_left_s(latency_left_s: float, local_share_s: float) -> float:
    """Seconds the cloud call may take in all: the latency left minus the local answer's
    share (what a fall-back to the device would still need; 0 once the turn has one)."""
    return max(latency_left_s - local_share_s, 0.0)


def attempt_timeout(timeout_s: float, time_left_s: float) -> float | None:
    """The next attempt's timeout: ``min(timeout_s, time_left_s)``; None when less than
    :data:`MIN_ATTEMPT_S` is left (no attempt is worth making)."""
    budget = min(timeout_s, time_left_s)
    return budget if budget >= MIN_ATTEMPT_S else None


@dataclass
class Attempts:
    """The outcome of a cloud call's attempts."""

    result: Any = None
    ok: bool = False
    error: str = ""  # why the call failed (the last fault, or circuit open / no time)
    records: list[dict[str, Any]] = field(default_factory=list)
    breaker: BreakerState = "closed"


def run_attempts(
    call: Callable[[float], T],
    breaker: CircuitBreaker,
    *,
    timeout_s: float,
    time_left_s: float,
    max_attempts: int,
    check: Callable[[T], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    describe: Callable[[BaseException], str] | None = None,
) -> Attempts:
    """Call ``call(timeout)`` until it answers, at most ``max_attempts`` times and never
    beyond ``time_left_s`` from now; ``check`` raises on an answer that is no answer (empty).

    Each attempt is recorded as ``{"outcome": "ok" | fault kind, "status": code (if any),
    "seconds": ...}``; a call the open breaker skips makes no attempt.
    """
    describe = describe or (lambda e: type(e).__name__)
    out = Attempts()
    deadline = clock() + time_left_s
    for number in range(1, max(max_attempts, 1) + 1):
        timeout = attempt_timeout(timeout_s, deadline - clock())
        if timeout is None:
            out.error = out.error or NO_TIME_LEFT
            break
        if not breaker.allow():
            out.error = f"{out.error}; then {CIRCUIT_OPEN}" if out.records else CIRCUIT_OPEN
            break
        start = clock()
        try:
            result = call(timeout)
            if check is not None:
                check(result)
        except Exception as exc:
            seconds = round(clock() - start, 4)
            fault = classify(exc)
            (breaker.failed if fault.endpoint_fault else breaker.succeeded)()
            record: dict[str, Any] = {"outcome": fault.kind, "seconds": seconds}
            if fault.status is not None:
                record["status"] = fault.status
            out.records.append(record)
            out.error = describe(exc)
            log.warning(
                "cloud attempt %d/%d to %s failed: %s%s (%s) after %.2f s",
                number,
                max_attempts,
                breaker.name,
                fault.kind,
                f" {fault.status}" if fault.status is not None else "",
                type(exc).__name__,
                seconds,
            )
            if not fault.retryable or number >= max_attempts:
                break
            wait = fault.retry_after_s if fault.retry_after_s is not None else 0.0
            if fault.kind in ("connection", "server error", "stream cut"):
                wait = max(wait, BACKOFF_S)
            if breaker.state == "open":  # this failure opened it: no retry
                out.error = f"{out.error}; then {CIRCUIT_OPEN}"
                break
            if deadline - clock() - wait < MIN_ATTEMPT_S:
                if fault.retry_after_s is not None:
                    out.error += f" (Retry-After {fault.retry_after_s:g} s does not fit)"
                break
            if wait > 0:
                sleep(wait)
            continue
        breaker.succeeded()
        out.records.append({"outcome": "ok", "seconds": round(clock() - start, 4)})
        out.result, out.ok, out.error = result, True, ""
        break
    out.breaker = breaker.state
    return out
