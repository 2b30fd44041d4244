"""How much a chat request may carry and how often a key may ask (``server:`` settings),
checked before any work.

Size: counted over what the request adds to its thread: messages, image parts (OpenAI
``image_url``, LangChain ``image``), audio parts (OpenAI ``input_audio``, LangChain
``audio``), each inline image's and clip's decoded size (from its base64 length: nothing is
decoded to measure it) and the ``max_tokens`` / ``max_completion_tokens`` asked
(:func:`check_request`). A client that resends the whole chat is not refused for its
history: the messages the thread holds already (by their content chain,
:mod:`tmo_graph.server.continuity`) and media it holds (the same content hash) are not
counted again. Each refusal names the limit and what to change. The body's own size is
checked while it is read (:func:`read_body`).

Rate: requests per API key over a moving window (the ``limits`` library, in this process,
:class:`RateLimiter`). Each worker counts its own requests: behind a load balancer with N
workers a key may make up to N times its rate in the worst case (sticky sessions keep it at
one worker's count).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Collection, Sequence
from functools import lru_cache
from typing import Any

from tmo_graph.errors import TmoGraphError
from tmo_graph.sections import ServerSettings
from tmo_graph.threads.chains import media_hash

IMAGE_PARTS = ("image_url", "image")
AUDIO_PARTS = ("input_audio", "audio")
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")


class LimitExceeded(Exception):
    """A request over a limit: the HTTP status, the message and the request field."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.3g} MiB" if n >= 1024 * 1024 else f"{n} bytes"


