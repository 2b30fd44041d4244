"""CostModel: one pricing of actions and calls for the route, the nodes and the simulator."""

from __future__ import annotations

import pytest

from tmo_graph.costs import prices, profiles
from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.base import LOCAL, Action
from tmo_graph.policy.budget import CostModel, all_actions
from tmo_graph.sections import PriceEntry
from tmo_graph.settings import Settings


def test_expected_local_reads_the_prompt_then_writes_the_answer() -> None:
    settings = Settings()
    model = CostModel.from_settings(settings)
    reading = 25 / settings.local.prefill_tokens_per_s  # 100 characters: about 25 tokens
    writing = settings.local.max_new_tokens / settings.local.tokens_per_s
    power = profiles.device(settings.device.profile).power_w
    cost = model.expected(LOCAL, 100)
    assert cost.latency_s == pytest.approx(reading + writing)
    assert cost.cost_usd == pytest.approx(
        (reading + writing) * power / 3.6e6 * settings.device.usd_per_kwh
    )
    half = model.expected(LOCAL, 100, local_tokens=settings.local.max_new_tokens // 2)
    assert half.latency_s == pytest.approx(reading + writing / 2)
    assert model.expected(LOCAL, 40_000).latency_s > 60  # a long prompt takes time to read


def test_expected_cloud_grows_with_views_and_prompt() -> None:
    settings = Settings()
    model = CostModel.from_settings(settings)
    price = prices.PRICES[settings.cloud.price_as]
    text = model.expected(Action("cloud"), 400)
    one = model.expected(Action("cloud", ("a",)), 400)
    assert text.cost_usd == pytest.approx(
        (100 * price.input_per_mtok + settings.cloud.max_tokens * price.output_per_mtok) / 1e6
    )
    assert one.cost_usd - text.cost_usd == pytest.approx(
        price.tokens_per_image * price.input_per_mtok / 1e6
    )
    assert one.latency_s > text.latency_s
    assert model.expected(Action("cloud"), 4000).cost_usd > text.cost_usd
    assert model.tokens_per_image == price.tokens_per_image


def test_affordable_never_masks_local() -> None:
    model = CostModel.from_settings(Settings())
    actions = all_actions(["a", "b"])
    allowed, masked = model.affordable(actions, {"latency_s": 0.0, "cost_usd": 0.0}, 50)
    assert list(allowed) == [LOCAL]
    assert masked == actions[1:]
    allowed, masked = model.affordable(actions, {"latency_s": 1e9, "cost_usd": 1e9}, 50)
    assert list(allowed) == actions and masked == []


def test_from_settings_is_cached_and_follows_changes() -> None:
    settings = Settings()
    assert CostModel.from_settings(settings) is CostModel.from_settings(Settings())
    settings.prices["mine"] = PriceEntry(
        input_per_mtok=1.0, output_per_mtok=2.0, tokens_per_image=7
    )
    settings.cloud.price_as = "mine"
    model = CostModel.from_settings(settings)
    assert model.tokens_per_image == 7
    assert model.cloud_call_usd(1_000_000, 1_000_000) == pytest.approx(3.0)


def test_paper_model_is_the_published_profiles() -> None:
    model = CostModel.paper("Jetson TX2", "WiFi", 3)
    device = profiles.device("Jetson TX2")
    assert model.expected(LOCAL, 0).latency_s == profiles.local_time_s(device)
    assert model.expected(LOCAL, 0).cost_usd == profiles.local_cost_usd(device)
    for k in range(4):
        cost = model.expected(Action("cloud", tuple("abc"[:k])), 12345)
        assert cost.latency_s == profiles.cloud_time_s(profiles.network("WiFi"), k)
        assert cost.cost_usd == profiles.cloud_cost_usd(k)
    with pytest.raises(TmoGraphError, match="sends 4 views"):
        model.expected(Action("cloud", tuple("abcd")), 0)


def test_bad_inputs_fail_with_a_fix() -> None:
    model = CostModel.from_settings(Settings())
    with pytest.raises(TmoGraphError):
        model.expected(LOCAL, -1)
    with pytest.raises(TmoGraphError):
        model.cloud_call_usd(-1, 0)
    with pytest.raises(TmoGraphError):
        model.local_call_usd(-0.5)
    with pytest.raises(TmoGraphError):
        CostModel.from_settings({})  # type: ignore[arg-type]
    settings = Settings()
    settings.cloud.price_as = "no-such-model"
    with pytest.raises(TmoGraphError, match="no price"):
        CostModel.from_settings(settings)


@pytest.mark.parametrize(
    ("size", "detail", "tokens"),
    [
        ((10_000, 10_000), "low", 85),  # low detail: the base, whatever the size
        ((512, 512), "high", 85 + 170),
        ((1000, 500), "high", 85 + 2 * 170),  # short side under 768: not scaled
        ((1600, 1200), "high", 85 + 4 * 170),  # 1024 x 768 after scaling
        ((4096, 1024), "high", 85 + 4 * 170),  # fit in 2048 -> 2048 x 512: 4 x 1 tiles
        ((0, 0), "high", 85 + 4 * 170),  # unknown size: billed as the largest
    ],
)
def test_image_tokens_follow_openais_vision_rule(
    size: tuple[int, int], detail: str, tokens: int
) -> None:
    assert prices.image_tokens(prices.PRICES["gpt-4o"], *size, detail) == tokens


def test_a_bad_image_detail_is_refused() -> None:
    with pytest.raises(TmoGraphError, match="low' or 'high"):
        prices.image_tokens(prices.PRICES["gpt-4o"], 10, 10, "auto")
