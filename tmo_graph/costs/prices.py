"""List prices of cloud models, and the USD of one call from the tokens it reports.

The paper's device and network profiles, which price an action *before* it runs, are in
:mod:`tmo_graph.costs.profiles`.
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
    # ---- audio input ----
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
