"""Device and network profiles, cloud price tables, and the cost of one call.

Two kinds of numbers live here:
- the paper's profiles (device GFLOPS / power, network latency per number of uploaded views),
  used by the simulator and as the *expected* cost of an action before it runs;
- list prices of cloud models, used to turn the token usage a cloud call reports into USD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tmo_graph.errors import TmoGraphError


@dataclass(frozen=True)
class ModelPrice:
    """List price of a cloud chat model, USD per million tokens."""

    input_per_mtok: float
    output_per_mtok: float
    # Tokens billed per image sent with detail="low" (OpenAI's vision pricing), which is
    # also the base of a detail="high" image.
    tokens_per_image: int
    # Tokens per 512 px tile of a detail="high" image, on top of the base.
    tokens_per_tile: int = 0
    # ---- audio input (issue 13) ----
    # USD per million audio input tokens; None: the model takes no audio (clips go to it as
    # their device transcripts instead).
    input_audio_per_mtok: float | None = None
    # Audio input tokens per second of clip. OpenAI's Realtime docs count user audio at one
    # token per 100 ms; its chat audio models are assumed to count alike.
    audio_tokens_per_s: float = 10.0


# OpenAI list prices (platform pricing page). gpt-4o-mini bills low-detail images at
# 2,833 tokens (its per-token price is lower, its image token count higher).
PRICES: dict[str, ModelPrice] = {
    "gpt-4o": ModelPrice(
        input_per_mtok=2.50, output_per_mtok=10.00, tokens_per_image=85, tokens_per_tile=170
    ),
    "gpt-4o-mini": ModelPrice(
        input_per_mtok=0.15, output_per_mtok=0.60, tokens_per_image=2833, tokens_per_tile=5667
    ),
    # Audio-input models (OpenAI list prices: gpt-4o-audio-preview $40 and
    # gpt-4o-mini-audio-preview $10 per million audio input tokens; text as their base
    # models). They take no images here: tokens_per_image is the base model's, kept so an
    # image sent anyway is still priced, never free.
    "gpt-4o-audio-preview": ModelPrice(
        input_per_mtok=2.50,
        output_per_mtok=10.00,
        tokens_per_image=85,
        tokens_per_tile=170,
        input_audio_per_mtok=40.00,
    ),
    "gpt-4o-mini-audio-preview": ModelPrice(
        input_per_mtok=0.15,
        output_per_mtok=0.60,
        tokens_per_image=2833,
        tokens_per_tile=5667,
        input_audio_per_mtok=10.00,
    ),
}


def price_for(model: str, table: dict[str, ModelPrice] | None = None) -> ModelPrice:
    """The price of ``model`` in ``table`` (default: :data:`PRICES`)."""
    table = PRICES if table is None else table
    if model not in table:
        raise TmoGraphError(
            f"no price for cloud model {model!r} (known: {', '.join(sorted(table))})",
            "add it under `prices:` in your config, or set `cloud.price_as` to a known model",
        )
    return table[model]


def cloud_call_cost_usd(price: ModelPrice, input_tokens: int, output_tokens: int) -> float:
    """USD for one cloud call from its reported token usage (image tokens are input tokens)."""
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6


def image_tokens(price: ModelPrice, width: int, height: int, detail: str) -> int:
    """Input tokens an image of ``width`` x ``height`` pixels costs (OpenAI's vision rule).

    ``low``: the base, whatever the size. ``high``: the image is scaled to fit 2048 x 2048,
    then its shorter side to 768, and every 512 px tile costs ``tokens_per_tile`` more.
    An unknown size (0 x 0, an image sent by URL) is billed as the largest, 2 x 2 tiles.
    """
    if detail == "low":
        return price.tokens_per_image
    if detail != "high":
        raise TmoGraphError(f"unknown image detail {detail!r}", "use 'low' or 'high'")
    if width <= 0 or height <= 0:
        return price.tokens_per_image + 4 * price.tokens_per_tile
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return price.tokens_per_image + tiles * price.tokens_per_tile


def audio_input_tokens(price: ModelPrice, seconds: float) -> int:
    """Input tokens a clip of ``seconds`` costs, counted at the model's *text* input price,
    so that one input-token count prices text, images and audio alike: the clip's audio
    tokens (``audio_tokens_per_s`` a second, rounded up) times the audio-to-text price
    ratio, rounded up (never under-billed). 0 for a model that takes no audio."""
    if seconds < 0:
        raise TmoGraphError(f"seconds must be >= 0, got {seconds}", "pass a clip length")
    if price.input_audio_per_mtok is None or seconds == 0:
        return 0
    return audio_as_input_tokens(price, math.ceil(seconds * price.audio_tokens_per_s))


def audio_as_input_tokens(price: ModelPrice, audio_tokens: int) -> int:
    """``audio_tokens`` as input tokens at the text input price (rounded up)."""
    if price.input_audio_per_mtok is None or audio_tokens <= 0:
        return 0
    if price.input_per_mtok <= 0:  # free text input: the audio cannot be priced through it
        return audio_tokens
    return math.ceil(audio_tokens * price.input_audio_per_mtok / price.input_per_mtok)


def local_energy_cost_usd(seconds: float, power_w: float, usd_per_kwh: float) -> float:
    """USD of electricity for ``seconds`` of inference at ``power_w`` watts."""
    return seconds * power_w / 3.6e6 * usd_per_kwh


# ---- Device and network profiles (the paper's; shared by the simulator and the live graph) ----
# (written by the lead to unblock the graph; the simulator uses the same names)
#
# The numbers and formulas are the published TMO code's (tmo/devices.py), so the simulator
# reproduces its results bit for bit. The paper measured the cloud for 0..3 uploaded views;
# for more views the tables are extended linearly by their last step (see `_by_views`).


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


# ---- Audio clips as a modality (issue 13; the simulator's assumption, not the paper's) ----
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
