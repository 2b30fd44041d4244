"""What one chat request may carry: counted over every message, each part in either the
OpenAI or the LangChain form, sizes from the base64 length, the body while it streams in."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from tmo_graph.sections import ServerSettings
from tmo_graph.server.limits import LimitExceeded, check_request, read_body

LIMITS = ServerSettings(
    max_messages=3, max_images=2, max_image_bytes=100, max_audio=1, max_audio_bytes=100
)


def _b64(n: int) -> str:
    return base64.b64encode(b"\1" * n).decode()


def _msg(*parts: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(content=list(parts))


def _refusal(messages: list[Any], **extra: Any) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as info:
        check_request(messages, extra, LIMITS)
    return info.value


def test_images_and_clips_are_counted_over_the_whole_request_in_both_forms() -> None:
    openai_image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_b64(9)}"}}
    langchain_image = {"type": "image", "base64": _b64(9), "mime_type": "image/png"}
    url_image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    check_request([_msg(openai_image), _msg(langchain_image)], {}, LIMITS)  # 2: the limit
    third = _refusal([_msg(openai_image), _msg(langchain_image), _msg(url_image)])
    assert third.status == 400 and "more than 2 images" in third.message
    assert third.param == "messages[2].content[0]"
    clip = {"type": "input_audio", "input_audio": {"data": _b64(50), "format": "wav"}}
    langchain_clip = {"type": "audio", "data": _b64(50), "mime_type": "audio/wav"}
    assert "more than 1 audio clips" in _refusal([_msg(clip, langchain_clip)]).message


def test_sizes_come_from_the_base64_length_exactly() -> None:
    for n in (98, 99, 100):  # every padding length
        check_request([_msg({"type": "audio", "base64": _b64(n)})], {}, LIMITS)
    big = _refusal([_msg({"type": "input_audio", "input_audio": {"data": _b64(101)}})])
    assert big.status == 413 and "101 bytes, over this server's limit of 100 bytes" in big.message
    image = {"type": "image_url", "image_url": f"data:image/png;base64,{_b64(101)}"}
    assert "server.max_image_bytes" in _refusal([_msg(image)]).message


def test_messages_and_max_tokens_are_bounded() -> None:
    text = SimpleNamespace(content="hi")
    assert "4 messages, over this server's limit of 3" in _refusal([text] * 4).message
    assert _refusal([text], max_tokens=4097).param == "max_tokens"
    assert "whole number" in _refusal([text], max_completion_tokens=True).message
    assert "whole number" in _refusal([text], max_tokens=2.5).message
    check_request([text], {"max_tokens": 4096, "max_completion_tokens": None}, LIMITS)


def test_the_body_is_refused_by_its_length_or_while_it_streams() -> None:
    async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async def run(declared: str | None, *parts: bytes) -> bytes:
        return await read_body(chunks(*parts), declared, 10)

    assert asyncio.run(run("6", b"abc", b"def")) == b"abcdef"
    with pytest.raises(LimitExceeded, match="limit of 10 bytes"):
        asyncio.run(run("11", b"x"))  # refused before a byte is read
    with pytest.raises(LimitExceeded) as info:
        asyncio.run(run(None, b"123456", b"789012"))  # chunked: no length given
    assert info.value.status == 413
    with pytest.raises(LimitExceeded, match="Content-Length"):
        asyncio.run(run("ten", b"x"))


def test_a_langchain_image_block_is_sized_too() -> None:
    block = {"type": "image", "base64": _b64(101), "mime_type": "image/png"}
    assert _refusal([_msg(block)]).status == 413
    by_url = {"type": "image", "url": f"data:image/png;base64,{_b64(101)}"}
    assert _refusal([_msg(by_url)]).status == 413


def test_what_the_thread_holds_is_not_counted_again() -> None:
    """Messages before ``held`` and media with a hash in ``known_media`` are the thread's
    already: a resent chat is not refused for its history, new media still are."""
    from tmo_graph.threads.chains import media_hash

    def image(n: int) -> dict[str, Any]:
        return {"type": "image_url", "image_url": {"url": f"https://example.org/{n}.png"}}

    history = [_msg(image(n)) for n in range(5)]
    check_request([*history, _msg(image(9))], {}, LIMITS, held=5)
    with pytest.raises(LimitExceeded):
        check_request([*history, _msg(image(9))], {}, LIMITS, held=3)  # 3 new images
    again = [image(0), image(1), image(9)]
    known = {media_hash(f"https://example.org/{n}.png") for n in range(5)}
    check_request([*history, _msg(*again)], {}, LIMITS, held=5, known_media=known)
    with pytest.raises(LimitExceeded):
        check_request([*history, _msg(image(7), image(8), image(9))], {}, LIMITS, held=5)
