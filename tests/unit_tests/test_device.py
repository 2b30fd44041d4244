"""The device's live resources: speed estimates (EWMA), their file, the machine's reading,
and what the budget mask and the local answer's length make of them (fake models)."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeCloud, FakeLocal, Stats, fake_services
from tmo_graph.context import Context
from tmo_graph.costs import profiles
from tmo_graph.costs.device import (
    MIN_DECODE_STEPS,
    LiveResources,
    Priors,
    cloud_attempt_failed,
    live_resources,
)
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.policy.base import LOCAL, Action, RouteInput
from tmo_graph.policy.budget import CostModel
from tmo_graph.policy.learned import LearnedPolicy
from tmo_graph.policy.observation import (
    DEVICE_FEATURES,
    ObservationSpec,
    build_observation,
    device_features,
    profile_device_features,
)
from tmo_graph.settings import Settings


def _priors(**values: Any) -> Priors:
    base = {
        "local_key": "m|int4",
        "tokens_per_s": 16.0,
        "prefill_tokens_per_s": 150.0,
        "cloud_key": "c",
    }
    return Priors(**{**base, **values})


# ---- the estimates ----


def test_a_measurement_moves_the_estimate_by_the_weight() -> None:
    live = LiveResources(_priors(), weight=0.5)
    live.observe_local(prompt_tokens=100, prefill_s=0.5, decode_tokens=30, decode_s=1.0)
    assert live.local_prefill_tokens_per_s == pytest.approx(150 + 0.5 * (200 - 150))
    assert live.local_tokens_per_s == pytest.approx(16 + 0.5 * (30 - 16))


def test_a_slowdown_shows_within_three_calls() -> None:
    live = LiveResources(_priors(tokens_per_s=60.0), weight=0.5)
    for _ in range(3):  # the machine is now three times slower
        live.observe_local(50, 0.25, 40, 2.0)
    # 87.5 % of the way from 60 to 20 tokens/s.
    assert live.local_tokens_per_s == pytest.approx(20 + 0.125 * 40)
    assert live.local_tokens_per_s < 0.45 * 60


def test_too_few_decode_steps_leave_the_decode_speed_alone() -> None:
    live = LiveResources(_priors(), weight=0.5)
    live.observe_local(10, 0.1, MIN_DECODE_STEPS - 1, 0.001)
    assert live.local_tokens_per_s == 16.0
    assert live.local_prefill_tokens_per_s != 150.0  # the prompt was still read


def test_a_prompt_found_in_the_cache_leaves_the_prompt_speed_alone() -> None:
    live = LiveResources(_priors(), weight=0.5)
    live.observe_local(1, 0.02, 30, 1.0)  # one token read: the call's fixed cost, not reading
    assert live.local_prefill_tokens_per_s == 150.0
    assert live.local_tokens_per_s != 16.0  # the answer's speed still counts


def test_bad_measurements_and_weights_are_refused_with_a_fix() -> None:
    live = LiveResources(_priors())
    with pytest.raises(TmoGraphError, match="finite numbers >= 0"):
        live.observe_local(-1, 0.1, 5, 0.1)
    with pytest.raises(TmoGraphError, match="finite numbers >= 0"):
        live.observe_local(10, float("nan"), 5, 0.1)
    with pytest.raises(TmoGraphError, match="ewma_weight"):
        LiveResources(_priors(), weight=0.0)
    with pytest.raises(TmoGraphError, match="tokens_per_s"):
        _priors(tokens_per_s=0.0)
    with pytest.raises(TmoGraphError, match="Priors"):
        LiveResources("fast")  # type: ignore[arg-type]


def test_cloud_latency_factor_and_failure_rate() -> None:
    live = LiveResources(_priors(), weight=0.5)
    live.observe_cloud(seconds=4.0, expected_s=2.0)  # twice as slow as the profile says
    snap = live.snapshot().cloud
    assert snap.latency_s == 4.0 and snap.time_factor == pytest.approx(1.5)
    live.observe_cloud_failure()
    assert live.snapshot().cloud.failure_rate == pytest.approx(0.5)
    live.observe_cloud(1.0, 2.0)
    snap = live.snapshot().cloud
    assert snap.failure_rate == pytest.approx(0.25)
    assert snap.latency_s == pytest.approx(2.5)
    assert snap.time_factor == pytest.approx(1.5 + 0.5 * (0.5 - 1.5))


def test_which_cloud_attempts_count_against_the_endpoint() -> None:
    assert cloud_attempt_failed({"outcome": "ok", "seconds": 1.0}) is False
    assert cloud_attempt_failed({"outcome": "timeout", "seconds": 1.0}) is True
    assert cloud_attempt_failed({"outcome": "server error", "status": 500}) is True
    assert cloud_attempt_failed({"outcome": "http error", "status": 401}) is True
    assert cloud_attempt_failed({"outcome": "http error", "status": 400}) is None
    assert cloud_attempt_failed({"outcome": "empty answer"}) is None


def test_the_cost_model_takes_the_measured_speeds() -> None:
    base = CostModel.from_settings(Settings())
    live = LiveResources(_priors(), weight=1.0, clock=lambda: 1000.0)  # no drift: time stands
    live.observe_local(100, 1.0, 8, 2.0)  # 100 prompt tokens/s, 4 answer tokens/s
    live.observe_cloud(3.0, 1.5)
    model = base.at(live.measured_speeds())
    assert (model.local_prefill_tokens_per_s, model.local_tokens_per_s) == (100.0, 4.0)
    assert model.cloud_time_factor == 2.0
    cloud = Action("cloud")
    assert model.expected(cloud, 0).latency_s == pytest.approx(
        2 * base.expected(cloud, 0).latency_s
    )
    assert model.expected(LOCAL, 0).latency_s == pytest.approx(base.local_max_new_tokens / 4.0)
    # Off, or the simulator's fixed costs: the configured model as it is.
    assert base.at(LiveResources(_priors(), live=False).measured_speeds()) is base
    paper = CostModel.paper("Jetson TX2", "Wired", 2)
    assert paper.at(live.measured_speeds()) is paper


# ---- the file ----


def test_estimates_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    first = LiveResources(_priors(), path, weight=0.5)
    first.observe_local(100, 0.5, 30, 1.0)
    first.observe_cloud_failure()
    second = LiveResources(_priors(), path, weight=0.5)
    assert second.local_tokens_per_s == pytest.approx(23.0)
    assert second.local_prefill_tokens_per_s == pytest.approx(175.0)
    assert second.snapshot().cloud.failure_rate == pytest.approx(0.5)
    # Another local model's speeds are not this one's; the cloud's still are.
    other = LiveResources(_priors(local_key="other|float32"), path)
    assert other.local_tokens_per_s == 16.0
    assert other.snapshot().cloud.failure_rate == pytest.approx(0.5)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"version": 1, "local": {"key": "m|int4", "tokens_per_s": -3}}),
        json.dumps({"version": 99, "local": {}, "cloud": {}}),
        "[]",
    ],
)
def test_a_corrupt_file_warns_and_starts_from_the_configured_speeds(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "device.json"
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="tmo_graph.costs.device"):
        live = LiveResources(_priors(), path)
    assert "unreadable" in caplog.text and str(path) in caplog.text
    assert (live.local_tokens_per_s, live.local_prefill_tokens_per_s) == (16.0, 150.0)
    live.observe_local(100, 0.5, 30, 1.0)  # the next measurement writes a good file
    assert json.loads(path.read_text())["local"]["calls"] == 1


def test_an_unwritable_file_warns_and_keeps_measuring(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    live = LiveResources(_priors(), blocker / "device.json", weight=1.0)
    with caplog.at_level(logging.WARNING, logger="tmo_graph.costs.device"):
        live.observe_local(100, 0.5, 30, 1.0)
    assert "not saved" in caplog.text
    assert live.local_tokens_per_s == 30.0


def test_concurrent_turns_lose_no_measurement(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    live = LiveResources(_priors(), path, weight=0.5)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(25):
                live.observe_local(64, 0.5, 32, 1.0)
                live.observe_cloud(1.0, 1.0)
                live.reading()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    snap = live.snapshot()
    assert snap.local.calls == 200 and snap.cloud.calls == 200
    assert snap.local.tokens_per_s == pytest.approx(32.0, rel=1e-6)
    stored = json.loads(path.read_text())  # whole, never half written
    assert stored["local"]["calls"] >= 1 and not list(tmp_path.glob(".device-*"))


def test_one_estimator_per_file_per_process(tmp_path: Path) -> None:
    settings = Settings(device={"state_path": tmp_path / "d.json"})
    assert live_resources(settings, tmp_path / "d.json") is live_resources(
        settings, tmp_path / "d.json"
    )
    assert live_resources(settings, tmp_path / "e.json") is not live_resources(
        settings, tmp_path / "d.json"
    )


def test_the_reading_names_cpu_memory_battery_and_speeds() -> None:
    live = LiveResources(_priors())
    # Busy for 0.1 s between the readings: the CPU counters tick every 10 ms, and a faster
    # loop could leave them unchanged (no load to report, as at a process's first reading).
    end = time.perf_counter() + 0.1
    while time.perf_counter() < end:
        pass
    reading = live.reading()
    assert set(reading) == {
        "cpu_load",
        "cpu_load_others",
        "free_memory_mb",
        "battery",
        "local_tokens_per_s",
        "local_prefill_tokens_per_s",
        "cloud_latency_s",
        "cloud_time_factor",
        "cloud_failure_rate",
    }
    assert reading["cpu_load"] is not None and 0.0 <= reading["cpu_load"] <= 1.0
    assert reading["cpu_load_others"] is not None
    assert reading["cpu_load_others"] <= reading["cpu_load"]
    assert reading["free_memory_mb"] is not None and reading["free_memory_mb"] > 0
    assert reading["battery"] is None or 0 <= reading["battery"]["percent"] <= 100
    assert reading["local_tokens_per_s"] == 16.0 and reading["cloud_latency_s"] is None


# ---- the graph: mask, answer length, record ----


@dataclass
class TimedStats(Stats):
    prompt_tokens: int = 0
    prefill_s: float | None = None
    decode_tokens: int = 0
    decode_s: float | None = None


class TimedLocal(FakeLocal):
    """A device that reports its timing at ``tokens_per_s`` and records its limits."""

    def __init__(self, answers: list[str], tokens_per_s: float) -> None:
        super().__init__(answers)
        self.tokens_per_s = tokens_per_s

    def answer(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int | None = None,
        tags: list[str] | None = None,
        max_time_s: float | None = None,
    ) -> tuple[str, TimedStats]:
        text, stats = super().answer(messages, max_new_tokens, tags, max_time_s)
        n = 20
        timed = TimedStats(
            stats.logprobs, stats.entropies, 40, 40 / 200.0, n - 1, (n - 1) / self.tokens_per_s
        )
        return text, timed


def _services(
    tmp_path: Path, local: FakeLocal, tokens_per_s: float, cloud: FakeCloud | None = None
) -> Any:
    settings = Settings(cloud={"tokens_per_s": 1000.0})  # a fast cloud: 0.6 s expected
    services = fake_services(tmp_path, local, cloud, settings=settings)
    services.device = LiveResources(
        Priors(
            local_key="fake",
            tokens_per_s=tokens_per_s,
            prefill_tokens_per_s=150.0,
            cloud_key="fake-cloud",
        ),
        weight=0.5,
        clock=lambda: 1000.0,  # time stands: no drift back to the configured speed
    )
    return services


def _turn(services: Any, budget_s: float, policy: str = "always-local") -> dict[str, Any]:
    graph = build_graph(services, checkpointer=InMemorySaver())
    out = graph.invoke(
        {"messages": [("user", "How do I descale the kettle?")]},
        {"configurable": {"thread_id": "t"}},
        context=Context(policy=policy, latency_budget_s=budget_s),
    )
    return out["turns"][-1]


def _cloud() -> FakeCloud:
    cloud = FakeCloud()
    cloud.sent, cloud.max_tokens_sent = [], []
    return cloud


def test_a_slow_estimate_shortens_the_local_answer(tmp_path: Path) -> None:
    fast, slow = TimedLocal(["ok"], 60.0), TimedLocal(["ok"], 2.0)
    _turn(_services(tmp_path / "a", fast, tokens_per_s=60.0), budget_s=6.0)
    _turn(_services(tmp_path / "b", slow, tokens_per_s=2.0), budget_s=6.0)
    (fast_n, _), (slow_n, slow_time) = fast.limits[0], slow.limits[0]
    assert fast_n == Settings().local.max_new_tokens
    assert slow_n is not None and 1 <= slow_n <= 6.0 * 2.0 < fast_n
    assert slow_time is not None and slow_time < 6.0


def test_a_slow_estimate_sends_the_turn_to_the_cloud_when_a_cloud_answer_fits(
    tmp_path: Path,
) -> None:
    slow_local, cloud = TimedLocal(["ok"], 2.0), _cloud()
    record = _turn(_services(tmp_path / "slow", slow_local, 2.0, cloud), budget_s=10.0)
    assert record["route"] == "cloud" and "local" in record["masked"]
    assert slow_local.limits == [] and len(cloud.sent) == 1
    assert record["latency_s"] < 10.0
    # The same turn on a device at the configured speed stays local.
    fast_local, cloud = TimedLocal(["ok"], 60.0), _cloud()
    record = _turn(_services(tmp_path / "fast", fast_local, 16.0, cloud), budget_s=10.0)
    assert record["route"] == "local" and "local" not in record["masked"]
    assert cloud.sent == []


def test_the_turn_record_carries_the_device_and_the_speeds_learn(tmp_path: Path) -> None:
    local = TimedLocal(["ok"], 4.0)
    services = _services(tmp_path, local, tokens_per_s=16.0)
    record = _turn(services, budget_s=60.0)
    device = record["device"]
    assert device["local_tokens_per_s"] == 16.0  # what the route saw, before this turn
    assert device["free_memory_mb"] is not None and device["free_memory_mb"] > 0
    # The call's own timing (19 steps at 4 tokens/s, 40 prompt tokens at 200/s) moved them.
    assert services.device.local_tokens_per_s == pytest.approx(10.0)
    assert services.device.local_prefill_tokens_per_s == pytest.approx(175.0)


def test_an_untimed_backend_leaves_the_estimates_alone(tmp_path: Path) -> None:
    services = _services(tmp_path, FakeLocal(["ok"]), tokens_per_s=16.0)
    _turn(services, budget_s=60.0)
    assert services.device.local_tokens_per_s == 16.0


def test_cloud_calls_and_failures_update_the_endpoint_estimates(tmp_path: Path) -> None:
    services = _services(tmp_path / "ok", FakeLocal(["ok"]), 16.0, _cloud())
    _turn(services, budget_s=60.0, policy="always-cloud")
    cloud = services.device.snapshot().cloud
    # An instant fake against 0.5 s of profile latency: faster than expected.
    assert cloud.calls == 1 and cloud.latency_s is not None and cloud.time_factor < 1.0
    failing = _cloud()
    failing.fail = True
    services = _services(tmp_path / "fail", FakeLocal(["ok"]), 16.0, failing)
    record = _turn(services, budget_s=60.0, policy="always-cloud")
    assert record["route"] == "local" and record["fallback"]
    assert services.device.snapshot().cloud.failure_rate > 0.5


def test_services_made_by_hand_keep_estimates_in_memory(tmp_path: Path) -> None:
    services = fake_services(tmp_path, FakeLocal(["ok"]))
    assert services.device is not None and services.device.path is None
    explicit = fake_services(
        tmp_path, FakeLocal(["ok"]), settings=Settings(device={"state_path": tmp_path / "d.json"})
    )
    assert explicit.device is not None and explicit.device.path == tmp_path / "d.json"
    off = fake_services(tmp_path, FakeLocal(["ok"]), settings=Settings(device={"live": False}))
    assert off.device is not None
    off.device.observe_local(10, 1.0, 10, 10.0)
    assert off.costs is off.base_costs


# ---- the observation ----


def test_device_features_are_off_by_default_and_old_specs_read_alike() -> None:
    spec = ObservationSpec(2, ("a", "b"), 5, True)
    assert "with_device" not in spec.to_dict()  # policy files written as before
    assert ObservationSpec.from_dict(spec.to_dict()) == spec
    with_device = ObservationSpec(2, ("a", "b"), 5, True, with_device=True)
    assert with_device.size == spec.size + len(DEVICE_FEATURES)
    assert ObservationSpec.from_dict(with_device.to_dict()) == with_device
    obs = build_observation(with_device, [], [0], (10.0, 0.01), (0.5, 2.0, 30.0))
    assert list(obs[-3:]) == pytest.approx([0.5, 2.0, 30.0])
    assert np.array_equal(obs[: spec.size], build_observation(spec, [], [0], (10.0, 0.01)))
    with pytest.raises(TmoGraphError, match="observes the device"):
        build_observation(with_device, [], [0], (10.0, 0.01))


def test_the_simulator_sees_its_profiles_idle_device() -> None:
    cpu, memory, speed = profile_device_features(profiles.device("Jetson TX2"))
    assert cpu == 0.0 and memory > 0
    assert speed == pytest.approx(
        profiles.PAPER_TOTAL_TOKENS / profiles.local_time_s(profiles.device("Jetson TX2"))
    )
    with pytest.raises(TmoGraphError, match="DeviceProfile"):
        profile_device_features("Jetson TX2")  # type: ignore[arg-type]


def test_a_learned_policy_observing_the_device_reads_the_turns_reading() -> None:
    spec = ObservationSpec(0, ("Query",), 2, False, with_device=True)
    seen: list[np.ndarray] = []

    def policy(observation: np.ndarray, association: Any = ()) -> int:
        seen.append(observation)
        return 0

    learned = LearnedPolicy(policy=policy, spec=spec)
    reading = LiveResources(_priors()).reading()
    base = RouteInput(
        prompt="p",
        task="Query",
        turn=0,
        candidates=[],
        history=[],
        budget_left={"latency_s": 10.0, "cost_usd": 0.01},
        allowed={LOCAL: None},  # type: ignore[dict-item]
        device=reading,
    )
    assert learned.decide(base) == LOCAL
    assert list(seen[0][-3:]) == pytest.approx(list(device_features(reading)))
    no_reading = RouteInput(**{**base.__dict__, "device": None})
    with pytest.raises(TmoGraphError, match="no device reading"):
        learned.decide(no_reading)
    with pytest.raises(TmoGraphError, match="lacks"):
        device_features({"cpu_load_others": 0.1})


def test_a_busy_estimate_drifts_back_to_the_configured_speed_unmeasured() -> None:
    now = [1000.0]
    live = LiveResources(_priors(), weight=1.0, recover_half_life_s=60.0, clock=lambda: now[0])
    live.observe_local(100, 10.0, 40, 20.0)  # 10 prompt and 2 answer tokens/s: busy
    assert (live.local_tokens_per_s, live.local_prefill_tokens_per_s) == (2.0, 10.0)
    now[0] += 60.0  # one half-life without a local call
    assert live.local_tokens_per_s == pytest.approx(9.0)
    assert live.reading()["local_tokens_per_s"] == pytest.approx(9.0)
    assert CostModel.from_settings(Settings()).at(live.measured_speeds()).local_tokens_per_s == 9.0
    now[0] += 6000.0
    assert live.local_tokens_per_s == pytest.approx(16.0, abs=1e-6)
    # A speed measured above the configured one is kept: it is what the device does.
    live.observe_local(100, 0.1, 40, 0.5)
    now[0] += 6000.0
    assert live.local_tokens_per_s == 80.0
    with pytest.raises(TmoGraphError, match="recover_half_life_s"):
        LiveResources(_priors(), recover_half_life_s=0.0)


def test_local_is_masked_only_when_a_whole_cloud_answer_fits_instead() -> None:
    from dataclasses import replace

    base = replace(CostModel.from_settings(Settings()), cloud_tokens_per_s=1000.0)
    slow = replace(base, local_tokens_per_s=2.0)  # 64 tokens: 32 s
    actions = [LOCAL, Action("cloud")]
    tight = {"latency_s": 10.0, "cost_usd": 1.0}
    allowed, masked = slow.affordable(actions, tight, 100)
    assert LOCAL not in allowed and masked == [LOCAL] and Action("cloud") in allowed
    # At the configured speed the local answer fits: nothing is masked.
    assert LOCAL in base.affordable(actions, tight, 100)[0]
    # No cloud answer fits whole either: the local one stays, the last resort (shortened).
    too_tight = {"latency_s": 0.3, "cost_usd": 1.0}
    assert LOCAL in slow.affordable(actions, too_tight, 100)[0]
    assert LOCAL in slow.affordable([LOCAL], tight, 100)[0]  # no cloud at all
    # The simulator's fixed costs never mask the local answer.
    paper = CostModel.paper("Raspberry Pi-4B", "WiFi", 0)
    paper_tight = {"latency_s": 1.0, "cost_usd": 1.0}
    assert paper.expected(LOCAL, 0).latency_s > 1.0 >= paper.expected(Action("cloud"), 0).latency_s
    assert LOCAL in paper.affordable(actions, paper_tight, 100)[0]


def test_public_functions_refuse_bad_input_with_a_fix() -> None:
    live = LiveResources(_priors())
    with pytest.raises(TmoGraphError, match="measured_speeds"):
        CostModel.from_settings(Settings()).at("fast")  # type: ignore[arg-type]
    with pytest.raises(TmoGraphError, match="cloud_attempts"):
        cloud_attempt_failed({"seconds": 1.0})
    with pytest.raises(TmoGraphError, match="Settings"):
        live_resources({"device": {}}, None)  # type: ignore[arg-type]
    with pytest.raises(TmoGraphError, match="Settings"):
        Priors.from_settings(None)  # type: ignore[arg-type]
    with pytest.raises(TmoGraphError, match="finite"):
        live.observe_cloud(float("inf"), 1.0)
    with pytest.raises(TmoGraphError, match=">= 0"):
        CostModel.from_settings(Settings()).cloud_seconds(-1, 10)


def test_the_training_environment_fills_the_device_features_from_its_profile(
    tmp_path: Path,
) -> None:
    from tests.unit_tests.test_sim_env import TASKS, _episodes
    from tmo_graph.policy.knn import ResponseModel
    from tmo_graph.policy.world import SimSettings, World
    from tmo_graph.sim.gym_env import M4A1Env

    episodes = _episodes(tmp_path)
    spec = ObservationSpec(n_views=4, task_names=TASKS, with_budgets=True, with_device=True)
    knn_spec = ObservationSpec(n_views=4, task_names=TASKS)
    world = World(spec, SimSettings(device="Jetson Nano"), ResponseModel(knn_spec, episodes))
    obs, _ = M4A1Env(world, episodes).reset()
    assert obs.shape == (spec.size,)
    expected = profile_device_features(profiles.device("Jetson Nano"))
    assert list(obs[-3:]) == pytest.approx(list(expected), rel=1e-6)
