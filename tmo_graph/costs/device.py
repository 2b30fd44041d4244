"""The device as it is now: measured speeds of the local model and the cloud, and a reading
of the machine's CPU, memory and battery, for the budget mask and the answer length.

:class:`LiveResources` keeps exponentially weighted estimates (EWMA) of

- the local model's prompt-reading (prefill) and answer-writing (decode) tokens/s, each
  measured per call from the model's own timing (time to the first token over the prompt's
  tokens; answer tokens over the time after the first);
- the cloud endpoint: the measured seconds of a successful call, how much slower or faster
  that is than the configured network profile and speed predict (a factor applied to the
  expected cloud latency), and the share of attempts that fail.

The configured values (``local.tokens_per_s``, ``local.prefill_tokens_per_s``, cloud factor
1, no failures) are the starting point until something is measured. The estimates are kept
in a small JSON file (``device.state_path``, default ``<cache>/device.json``), written
atomically after every update, so a new process starts from what the last one measured; a
file that cannot be read gives a warning and the configured values, never a crash. The
measured local speeds belong to one local model (source and precision) and the cloud's to
one endpoint: a file written for another starts that part from the configured values.

The weight of a new measurement, ``device.ewma_weight`` (0.5 by default), is chosen so a
slowdown shows within three turns: after ``n`` calls at a new speed the estimate has moved
``1 - (1 - w)**n`` of the way, 87.5 % after three calls with w = 0.5, while one odd call
moves it only half way (the estimate averages about the last three calls). An estimate
below the configured speed that no call refreshes drifts back toward it
(``device.recover_half_life_s``), so a device once seen busy is tried again.

:meth:`LiveResources.reading` reads the machine each turn through psutil: the share of the
CPUs busy since the previous reading (all processes, and all but this one), the available
memory, and the battery where there is one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tmo_graph.costs.profiles import MeasuredSpeeds
from tmo_graph.errors import TmoGraphError
from tmo_graph.state import Battery, DeviceReading

if TYPE_CHECKING:  # types only
    from tmo_graph.settings import Settings

log = logging.getLogger("tmo_graph.costs.device")

FILE_VERSION = 1
# A decode measurement over fewer steps than this is mostly noise (a timer tick, a GC pause).
MIN_DECODE_STEPS = 3
# A prompt read of fewer tokens than this (the rest were in the dialogue's key/value cache)
# times the call's fixed cost, not reading: it would make every prompt look slow.
MIN_PREFILL_TOKENS = 8
# A measured ratio or speed beyond these bounds is a broken clock, not the device.
_MIN_FACTOR, _MAX_FACTOR = 0.01, 100.0
# Cloud outcomes that say nothing about the endpoint (the request's or the budget's fault).
_NOT_ENDPOINT_FAULTS = ("empty answer", "budget reached", "error")
_ENDPOINT_HTTP_STATUSES = (401, 403, 408, 409)


class _LocalEstimate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    tokens_per_s: float = Field(gt=0, allow_inf_nan=False)
    prefill_tokens_per_s: float = Field(gt=0, allow_inf_nan=False)
    calls: int = Field(0, ge=0)
    measured_at: float = 0.0  # Unix time of the last measurement (0: never)


class _CloudEstimate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    latency_s: float | None = Field(None, ge=0, allow_inf_nan=False)
    time_factor: float = Field(1.0, gt=0, allow_inf_nan=False)
    failure_rate: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    calls: int = Field(0, ge=0)


class DeviceFile(BaseModel):
    """The estimates file's schema."""

    model_config = ConfigDict(extra="forbid")

    version: int = FILE_VERSION
    local: _LocalEstimate
    cloud: _CloudEstimate
    updated: float = 0.0  # Unix time of the last update


def _ewma(old: float, new: float, weight: float) -> float:
    return old + weight * (new - old)


