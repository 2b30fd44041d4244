"""Memory through the platform's store: `langgraph dev` serving langgraph.json (its
``store.index`` embeds with the project's MiniLM), driven with langgraph_sdk. Turns beyond
the recent window go to the server's store, and a later question recalls the old turn that
answers it from there, scoped per user and thread as everywhere else."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration_tests.servers import langgraph_dev
from tmo_graph.memory.recall import thread_namespace, user_namespace

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    work = tmp_path_factory.mktemp("studio-memory")
    env = {
        "TMO_CLOUD__MODE": "off",  # every turn answered by the local model
        # The settings' own store (Chroma here): it must stay empty, the platform's is used.
        "TMO_MEMORY__PERSIST_DIR": str(work / "chroma"),
    }
    with langgraph_dev(work, env) as server:
        yield server.url, work / "chroma"


def _turn(client: Any, thread: str, text: str, context: dict[str, Any]) -> list[dict[str, Any]]:
    """One turn; the ``recalled`` of each step's state, as the thread's history shows it."""
    client.runs.wait(
        thread, "tmo", input={"messages": [{"role": "user", "content": text}]}, context=context
    )
    history = client.threads.get_history(thread, limit=20)
    # Newest first: the first state waiting for `route` is this turn's, after recall_memory.
    after_recall = next(h for h in history if h["next"] == ["route"])
    return list(after_recall["values"]["recalled"])


def test_old_turns_are_recalled_through_the_platform_store(server: tuple[str, Path]) -> None:
    from langgraph_sdk import get_sync_client

    url, chroma_folder = server
    client = get_sync_client(url=url)
    user = f"mem-{uuid.uuid4().hex[:8]}.test"  # a '.' the store's labels must escape
    context = {
        "policy": "always-local",
        "user_id": user,
        "recent_turns": 1,
        "recall_k": 1,
        "min_recall_score": 0.3,
        "recall_scope": "thread",
    }
    thread = client.threads.create()["thread_id"]
    for text in ("My cat is called Miso.", "I planted tomatoes in the garden.", "It rained."):
        _turn(client, thread, text, context)
    recalled = _turn(client, thread, "What is the name of my cat?", context)
    # Two turns had left the one-turn window; the question recalls the one about the cat.
    assert [(r["turn"], r["thread_id"]) for r in recalled] == [(0, thread)]
    assert "Miso" in recalled[0]["text"] and recalled[0]["score"] >= 0.3
    # It came from the server's store: the thread's namespace holds turns 0 and 1 ...
    items = client.store.search_items(list(thread_namespace(user, thread)), limit=10)["items"]
    assert sorted(int(i["key"]) for i in items) == [0, 1]
    found = client.store.search_items(list(user_namespace(user)), query="name of my cat", limit=1)[
        "items"
    ]
    assert "Miso" in found[0]["value"]["text"] and found[0]["score"] is not None
    # ... and the settings' own Chroma store was never written to.
    assert not any(chroma_folder.glob("*/data_level0.bin"))
    values = client.threads.get_state(thread)["values"]
    assert len(values["messages"]) == 8 and values["remembered_turns"] == 2  # all turns kept

    # Scope as everywhere: a new dialogue recalls nothing of the other one ("thread") ...
    other = client.threads.create()["thread_id"]
    assert _turn(client, other, "What is the name of my cat?", context) == []
    # ... unless recall_scope is "user"; another user never sees it.
    wide = {**context, "recall_scope": "user"}
    assert [r["thread_id"] for r in _turn(client, other, "Is my cat called Miso?", wide)] == [
        thread
    ]
    stranger = client.threads.create()["thread_id"]
    assert _turn(client, stranger, "Is my cat called Miso?", {**wide, "user_id": "x"}) == []
