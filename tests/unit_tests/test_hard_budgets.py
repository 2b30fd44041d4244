"""Hard budgets on measured values: each call limited to what is left, a daily cap, warnings."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services
from tmo_graph.context import Context
from tmo_graph.graph import build_graph
from tmo_graph.guards.faults import BudgetReached
from tmo_graph.guards.metering import CloudMeter
from tmo_graph.guards.spending import SpendLedger
from tmo_graph.nodes.account import BUDGET_WARNING_EVENT
from tmo_graph.nodes.answer_local import BUDGET_REACHED
from tmo_graph.policy.budget import MIN_CLOUD_ANSWER_TOKENS, CostModel
from tmo_graph.prompts import message_text
from tmo_graph.settings import Settings


def _cloud(**values: Any) -> FakeCloud:
    cloud = FakeCloud(**values)
    cloud.sent, cloud.max_tokens_sent = [], []
    return cloud


def _run(graph: Any, text: str, context: Context, thread: str = "t1") -> Any:
    config = {"configurable": {"thread_id": thread}}
    return graph.invoke({"messages": [("user", text)]}, config, context=context)


# ---- the cost model's limits ----


def test_the_most_a_request_can_be_billed_counts_bytes_not_characters() -> None:
    model = CostModel.from_settings(Settings())
    ascii_tokens = model.cloud_input_tokens_at_most(["kettle"])
    assert model.cloud_input_tokens_at_most(["日本語"]) == ascii_tokens - 6 + 9  # 3 bytes each
    with_image = model.cloud_input_tokens_at_most(["kettle"], [(768, 768)])
    assert with_image - ascii_tokens == model.image_tokens(768, 768)


@pytest.mark.parametrize("money", [0.0, 1e-6, 1.5e-5, 3e-5, 1e-4, 1.0])
def test_answer_tokens_within_never_lets_the_worst_case_exceed_the_money(money: float) -> None:
    model = CostModel.from_settings(Settings())
    n = model.answer_tokens_within(money, 100, 96)
    assert 0 <= n <= 96
    if n > 0:
        assert model.cloud_call_usd(100, n) <= money
    if n < 96 and money >= model.cloud_call_usd(100, 0):
        assert model.cloud_call_usd(100, n + 1) > money  # the largest that fits
    assert model.answer_tokens_within(float("nan"), 100, 96) == 0


def test_device_time_grows_with_the_prompt_and_shrinks_the_answer() -> None:
    model = CostModel.from_settings(Settings())  # 150 prompt tokens/s, 16 answer tokens/s
    assert model.local_tokens_within(5.0, 1.0, 10, 64) == 64
    short = model.local_tokens_within(5.0, 1.0, 600, 64)  # 4 s reading: 1 s of writing
    assert short == 16
    assert model.local_seconds(600, short) <= 5.0
    assert model.local_tokens_within(5.0, 1.0, 800, 64) == 0  # reading alone takes 5.3 s
    assert model.local_tokens_within(5.0, 0.0, 10, 64) == 0  # no money for the energy


# ---- the graph ----


def test_a_long_prompt_shortens_the_device_answer_to_the_time_left(tmp_path: Path) -> None:
    local = FakeLocal(["short answer"])
    graph = build_graph(fake_services(tmp_path, local), checkpointer=InMemorySaver())
    prompt = "describe the kitchen " * 120  # about 2,500 bytes: the fallback counts bytes
    out = _run(graph, prompt, Context(policy="always-local", latency_budget_s=20.0))
    max_new, max_time = local.limits[0]
    assert max_new is not None and max_time is not None
    assert 0 < max_new < 64 and max_time <= 20.0
    assert out["turns"][-1]["warnings"] == [
        f"the local answer was limited to {max_new} tokens by the budget left"
    ]


def test_when_nothing_fits_the_turn_says_budget_reached_with_no_model_call(
    tmp_path: Path,
) -> None:
    local = FakeLocal(["never said"])
    cloud = _cloud()
    graph = build_graph(fake_services(tmp_path, local, cloud), checkpointer=InMemorySaver())
    prompt = "x" * 3000  # reading 3,000 bytes takes 20 s at 150 tokens/s
    out = _run(graph, prompt, Context(policy="always-cloud", latency_budget_s=5.0))
    record = out["turns"][-1]
    assert local.limits == [] and cloud.max_tokens_sent == []  # no model was called
    assert record["answer"] == BUDGET_REACHED and out["messages"][-1].content == BUDGET_REACHED
    assert record["cost_usd"] == 0.0 and record["latency_s"] < 0.05  # building, no calling
    assert "budget reached" in record["warnings"]


def test_max_tokens_is_shrunk_so_the_worst_case_bill_fits(tmp_path: Path) -> None:
    cloud = _cloud(input_tokens=50, output_tokens=10)
    services = fake_services(tmp_path, FakeLocal(["local"]), cloud)
    graph = build_graph(services, checkpointer=InMemorySaver())
    context = Context(policy="always-cloud", cost_budget_usd=5e-5)
    out = _run(graph, "Is the kettle on?", context)
    record = out["turns"][-1]
    assert record["route"] == "cloud"
    costs = services.costs
    input_cap = costs.cloud_input_tokens_at_most([message_text(m) for m in cloud.sent[0]])
    sent = cloud.max_tokens_sent[0]
    assert MIN_CLOUD_ANSWER_TOKENS <= sent < services.settings.cloud.max_tokens
    assert costs.cloud_call_usd(input_cap, sent) <= 5e-5
    # The largest that fits, but for the device energy a fallback answer would need (< 1e-5).
    assert costs.cloud_call_usd(input_cap, sent + 1) > 5e-5 - 1e-5
    assert record["cost_usd"] <= 5e-5


def test_no_cloud_request_when_not_even_a_short_answer_fits(tmp_path: Path) -> None:
    cloud = _cloud()
    graph = build_graph(
        fake_services(tmp_path, FakeLocal(["local"]), cloud), checkpointer=InMemorySaver()
    )
    # 900 characters the route estimates at 225 tokens (it lets the cloud through), but
    # 2,700 UTF-8 bytes the endpoint may bill as 2,700 tokens: the node does not send it.
    out = _run(graph, "日本語" * 300, Context(policy="always-cloud", cost_budget_usd=1.5e-4))
    record = out["turns"][-1]
    assert cloud.max_tokens_sent == [] and record["route"] == "local"
    assert record["fallback"] == "budget reached: the money left does not pay for a cloud answer"


def test_usage_above_what_the_request_could_hold_is_flagged(tmp_path: Path) -> None:
    cloud = _cloud(input_tokens=50_000)
    graph = build_graph(
        fake_services(tmp_path, FakeLocal(["local"]), cloud), checkpointer=InMemorySaver()
    )
    out = _run(graph, "Is the kettle on?", Context(policy="always-cloud"))
    (warning,) = out["turns"][-1]["warnings"]
    assert warning.startswith("the endpoint reported 50000 input / 20 output tokens, more than")


def _capped(tmp_path: Path, cap: float) -> Settings:
    return Settings.model_validate(
        {"spending": {"daily_cost_cap_usd": cap, "ledger": str(tmp_path / "spend.sqlite")}}
    )


def test_the_daily_cap_spans_a_users_dialogues_and_no_one_elses(tmp_path: Path) -> None:
    cloud = _cloud(input_tokens=1000, output_tokens=50)  # 0.00018 USD a call
    services = fake_services(
        tmp_path, FakeLocal(["local"]), cloud, settings=_capped(tmp_path, 4e-4)
    )
    graph = build_graph(services, checkpointer=InMemorySaver())
    routes = [
        _run(graph, "Is the kettle on?", Context(policy="always-cloud", user_id="ann"), f"a{i}")[
            "turns"
        ][-1]
        for i in range(4)
    ]
    assert [r["route"] for r in routes[:1]] == ["cloud"]
    refused = [r for r in routes if r["route"] == "local"]
    assert refused and all("daily cap of 0.0004 USD" in (r["fallback"] or "") for r in refused)
    assert services.ledger is not None and services.ledger.spent("ann") <= 4e-4
    bob = _run(graph, "Is the kettle on?", Context(policy="always-cloud", user_id="bob"), "b1")
    assert bob["turns"][-1]["route"] == "cloud"  # another user's cap is untouched


def test_racing_reservations_never_pass_the_cap(tmp_path: Path) -> None:
    ledger = SpendLedger(tmp_path / "spend.sqlite")
    granted: list[int] = []

    def spend() -> None:
        for _ in range(40):  # 2**-10 USD: sums of it are exact in binary
            if (held := ledger.reserve("ann", 2**-10, 50 * 2**-10)) is not None:
                granted.append(held)

    threads = [threading.Thread(target=spend) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 50  # 240 tries, room for exactly 50
    assert ledger.spent("ann") == 50 * 2**-10
    ledger.settle(granted[0], 0.0)  # a request that never reached the endpoint
    assert ledger.spent("ann") == 49 * 2**-10


class Events(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: Any = None,
        metadata: Any = None,
        **kw: Any,
    ) -> None:
        self.events.append((name, data))


def test_a_warning_when_80_percent_is_spent_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cloud = _cloud(input_tokens=1000, output_tokens=50)  # 0.00018 USD a call
    graph = build_graph(
        fake_services(tmp_path, FakeLocal(["local"]), cloud), checkpointer=InMemorySaver()
    )
    context = Context(policy="always-cloud", cost_budget_usd=4e-4)
    events = Events()
    config = {"configurable": {"thread_id": "w"}, "callbacks": [events]}
    records = []
    with caplog.at_level(logging.WARNING, logger="tmo_graph.budget"):
        for _ in range(3):
            out = graph.invoke({"messages": [("user", "Kettle?")]}, config, context=context)
            records.append(out["turns"][-1])
    warned = [r for r in records if any("cost budget" in w for w in r.get("warnings", []))]
    assert len(warned) == 1  # the turn that crossed 80 %, not the ones after
    assert [name for name, _ in events.events] == [BUDGET_WARNING_EVENT]
    assert events.events[0][1]["budget"] == "cost" and events.events[0][1]["of"] == 4e-4
    assert sum("cost budget" in r.message for r in caplog.records) == 1


# ---- one call's requests ----


def _meter(tmp_path: Path, money: float, cap: float | None = None) -> CloudMeter:
    return CloudMeter(
        costs=CostModel.from_settings(Settings()),
        input_cap=500,
        max_tokens=96,
        money_left=lambda: money,
        user_id="ann",
        ledger=SpendLedger(tmp_path / "spend.sqlite") if cap is not None else None,
        daily_cap_usd=cap,
    )


def test_a_request_that_may_have_been_billed_is_charged_its_worst_case(tmp_path: Path) -> None:
    meter = _meter(tmp_path, money=1.0)
    timed_out = meter.begin()
    meter.failed(timed_out, "timeout", 2.0)
    refused = meter.begin()
    meter.failed(refused, "connection", 0.0)
    assert meter.charged == [timed_out.worst_usd, 0.0] and timed_out.worst_usd > 0


def test_each_request_fits_what_the_earlier_ones_left(tmp_path: Path) -> None:
    meter = _meter(tmp_path, money=2e-4)  # 500 input tokens: 7.5e-5 USD; 96 out: 5.8e-5
    first = meter.begin()
    assert first.max_tokens == 96
    meter.failed(first, "stream cut", 1.0)  # charged 1.3e-4: 7e-5 left, not enough
    assert meter.answer_tokens() < MIN_CLOUD_ANSWER_TOKENS
    with pytest.raises(BudgetReached, match="does not pay for a 16-token answer"):
        meter.begin()


def test_the_daily_cap_is_reserved_then_settled_at_the_bill(tmp_path: Path) -> None:
    meter = _meter(tmp_path, money=1.0, cap=2e-4)
    ticket = meter.begin()
    assert meter.ledger is not None and meter.ledger.spent("ann") == ticket.worst_usd
    meter.answered(ticket, (100, 10), 0.5)
    assert meter.ledger.spent("ann") == pytest.approx(meter.costs.cloud_call_usd(100, 10))
    meter.answered(meter.begin(), (700, 10), 0.5)  # above the 500 the request could hold
    assert meter.warnings and "more than the request could hold (500 / 96)" in meter.warnings[0]
