"""The graph's memory in any LangGraph store: where turns live, and the four things done with
them (remember, recall, forget a thread, copy a thread into a fork).

A turn that left a dialogue's recent window is one item: namespace
``("tmo_memory", user, thread)``, key its turn number, value ``{"text", "turn",
"thread_id"}``; the store's index embeds ``text``. So a search scoped to one dialogue reads
the thread's namespace and a search over all of a user's dialogues the user's prefix, on
whatever store runs the graph: :class:`~tmo_graph.memory.chroma_store.ChromaStore`,
LangGraph's ``PostgresStore`` (pgvector), ``InMemoryStore``, or the one ``langgraph dev``
and a LangGraph deployment give (``store.index`` in langgraph.json).
"""

from __future__ import annotations

from collections.abc import Sequence

from langgraph.store.base import BaseStore, PutOp

from tmo_graph.errors import TmoGraphError
from tmo_graph.state import Recalled

NAMESPACE = "tmo_memory"
# The value's field the store's index embeds (langgraph.json's store.index.fields).
FIELDS = ["text"]
_PAGE = 500


def label(text: str) -> str:
    """A user or thread id as a namespace label: LangGraph refuses labels that are empty or
    hold '.' or NUL, so those (and '%', to stay reversible) are percent-escaped."""
    if not isinstance(text, str):
        raise TmoGraphError(
            f"a memory namespace label must be a string, got {type(text).__name__}",
            "pass the user and thread ids as strings",
        )
    if not text:
        return "%"
    return text.replace("%", "%25").replace(".", "%2E").replace("\x00", "%00")


def user_namespace(user_id: str) -> tuple[str, ...]:
    """Every stored turn of ``user_id``, all dialogues."""
    return (NAMESPACE, label(user_id))


def thread_namespace(user_id: str, thread_id: str) -> tuple[str, ...]:
    """The stored turns of one dialogue of ``user_id``."""
    return (NAMESPACE, label(user_id), label(thread_id))


def _check(store: object) -> BaseStore:
    if not isinstance(store, BaseStore):
        raise TmoGraphError(
            f"memory needs a LangGraph BaseStore, got {type(store).__name__}",
            "compile the graph with store=... (build_graph(..., store=...)) or run it "
            "under a LangGraph server, which gives one",
        )
    return store


def remember(
    store: BaseStore, *, user_id: str, thread_id: str, turns: Sequence[tuple[int, str]]
) -> None:
    """Store finished turns ``(number, text)`` of a dialogue; storing one again overwrites it."""
    if not turns:
        return
    namespace = thread_namespace(user_id, thread_id)
    # One batch holds no text twice: LangGraph 1.2's InMemoryStore embeds each distinct text
    # once and then fails to match vectors to items ("Number of embeddings (1) does not match
    # number of indices (2)") when two turns of a batch read alike.
    batches: list[list[PutOp]] = [[]]
    seen: set[str] = set()
    for number, text in turns:
        if text in seen:
            batches.append([])
            seen.clear()
        seen.add(text)
        value = {"text": text, "turn": int(number), "thread_id": thread_id}
        batches[-1].append(PutOp(namespace, str(number), value))
    for batch in batches:
        _check(store).batch(batch)


def recall(
    store: BaseStore,
    *,
    user_id: str,
    query: str,
    k: int,
    min_score: float = -1.0,
    thread_id: str | None = None,
) -> list[Recalled]:
    """The ``k`` stored turns of ``user_id`` closest to ``query`` with a score (cosine) of at
    least ``min_score``; only those of ``thread_id`` when it is given (None: every dialogue
    of the user)."""
    if k <= 0:  # nothing asked: no store call
        return []
    prefix = user_namespace(user_id) if thread_id is None else thread_namespace(user_id, thread_id)
    found = _check(store).search(prefix, query=query, limit=k)
    return [
        Recalled(
            text=str(item.value["text"]),
            score=round(float(item.score), 4),
            thread_id=str(item.value["thread_id"]),
            turn=int(item.value["turn"]),
        )
        # No score: an item the store could not compare (InMemoryStore fills up with them).
        for item in found
        if item.score is not None and item.score >= min_score
    ]


def stored_turns(store: BaseStore, *, user_id: str, thread_id: str | None = None) -> list[int]:
    """The numbers of the stored turns of one dialogue (or of all the user's), unsorted."""
    prefix = user_namespace(user_id) if thread_id is None else thread_namespace(user_id, thread_id)
    numbers: list[int] = []
    while True:
        page = _check(store).search(prefix, limit=_PAGE, offset=len(numbers))
        numbers.extend(int(item.value["turn"]) for item in page)
        if len(page) < _PAGE:
            return numbers


def forget_thread(store: BaseStore, *, user_id: str, thread_id: str) -> int:
    """Delete every stored turn of one dialogue (a restarted dialogue); how many."""
    namespace = thread_namespace(user_id, thread_id)
    deleted = 0
    while page := _check(store).search(namespace, limit=_PAGE):
        store.batch([PutOp(item.namespace, item.key, None) for item in page])
        deleted += len(page)
    return deleted


def copy_thread(store: BaseStore, *, user_id: str, source: str, target: str, before: int) -> int:
    """Store ``source``'s turns numbered below ``before`` again under ``target``: a dialogue
    forked from ``source`` at that turn recalls what was said before it. How many."""
    namespace = thread_namespace(user_id, source)
    turns: list[tuple[int, str]] = []
    while True:
        page = _check(store).search(
            namespace, filter={"turn": {"$lt": int(before)}}, limit=_PAGE, offset=len(turns)
        )
        turns.extend((int(item.value["turn"]), str(item.value["text"])) for item in page)
        if len(page) < _PAGE:
            break
    remember(store, user_id=user_id, thread_id=target, turns=turns)
    return len(turns)
