"""Device and network profiles: the published TMO numbers, and the extension beyond 3 views."""

from __future__ import annotations

import pytest

from tmo_graph.costs import profiles
from tmo_graph.errors import TmoGraphError

# (local time s, local cost USD) per device, from the published tmo/devices.py run here.
PUBLISHED_LOCAL = {
    "Raspberry Pi-4B": (1.125925925925926, 4.173432098765432e-07),
    "Raspberry Pi-5": (0.4840764331210191, 2.691464968152866e-07),
    "Jetson Nano": (0.03220338983050847, 1.4920903954802257e-08),
    "Jetson TX2": (0.011428571428571429, 7.942857142857142e-09),
    "Jetson Xavier NX": (0.0007238095238095238, 6.707301587301587e-10),
    "Jetson Orin NX": (0.000152, 1.7606666666666667e-10),
    "Jetson AGX Orin": (5.527272727272727e-05, 1.536581818181818e-10),
    "iPhone 15 Pro": (0.0004342857142857143, 3.0182857142857144e-10),
}


@pytest.mark.parametrize("name", list(PUBLISHED_LOCAL))
def test_local_time_and_cost_are_the_published_numbers_bit_for_bit(name: str) -> None:
    profile = profiles.device(name)
    # Exact equality: the usage normalisation divides by a spread of ~1e-2 USD, and parity
    # with the published results is checked to the last printed digit.
    assert (profiles.local_time_s(profile), profiles.local_cost_usd(profile)) == PUBLISHED_LOCAL[
        name
    ]


def test_local_cost_follows_the_electricity_price() -> None:
    tx2 = profiles.device("Jetson TX2")
    assert profiles.local_cost_usd(tx2, usd_per_kwh=0.3336) == pytest.approx(
        2 * profiles.local_cost_usd(tx2), rel=1e-12
    )


def test_cloud_tables() -> None:
    assert [profiles.cloud_time_s(profiles.network("Wired"), k) for k in range(4)] == [
        6.46030, 4.76134, 6.24569, 6.98211
    ]  # fmt: skip
    assert profiles.network("4G").latency_s_by_views == (0.5, 16.603, 17.636, 19.573)
    assert [profiles.cloud_cost_usd(k) for k in range(4)] == [0.00049, 0.00500, 0.00945, 0.01368]
    assert set(profiles.NETWORKS) == {"Wired", "WiFi", "5G", "4G"}


def test_more_views_than_measured_extend_linearly_by_the_last_step() -> None:
    wifi = profiles.network("WiFi")
    step = 2.238 - 2.016
    assert profiles.cloud_time_s(wifi, 4) == pytest.approx(2.238 + step)
    assert profiles.cloud_time_s(wifi, 6) == pytest.approx(2.238 + 3 * step)
    assert profiles.cloud_cost_usd(5) == pytest.approx(0.01368 + 2 * (0.01368 - 0.00945))
    with pytest.raises(ValueError):
        profiles.cloud_cost_usd(-1)


def test_unknown_profiles_list_the_valid_names() -> None:
    with pytest.raises(TmoGraphError, match="unknown device profile 'Jetson TX3'.*Jetson TX2"):
        profiles.device("Jetson TX3")
    with pytest.raises(TmoGraphError, match="unknown network profile '3G'.*Wired, WiFi, 5G, 4G"):
        profiles.network("3G")
