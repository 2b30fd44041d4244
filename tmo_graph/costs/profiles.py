"""The paper's device and network profiles: the expected time and price of an action.

Shared by the simulator and the live graph (as the expected cost of an action before it
runs). List prices of cloud models are in :mod:`tmo_graph.costs.prices`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tmo_graph.costs.prices import PRICES
from tmo_graph.errors import TmoGraphError

# The numbers and formulas are the published TMO code's (tmo/devices.py), so the simulator
# reproduces its results bit for bit. The paper measured the cloud for 0..3 uploaded views;
# for more views the tables are extended linearly by their last step (see `_by_views`).


@dataclass(frozen=True)
class MeasuredSpeeds:
    """What the device and the endpoint show now (:mod:`tmo_graph.costs.device` measures it),
    to price actions at instead of the configured speeds."""

    local_tokens_per_s: float
    local_prefill_tokens_per_s: float
    cloud_time_factor: float  # measured / expected cloud seconds


@dataclass(frozen=True)
class DeviceProfile:
    """An edge device: peak compute (GFLOPS) and peak power (W)."""

    name: str
    gflops: float
    power_w: float


@dataclass(frozen=True)
class NetworkProfile:
    """End-to-end latency of a cloud call by number of uploaded views (index 0: text only)."""

    name: str
    latency_s_by_views: tuple[float, ...]


DEVICES: dict[str, DeviceProfile] = {
    d.name: d
    for d in (
        DeviceProfile("Raspberry Pi-4B", 13.5, 8),
        DeviceProfile("Raspberry Pi-5", 31.4, 12),
        DeviceProfile("Jetson Nano", 472.0, 10),
        DeviceProfile("Jetson TX2", 1.33e3, 15),
        DeviceProfile("Jetson Xavier NX", 21e3, 20),
        DeviceProfile("Jetson Orin NX", 100e3, 25),
        DeviceProfile("Jetson AGX Orin", 275e3, 60),
        DeviceProfile("iPhone 15 Pro", 35e3, 15),
    )
}

NETWORKS: dict[str, NetworkProfile] = {
    n.name: n
    for n in (
        NetworkProfile("Wired", (6.46030, 4.76134, 6.24569, 6.98211)),
        NetworkProfile("WiFi", (0.5, 1.898, 2.016, 2.238)),
        NetworkProfile("5G", (0.5, 6.037, 6.412, 7.118)),
        NetworkProfile("4G", (0.5, 16.603, 17.636, 19.573)),
    )
}

# The paper's cloud price per call by number of uploaded views, the same for every network.
CLOUD_COST_USD_BY_VIEWS: tuple[float, ...] = (0.00049, 0.00500, 0.00945, 0.01368)

# The paper's local LLM workload: a 3.8e9-parameter model, 1024 base / 2048 total tokens.
PAPER_LLM_PARAMETERS = 3.8e9
PAPER_BASE_TOKENS = 1024
PAPER_TOTAL_TOKENS = 2048
PAPER_USD_PER_KWH = 0.1668  # 16.68 cents/kWh


def device(name: str) -> DeviceProfile:
    """The device profile called ``name``."""
    if name not in DEVICES:
        raise TmoGraphError(f"unknown device profile {name!r}", f"use one of: {', '.join(DEVICES)}")
    return DEVICES[name]


def network(name: str) -> NetworkProfile:
    """The network profile called ``name``."""
    if name not in NETWORKS:
        raise TmoGraphError(
            f"unknown network profile {name!r}", f"use one of: {', '.join(NETWORKS)}"
        )
    return NETWORKS[name]


def local_time_s(profile: DeviceProfile) -> float:
    """The paper's local inference time: FLOPs of one answer over the device's peak GFLOPS."""
    flops_per_token = 2 * PAPER_LLM_PARAMETERS / PAPER_BASE_TOKENS
    return flops_per_token * PAPER_TOTAL_TOKENS / (profile.gflops * 1e9)


def local_cost_usd(profile: DeviceProfile, usd_per_kwh: float = PAPER_USD_PER_KWH) -> float:
    """Electricity for one local answer at the device's peak power.

    Computed in the published code's order (energy times price per joule): the usage
    min-max normalisation divides by the spread, so the last bits are kept identical.
    """
    energy_j = profile.power_w * local_time_s(profile)
    return energy_j * (usd_per_kwh / 3.6e6)


def _by_views(table: tuple[float, ...], k_views: int) -> float:
    """Table value for ``k_views``; beyond the table, extended linearly by the last step.

    The paper measured 0..3 views only. Linear growth by the last measured step (one more
    image upload and its tokens) is the simplest extension that keeps cost increasing in k.
    """
    if k_views < 0:
        raise ValueError(f"k_views must be >= 0, got {k_views}")
    if k_views < len(table):
        return table[k_views]
    step = table[-1] - table[-2]
    return table[-1] + step * (k_views - len(table) + 1)


def cloud_time_s(profile: NetworkProfile, k_views: int) -> float:
    """Latency of a cloud call uploading ``k_views`` views (0: text only)."""
    return _by_views(profile.latency_s_by_views, k_views)


def cloud_cost_usd(k_views: int) -> float:
    """Price of a cloud call uploading ``k_views`` views (0: text only), any network."""
    return _by_views(CLOUD_COST_USD_BY_VIEWS, k_views)


# ---- Audio clips as a modality (the simulator's assumption, not the paper's) ----
#
# The paper measured camera views only. A cloud call that also sends an audio clip is priced
# here as the same call without the clip (the tables above, by its number of images) plus
# the clip's own upload time and audio tokens:
# - the clip is what the live graph sends: trimmed, mono 16 kHz 16-bit PCM WAV, so
#   32,000 bytes a second; a voice note or workshop recording of AUDIO_CLIP_S seconds;
# - upload time = its bytes at an assumed uplink rate per network profile (typical uplink
#   rates, not measured here); the model's extra time to read ~100 audio tokens is left out;
# - money = its audio input tokens by the price row of SIM_AUDIO_PRICE_AS (the live graph's
#   row: audio_tokens_per_s 10, OpenAI's one token per 100 ms; gpt-4o-audio-preview's audio
#   input list price, 40 USD per million tokens), unrounded: a 10 s clip costs 0.004 USD,
#   close to the paper's price of one more image (0.0042-0.0045 USD).
AUDIO_CLIP_S = 10.0
AUDIO_BYTES_PER_S = 32_000
SIM_AUDIO_PRICE_AS = "gpt-4o-audio-preview"
UPLINK_MBPS: dict[str, float] = {"Wired": 100.0, "WiFi": 20.0, "5G": 10.0, "4G": 2.0}


def audio_clip_time_s(profile: NetworkProfile, seconds: float = AUDIO_CLIP_S) -> float:
    """Upload time of an audio clip of ``seconds`` over ``profile`` (added to the call's)."""
    if not seconds > 0:  # also refuses NaN
        raise TmoGraphError(f"an audio clip lasts > 0 s, got {seconds!r}", "e.g. 10.0")
    if profile.name not in UPLINK_MBPS:
        raise TmoGraphError(
            f"no uplink rate for network profile {profile.name!r}",
            f"add it to costs.UPLINK_MBPS (known: {', '.join(UPLINK_MBPS)})",
        )
    return seconds * AUDIO_BYTES_PER_S * 8 / (UPLINK_MBPS[profile.name] * 1e6)


def audio_clip_cost_usd(seconds: float = AUDIO_CLIP_S) -> float:
    """Price of the audio input tokens of a clip of ``seconds`` (added to the call's)."""
    if not seconds > 0:
        raise TmoGraphError(f"an audio clip lasts > 0 s, got {seconds!r}", "e.g. 10.0")
    row = PRICES[SIM_AUDIO_PRICE_AS]
    assert row.input_audio_per_mtok is not None  # an audio model's row (tested)
    return seconds * row.audio_tokens_per_s * row.input_audio_per_mtok / 1e6
