"""The content chains that find a resent dialogue's thread: the hash and the stores."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tmo_graph.server.continuity import header_thread, history_of
from tmo_graph.server.schemas import ChatMessage
from tmo_graph.threads.chains import (
    Link,
    MemoryChains,
    SqliteChains,
    ThreadChains,
    chain_of,
    extend,
    media_hash,
)


def test_the_chain_ignores_reformatted_whitespace_but_not_roles_words_order_or_media() -> None:
    base = extend("", "user", "Is the pot  boiling?\n")
    assert base == extend("", "user", " Is the pot boiling? ")
    assert base != extend("", "assistant", "Is the pot boiling?")
    assert base != extend("", "user", "Is the pot boiling")
    assert base != extend("", "user", "Is the pot boiling?", [media_hash("data:...")])
    one = chain_of([("user", "a", ()), ("assistant", "b", ())])
    other = chain_of([("user", "b", ()), ("assistant", "a", ())])
    assert one[-1] != other[-1] and len(one) == 2
    # Pieces are length-prefixed: moving text between role and text changes the hash.
    assert extend("", "user", "x") != extend("", "userx", "")


def test_a_history_is_its_dialogue_before_the_trailing_questions_without_the_persona() -> None:
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="one"),
        ChatMessage(role="assistant", content="ok"),
        ChatMessage(role="user", content="two"),
        ChatMessage(role="user", content="three"),
    ]
    history = history_of(messages)
    assert history.prefix == 2 and history.indices == [1, 2, 3, 4]
    assert history.prefix_chain == chain_of([("user", "one", ()), ("assistant", "ok", ())])[-1]
    assert history.held_from(history.prefix_chain) == 3  # the request's messages[3:] are new
    # Another persona is not another dialogue.
    other = history_of([ChatMessage(role="system", content="Be long."), *messages[1:]])
    assert other.prefix_chain == history.prefix_chain


def test_a_configured_header_names_a_thread_per_user() -> None:
    assert header_thread("chat-1", "ann", "h") != header_thread("chat-1", "ben", "h")
    assert header_thread("chat-1", "ann", "h") == header_thread(" chat-1 ", "ann", "h")
    assert header_thread(None, "ann", "h") is None and header_thread("  ", "ann", "h") is None


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_store_finds_chains_per_user_and_keeps_the_first_thread(
    kind: str, tmp_path: Path
) -> None:
    async def run() -> None:
        store: ThreadChains = (
            MemoryChains() if kind == "memory" else SqliteChains(tmp_path / "t.sqlite")
        )
        try:
            await store.add("ann", "c1", "t1", 0)
            await store.add("ann", "c1", "t2", 5)  # a fork shares its history: t1 keeps it
            await store.add("ann", "c2", "t1", 1)
            assert await store.find("ann", ["c1", "c2", "c3"]) == {
                "c1": Link("t1", 0),
                "c2": Link("t1", 1),
            }
            assert await store.find("ben", ["c1"]) == {}
            assert await store.find("ann", []) == {}
        finally:
            await store.aclose()

    asyncio.run(run())
    if kind == "sqlite":  # kept in the file: a restarted server finds it

        async def again() -> None:
            store = SqliteChains(tmp_path / "t.sqlite")
            assert await store.find("ann", ["c2"]) == {"c2": Link("t1", 1)}
            await store.aclose()

        asyncio.run(again())