@dataclass(frozen=True)
class Priors:
    """The configured values the estimates start from, and whose they are."""

    local_key: str
    tokens_per_s: float
    prefill_tokens_per_s: float
    cloud_key: str

    def __post_init__(self) -> None:
        for name in ("tokens_per_s", "prefill_tokens_per_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise TmoGraphError(
                    f"Priors.{name} must be a finite number > 0, got {value!r}",
                    "pass the configured local.tokens_per_s / local.prefill_tokens_per_s",
                )

    @classmethod
    def from_settings(cls, settings: Settings) -> Priors:
        """The configured speeds, and the local model and endpoint they are for."""
        _check_settings(settings, "Priors.from_settings")
        local, cloud = settings.local, settings.cloud
        endpoint = cloud.base_url if cloud.mode == "remote" else (cloud.serve_source or "")
        return cls(
            local_key=f"{local.source}|{local.precision}|compile={local.compile}",
            tokens_per_s=local.tokens_per_s,
            prefill_tokens_per_s=local.prefill_tokens_per_s,
            cloud_key=f"{cloud.mode}|{endpoint or ''}|{cloud.model or ''}",
        )


class LiveResources:
    """Measured speeds of the local model and the cloud endpoint (EWMA), persisted to
    ``path`` (None: kept in memory only), and the machine's reading. Thread-safe."""

    def __init__(
        self,
        priors: Priors,
        path: Path | None = None,
        weight: float = 0.5,
        live: bool = True,
        recover_half_life_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(priors, Priors):
            raise TmoGraphError(
                f"LiveResources needs Priors, got {type(priors).__name__}",
                "use LiveResources.from_settings(settings) or Priors.from_settings(settings)",
            )
        if not (isinstance(weight, int | float) and 0 < weight <= 1):
            raise TmoGraphError(
                f"the EWMA weight must be in (0, 1], got {weight!r}",
                "set device.ewma_weight to e.g. 0.5 (the newest call counts half)",
            )
        self.priors = priors
        self.path = Path(path).expanduser() if path is not None else None
        self.weight = float(weight)
        self.live = live
        if not (isinstance(recover_half_life_s, int | float) and recover_half_life_s > 0):
            raise TmoGraphError(
                f"the recovery half-life must be > 0 seconds, got {recover_half_life_s!r}",
                "set device.recover_half_life_s to e.g. 600",
            )
        self.recover_half_life_s = float(recover_half_life_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._state = self._load()
        self._cpu_last: tuple[float, float, float] | None = None  # (busy, total, own) seconds
        self.reading()  # the first CPU reading only sets the baseline of the next

    @classmethod
    def from_settings(cls, settings: Settings, path: Path | None = None) -> LiveResources:
        """Estimates starting from ``settings``' speeds, kept in ``path`` (None: in memory)."""
        _check_settings(settings, "LiveResources.from_settings")
        device = settings.device
        return cls(
            Priors.from_settings(settings),
            path,
            device.ewma_weight,
            device.live,
            device.recover_half_life_s,
        )

    # ---------------------------------------------------------------- the file

    def _fresh(self) -> DeviceFile:
        p = self.priors
        return DeviceFile(
            local=_LocalEstimate(
                key=p.local_key,
                tokens_per_s=p.tokens_per_s,
                prefill_tokens_per_s=p.prefill_tokens_per_s,
            ),
            cloud=_CloudEstimate(key=p.cloud_key),
        )

    def _load(self) -> DeviceFile:
        fresh = self._fresh()
        if self.path is None or not self.path.exists():
            return fresh
        try:
            stored = DeviceFile.model_validate(json.loads(self.path.read_text()))
            if stored.version != FILE_VERSION:
                raise ValueError(f"version {stored.version}, expected {FILE_VERSION}")
        except (OSError, ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
            reason = str(exc).splitlines()[0][:200]
            log.warning(
                "device estimates %s are unreadable (%s): starting from the configured speeds; "
                "the file is rewritten after the next measurement",
                self.path,
                reason,
            )
            return fresh
        # Speeds measured with another model or endpoint are not this one's.
        local = stored.local if stored.local.key == fresh.local.key else fresh.local
        cloud = stored.cloud if stored.cloud.key == fresh.cloud.key else fresh.cloud
        return DeviceFile(local=local, cloud=cloud, updated=stored.updated)

    def _save(self, state: DeviceFile) -> None:
        """Write ``state`` atomically (a temporary file renamed over the old one)."""
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".device-", suffix=".json", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(state.model_dump_json(indent=2))
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:  # a read-only cache must not fail a turn
            log.warning("device estimates not saved to %s: %s", self.path, exc)

    # ---------------------------------------------------------------- measurements

    def observe_local(
        self, prompt_tokens: int, prefill_s: float, decode_tokens: int, decode_s: float
    ) -> None:
        """One local call as the model timed it: ``prompt_tokens`` read in ``prefill_s``
        (to the first answer token), then ``decode_tokens`` more written in ``decode_s``."""
        values = (prompt_tokens, prefill_s, decode_tokens, decode_s)
        if any(not isinstance(v, int | float) or not math.isfinite(v) or v < 0 for v in values):
            raise TmoGraphError(
                f"local timing must be finite numbers >= 0, got {values}",
                "pass the token counts and seconds the local model measured",
            )
        with self._lock:
            local = self._state.local.model_copy()
            if prompt_tokens >= MIN_PREFILL_TOKENS and prefill_s > 0:
                speed = self._bounded(prompt_tokens / prefill_s, local.prefill_tokens_per_s)
                local.prefill_tokens_per_s = _ewma(local.prefill_tokens_per_s, speed, self.weight)
            if decode_tokens >= MIN_DECODE_STEPS and decode_s > 0:
                speed = self._bounded(decode_tokens / decode_s, local.tokens_per_s)
                local.tokens_per_s = _ewma(local.tokens_per_s, speed, self.weight)
            local.calls += 1
            local.measured_at = self._clock()
            self._state = self._state.model_copy(
                update={"local": local, "updated": local.measured_at}
            )
            state = self._state
        self._save(state)

    def observe_cloud(self, seconds: float, expected_s: float) -> None:
        """One successful cloud attempt: ``seconds`` measured where the configured network
        profile and speed expected ``expected_s`` (for the same views and answer tokens)."""
        if not (math.isfinite(seconds) and seconds >= 0 and math.isfinite(expected_s)):
            raise TmoGraphError(
                f"cloud timing must be finite and >= 0, got {seconds!r} / {expected_s!r}",
                "pass the attempt's measured seconds and CostModel's expected seconds",
            )
        with self._lock:
            cloud = self._state.cloud.model_copy()
            cloud.latency_s = (
                seconds if cloud.latency_s is None else _ewma(cloud.latency_s, seconds, self.weight)
            )
            if expected_s > 0:
                ratio = min(max(seconds / expected_s, _MIN_FACTOR), _MAX_FACTOR)
                cloud.time_factor = _ewma(cloud.time_factor, ratio, self.weight)
            cloud.failure_rate = _ewma(cloud.failure_rate, 0.0, self.weight)
            cloud.calls += 1
            self._state = self._state.model_copy(update={"cloud": cloud, "updated": self._clock()})
            state = self._state
        self._save(state)

    def observe_cloud_failure(self) -> None:
        """One cloud attempt that failed through the endpoint's fault."""
        with self._lock:
            cloud = self._state.cloud.model_copy()
            cloud.failure_rate = _ewma(cloud.failure_rate, 1.0, self.weight)
            cloud.calls += 1
            self._state = self._state.model_copy(update={"cloud": cloud, "updated": self._clock()})
            state = self._state
        self._save(state)

    @staticmethod
    def _bounded(measured: float, current: float) -> float:
        return min(max(measured, current * _MIN_FACTOR), current * _MAX_FACTOR)

    # ---------------------------------------------------------------- what is used

    def _local_now(self) -> tuple[float, float]:
        """(decode, prefill) tokens/s expected now. An estimate below the configured speed
        that no call has refreshed drifts back toward it (half-way every
        ``recover_half_life_s``): a device once seen busy is never measured again while its
        turns go to the cloud, so it is tried again after a while. Call with the lock held."""
        local = self._state.local
        age = max(self._clock() - local.measured_at, 0.0) if local.measured_at else 0.0
        keep = 0.5 ** (age / self.recover_half_life_s)
        speeds = []
        for value, prior in (
            (local.tokens_per_s, self.priors.tokens_per_s),
            (local.prefill_tokens_per_s, self.priors.prefill_tokens_per_s),
        ):
            speeds.append(prior + (value - prior) * keep if value < prior else value)
        return speeds[0], speeds[1]

    @property
    def local_tokens_per_s(self) -> float:
        """The answer tokens/s expected of the local model now."""
        with self._lock:
            return self._local_now()[0]

    @property
    def local_prefill_tokens_per_s(self) -> float:
        """The prompt tokens/s expected of the local model now."""
        with self._lock:
            return self._local_now()[1]

    def snapshot(self) -> DeviceFile:
        """The estimates now (a copy)."""
        with self._lock:
            return self._state.model_copy(deep=True)

    def measured_speeds(self) -> MeasuredSpeeds | None:
        """The speeds to price actions at now (None when estimates are off: the configured
        speeds stand); :meth:`tmo_graph.policy.budget.CostModel.at` takes them."""
        if not self.live:
            return None
        with self._lock:
            decode, prefill = self._local_now()
            return MeasuredSpeeds(decode, prefill, self._state.cloud.time_factor)

    def reading(self) -> DeviceReading:
        """The machine now (CPU since the previous reading, memory, battery) and the
        estimates."""
        cpu, others, memory, battery = _read_machine(self)
        with self._lock:
            state = self._state
            decode, prefill = self._local_now()
        return DeviceReading(
            cpu_load=cpu,
            cpu_load_others=others,
            free_memory_mb=memory,
            battery=battery,
            local_tokens_per_s=round(decode, 3),
            local_prefill_tokens_per_s=round(prefill, 3),
            cloud_latency_s=None
            if state.cloud.latency_s is None
            else round(state.cloud.latency_s, 4),
            cloud_time_factor=round(state.cloud.time_factor, 4),
            cloud_failure_rate=round(state.cloud.failure_rate, 4),
        )


def cloud_attempt_failed(record: dict[str, Any]) -> bool | None:
    """Whether a cloud attempt record (``{"outcome", "status"?, "seconds"}``) says the
    endpoint failed (True), answered (False), or nothing about it (None: the request's own
    problem, the budget, an empty answer)."""
    if not isinstance(record, dict) or "outcome" not in record:
        raise TmoGraphError(
            f"not a cloud attempt record: {record!r}",
            "pass an entry of a call's cloud_attempts ({'outcome': ..., 'seconds': ...})",
        )
    outcome = record.get("outcome")
    if outcome == "ok":
        return False
    if outcome in _NOT_ENDPOINT_FAULTS:
        return None
    if outcome == "http error":
        return True if record.get("status") in _ENDPOINT_HTTP_STATUSES else None
    return True


def _check_settings(settings: object, where: str) -> None:
    from tmo_graph.settings import Settings

    if not isinstance(settings, Settings):
        raise TmoGraphError(
            f"{where} needs Settings, got {type(settings).__name__}",
            "pass tmo_graph.settings.load_settings(...) or Settings()",
        )


def _read_machine(
    resources: LiveResources,
) -> tuple[float | None, float | None, float | None, Battery | None]:
    """CPU loads since the previous reading, available memory (MB) and the battery."""
    import psutil

    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    # Linux counts guest time inside user / nice as well: counted once, as psutil does.
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    own_times = psutil.Process().cpu_times()
    own = own_times.user + own_times.system
    cpu = others = None
    with resources._lock:
        last, resources._cpu_last = resources._cpu_last, (total - idle, total, own)
    if last is not None and total - last[1] > 0:
        span = total - last[1]  # seconds of all CPUs together
        busy = (total - idle) - last[0]
        cpu = min(max(busy / span, 0.0), 1.0)
        others = min(max((busy - (own - last[2])) / span, 0.0), 1.0)
        cpu, others = round(cpu, 3), round(others, 3)
    memory = round(psutil.virtual_memory().available / 2**20, 1)
    battery: Battery | None = None
    sensors = getattr(psutil, "sensors_battery", None)
    try:
        state = sensors() if sensors is not None else None
    except (OSError, RuntimeError):  # some platforms fail to read it: no battery then
        state = None
    if state is not None:
        battery = Battery(percent=round(float(state.percent), 1), plugged=state.power_plugged)
    return cpu, others, memory, battery


_shared: dict[tuple[Path | None, Priors, float, bool, float], LiveResources] = {}
_shared_lock = threading.Lock()


def live_resources(settings: Settings, path: Path | None) -> LiveResources:
    """The process-wide estimates for ``settings`` kept in ``path``: one object (and one
    writer of the file) however many graphs the process builds."""
    _check_settings(settings, "live_resources")
    key = (
        None if path is None else Path(path).expanduser().resolve(),
        Priors.from_settings(settings),
        settings.device.ewma_weight,
        settings.device.live,
        settings.device.recover_half_life_s,
    )
    with _shared_lock:
        if key not in _shared:
            _shared[key] = LiveResources.from_settings(settings, key[0])
        return _shared[key]