async def read_body(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is over ``limit`` bytes: by its
    Content-Length before reading, else while it streams in."""
    too_big = LimitExceeded(
        413,
        f"the request body is over the server's limit of {_mib(limit)} (server.max_body_bytes); "
        "send smaller images or fewer messages",
    )
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_big
        except ValueError:
            raise LimitExceeded(400, "the Content-Length header is not a number") from None
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


def part_data(part: Any) -> str | None:
    """The data of a media part that identifies it (a data or http URL, or base64); None
    for a text part or a shape that is not media."""
    if not isinstance(part, dict):
        return None
    kind = part.get("type")
    value: Any = None
    if kind == "image_url":
        value = part.get("image_url")
        value = value.get("url") if isinstance(value, dict) else value
    elif kind == "input_audio":
        value = part.get("input_audio")
        value = value.get("data") if isinstance(value, dict) else value
    elif kind in ("image", "audio", "file"):
        value = part.get("base64") or part.get("data") or part.get("url")
    return value if isinstance(value, str) else None


def _base64_bytes(data: str) -> int:
    """The decoded size of base64 text, without decoding it."""
    text = data.strip()
    return len(text) * 3 // 4 - text[-2:].count("=")


def _inline_size(part: dict[str, Any], kind: str) -> int | None:
    """Decoded bytes of an inline image or clip; None for a URL or a shape not known here
    (the part's own check then refuses or accepts it)."""
    value: Any
    if kind == "image_url":  # OpenAI: a data URL (or http URL) in image_url.url
        value = part.get("image_url")
        value = value.get("url") if isinstance(value, dict) else value
    elif kind == "input_audio":  # OpenAI: bare base64 in input_audio.data
        value = part.get("input_audio")
        value = value.get("data") if isinstance(value, dict) else value
        return _base64_bytes(value) if isinstance(value, str) else None
    else:  # LangChain blocks: bare base64 in "base64" / "data", or a URL in "url"
        value = part.get("base64") or part.get("data")
        if isinstance(value, str):
            return _base64_bytes(value.partition(",")[2] if value.startswith("data:") else value)
        value = part.get("url")
    if not isinstance(value, str) or not value.startswith("data:"):
        return None  # an http(s) URL, or a shape the part's own check refuses
    _, sep, payload = value.partition(",")
    return _base64_bytes(payload) if sep else None


def check_request(
    messages: Sequence[Any],
    extra: dict[str, Any],
    limits: ServerSettings,
    held: int = 0,
    known_media: Collection[str] = (),
) -> None:
    """Refuse (:class:`LimitExceeded`) a request over any of ``limits``.

    ``messages``: the request's messages (objects with a ``content``); ``extra``: its other
    fields (where ``max_tokens`` is). ``held``: how many leading messages the thread holds
    already, and ``known_media``: the content hashes of the media it holds; neither counts.
    """
    for name in TOKEN_FIELDS:
        if name not in extra or extra[name] is None:
            continue
        value = extra[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LimitExceeded(400, f"{name} must be a whole number >= 1", name)
        if value > limits.max_tokens:
            raise LimitExceeded(
                400,
                f"{name} {value} is over this server's ceiling of {limits.max_tokens} "
                f"(server.max_tokens); ask for at most {limits.max_tokens}",
                name,
            )
    if len(messages) - held > limits.max_messages:
        raise LimitExceeded(
            400,
            f"the request adds {len(messages) - held} messages, over this server's limit of "
            f"{limits.max_messages} (server.max_messages); on a thread, send only the new "
            "user message (the thread keeps the rest)",
            "messages",
        )
    # Per kind of media part: (count, bytes) limits and how the messages name them.
    media = {
        "image": (IMAGE_PARTS, limits.max_images, limits.max_image_bytes),
        "audio": (AUDIO_PARTS, limits.max_audio, limits.max_audio_bytes),
    }
    words = {  # plural, setting, size phrase, setting, fix
        "image": (
            "images",
            "max_images",
            "the image is",
            "image",
            "max_image_bytes",
            "send it smaller (768 px on the longest side is plenty)",
        ),
        "audio": (
            "audio clips",
            "max_audio",
            "the audio clip is",
            "clip",
            "max_audio_bytes",
            "send a shorter clip",
        ),
    }
    counts = dict.fromkeys(media, 0)
    for i, message in enumerate(messages):
        if i < held:
            continue
        content = getattr(message, "content", None)
        if not isinstance(content, list):
            continue
        for k, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            where = f"messages[{i}].content[{k}]"
            media_kind = next((m for m, (types, _, _) in media.items() if kind in types), None)
            if media_kind is None or kind is None:
                continue
            data = part_data(part)
            if data is not None and media_hash(data) in known_media:
                continue  # the thread holds it: a resent chat is not refused for its history
            _, most, most_bytes = media[media_kind]
            plural, count_field, is_phrase, per, bytes_field, fix = words[media_kind]
            counts[media_kind] += 1
            if counts[media_kind] > most:
                raise LimitExceeded(
                    400,
                    f"the request carries more than {most} {plural}, this "
                    f"server's limit (server.{count_field}); send fewer {plural.split()[-1]}",
                    where,
                )
            size = _inline_size(part, kind)
            if size is not None and size > most_bytes:
                raise LimitExceeded(
                    413,
                    f"{where}: {is_phrase} {_mib(size)}, over this server's limit of "
                    f"{_mib(most_bytes)} per {per} (server.{bytes_field}); {fix}",
                    where,
                )


# --------------------------------------------------------------------------- rate


@lru_cache(maxsize=256)
def _item(rate: str) -> Any:
    from limits import parse  # the `limits` library (absolute import), not this module

    try:
        return parse(rate)
    except ValueError:
        raise TmoGraphError(f"rate {rate!r} does not parse", "write e.g. 60/minute") from None


class RateLimiter:
    """Counts each key's requests; :meth:`hit` says how long to wait when one is too many."""

    def __init__(self) -> None:
        try:
            from limits.storage import MemoryStorage
            from limits.strategies import MovingWindowRateLimiter
        except ImportError:
            raise TmoGraphError(
                "the rate limiter (package `limits`) is not installed",
                "pip install 'tmo-graph[serve]'",
            ) from None
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, key_id: str, rate: str) -> int | None:
        """Count one request of ``key_id`` at ``rate``; None when it is allowed, else the
        whole seconds until one would be (at least 1)."""
        item = _item(rate)
        if self._limiter.hit(item, key_id):
            return None
        reset = self._limiter.get_window_stats(item, key_id).reset_time
        return max(1, math.ceil(reset - time.time()))
