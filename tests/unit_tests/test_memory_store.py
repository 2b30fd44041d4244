"""The graph's memory on each store it runs on: LangGraph's InMemoryStore, the Chroma store
(embedded Chroma in a folder) and LangGraph's PostgresStore with pgvector (a real PostgreSQL
from tests/pgvector.py, reached over its unix socket: unit tests block TCP)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import Embeddings
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore

from tests.pgvector import PgVector
from tests.unit_tests.fakes import FakeLocal
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.memory.chroma_store import ChromaStore
from tmo_graph.memory.clients import chroma_client
from tmo_graph.memory.recall import (
    FIELDS,
    copy_thread,
    forget_thread,
    label,
    recall,
    remember,
    stored_turns,
    thread_namespace,
)
from tmo_graph.memory.stores import postgres_store
from tmo_graph.services import Services
from tmo_graph.settings import Settings

DIMS = 64


class WordEmbeddings(Embeddings):
    """Bag of words hashed into 64 dimensions: texts that share words are close, so a
    question finds the turn that answered it (the deterministic fakes are random per text).
    Counts what it embedded."""

    def __init__(self) -> None:
        self.documents: list[str] = []
        self.queries: list[str] = []

    @staticmethod
    def vector(text: str) -> list[float]:
        out = [0.0] * DIMS
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            if word not in {"user", "assistant", "the", "is", "my", "what", "a"}:
                out[int(hashlib.sha256(word.encode()).hexdigest(), 16) % DIMS] += 1.0
        out[0] += 0.01  # never the zero vector
        return out

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.documents.extend(texts)
        return [self.vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        self.queries.append(text)
        return self.vector(text)


StoreFactory = Callable[[Embeddings], BaseStore]


@pytest.fixture(params=["in-memory", "chroma", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A fresh, empty store of each kind, indexed with the embeddings it is given."""
    opened: list[Any] = []

    def make(embeddings: Embeddings) -> BaseStore:
        if request.param == "in-memory":
            return InMemoryStore(index={"embed": embeddings, "dims": DIMS, "fields": FIELDS})
        if request.param == "chroma":
            return ChromaStore(chroma_client(tmp_path / "chroma"), embeddings, fields=FIELDS)
        server: PgVector = request.getfixturevalue("pgvector")
        store = postgres_store(server.fresh().socket_url, embeddings, dims=DIMS)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.conn.close()


def test_recall_is_scoped_per_thread_or_user_and_kept_per_user(make_store: StoreFactory) -> None:
    store = make_store(WordEmbeddings())
    ada = "ada.lovelace@example.org"  # a '.' LangGraph refuses in a namespace label
    turns_a = [(0, "User: my cat is called Miso"), (1, "User: I bake sourdough bread")]
    remember(store, user_id=ada, thread_id="kitchen.1", turns=turns_a)
    remember(store, user_id=ada, thread_id="garden", turns=[(0, "User: the cat sleeps outside")])
    remember(store, user_id="bo", thread_id="kitchen.1", turns=[(0, "User: cat named Rex")])

    found = recall(store, user_id=ada, query="what is the cat called", k=5, thread_id="kitchen.1")
    assert [(r["thread_id"], r["turn"]) for r in found] == [("kitchen.1", 0), ("kitchen.1", 1)]
    assert found[0]["text"] == turns_a[0][1] and found[0]["score"] > found[1]["score"]
    # scope "user": every dialogue of the user, never another user's
    found = recall(store, user_id=ada, query="cat", k=5)
    assert {(r["thread_id"], r["turn"]) for r in found} == {
        ("kitchen.1", 0),
        ("kitchen.1", 1),
        ("garden", 0),
    }
    assert all("Rex" not in r["text"] for r in found)
    assert [r["text"] for r in recall(store, user_id="bo", query="cat", k=5)] == [
        "User: cat named Rex"
    ]
    # k and min_score as before: the closest k, and none below the score asked for
    assert len(recall(store, user_id=ada, query="cat", k=1)) == 1
    strict = recall(store, user_id=ada, query="sourdough bread", k=5, min_score=0.6)
    assert [r["turn"] for r in strict] == [1] and strict[0]["thread_id"] == "kitchen.1"
    assert recall(store, user_id=ada, query="cat", k=0) == []
    assert recall(store, user_id="nobody", query="cat", k=5) == []


def test_storing_again_overwrites_and_forks_and_forgets_work(make_store: StoreFactory) -> None:
    store = make_store(WordEmbeddings())
    turns = [(n, f"User: fact number {n} about topic{n}") for n in range(5)]
    remember(store, user_id="u", thread_id="t", turns=turns)
    remember(store, user_id="u", thread_id="t", turns=[(4, "User: topic4 corrected")])
    assert sorted(stored_turns(store, user_id="u", thread_id="t")) == [0, 1, 2, 3, 4]
    assert recall(store, user_id="u", query="topic4", k=1, thread_id="t")[0]["text"] == (
        "User: topic4 corrected"
    )
    # A fork at turn 3 carries the turns below it, under its own thread.
    assert copy_thread(store, user_id="u", source="t", target="fork", before=3) == 3
    assert sorted(stored_turns(store, user_id="u", thread_id="fork")) == [0, 1, 2]
    assert recall(store, user_id="u", query="fact number 1 about topic1", k=1, thread_id="fork")[
        0
    ] == {
        "text": "User: fact number 1 about topic1",
        "score": pytest.approx(1.0, abs=1e-3),
        "thread_id": "fork",
        "turn": 1,
    }
    assert forget_thread(store, user_id="u", thread_id="t") == 5
    assert stored_turns(store, user_id="u", thread_id="t") == []
    assert sorted(stored_turns(store, user_id="u")) == [0, 1, 2]  # the fork stays


def _graph_services(store: BaseStore, embeddings: WordEmbeddings, local: FakeLocal) -> Services:
    return Services(
        settings=Settings(),
        local=local,
        cloud=None,
        embeddings=embeddings,
        store=store,
    )


def test_the_graph_stores_each_turn_once_and_recalls_an_old_one(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    embeddings = WordEmbeddings()
    local = FakeLocal(["noted"])
    services = _graph_services(make_store(embeddings), embeddings, local)
    services.media_dir = tmp_path / "media"
    graph = build_graph(services, checkpointer=InMemorySaver())
    assert graph.store is services.store  # compiled with the services' store
    context = Context(
        policy="always-local", user_id="ann", recent_turns=2, recall_k=1, min_recall_score=0.3
    )
    said = [
        HumanMessage("My cat is called Miso."),
        HumanMessage("The door code is 4711.", additional_kwargs={"private": True}),
        HumanMessage("I planted tomatoes."),
        HumanMessage("It rained today."),
        HumanMessage("Lunch was soup."),
        HumanMessage("What is my cat called?"),
    ]
    config = {"configurable": {"thread_id": "ann-1"}}
    for message in said:
        out = graph.invoke({"messages": [message]}, config, context=context)
    # The state keeps every turn; memory holds those beyond the window, the private one not.
    assert [m.content for m in out["messages"][::2]] == [m.content for m in said]
    state = graph.get_state(config).values
    assert state["remembered_turns"] == 3
    assert sorted(stored_turns(services.memory, user_id="ann", thread_id="ann-1")) == [0, 2]
    # Each stored once: the turns' texts were embedded once each, however many turns ran.
    stored_texts = [t for t in embeddings.documents if t.startswith("User:")]
    assert len(stored_texts) == 2 and "4711" not in " ".join(stored_texts)
    # The last question recalled the turn that answered it, into the model's system text.
    assert "Miso" in local.seen[-1][0]["content"]
    assert out["turns"][-1]["turn"] == 5


def test_a_run_uses_the_store_it_is_given_and_a_bad_one_fails(tmp_path: Path) -> None:
    embeddings = WordEmbeddings()
    own = InMemoryStore(index={"embed": embeddings, "dims": DIMS, "fields": FIELDS})
    services = _graph_services(
        InMemoryStore(index={"embed": embeddings, "dims": DIMS, "fields": FIELDS}),
        embeddings,
        FakeLocal(["ok"]),
    )
    services.media_dir = tmp_path / "media"
    graph = build_graph(services, checkpointer=InMemorySaver(), store=own)
    context = Context(policy="always-local", user_id="u", recent_turns=1)
    for text in ["one", "two", "three"]:
        graph.invoke(
            {"messages": [("user", text)]}, {"configurable": {"thread_id": "t"}}, context=context
        )
    # The third turn's recall moved the first (one recent turn kept: the second).
    assert stored_turns(own, user_id="u") == [0]
    assert stored_turns(services.memory, user_id="u") == []  # the compiled store came first
    with pytest.raises(TmoGraphError, match="store must be a LangGraph BaseStore"):
        build_graph(services, store={"not": "a store"})  # type: ignore[arg-type]
    with pytest.raises(TmoGraphError, match="needs a LangGraph BaseStore"):
        remember(object(), user_id="u", thread_id="t", turns=[(0, "x")])  # type: ignore[arg-type]


def test_labels_are_escaped_reversibly() -> None:
    assert label("a.b") == "a%2Eb" and label("") == "%" and label("50%.") == "50%25%2E"
    assert label("plain-id_1") == "plain-id_1"
    with pytest.raises(TmoGraphError, match="must be a string"):
        label(3)  # type: ignore[arg-type]


def test_the_chroma_store_keeps_langgraphs_store_contract(tmp_path: Path) -> None:
    """What other code may ask of any BaseStore: get, put (indexed or not), delete, search
    with filters and without a query, namespaces; and it survives a new process."""
    embeddings = WordEmbeddings()
    store = ChromaStore(chroma_client(tmp_path / "c"), embeddings, fields=FIELDS)
    store.put(("docs", "ann", "a"), "1", {"text": "green tea leaves", "n": 1})
    store.put(("docs", "ann", "b"), "2", {"text": "black coffee beans", "n": 2})
    store.put(("docs", "ann", "b"), "3", {"text": "not indexed", "n": 3}, index=False)
    store.put(("docs", "bo"), "1", {"text": "green tea with lemon and honey", "n": 4})
    first = store.get(("docs", "ann", "a"), "1")
    assert first is not None and first.value == {"text": "green tea leaves", "n": 1}
    assert store.get(("docs", "ann", "a"), "nope") is None
    assert store.get(("nothing", "here"), "1") is None
    # A query searches indexed items only; a filter tests the value's scalar fields.
    hits = store.search(("docs",), query="green tea", limit=5)
    assert [(h.namespace, h.key) for h in hits][:2] == [
        (("docs", "ann", "a"), "1"),
        (("docs", "bo"), "1"),
    ]
    assert all(h.key != "3" for h in hits) and hits[0].score is not None
    assert [h.key for h in store.search(("docs", "ann"), filter={"n": {"$gte": 2}})] == ["2", "3"]
    assert [h.key for h in store.search(("docs", "ann", "b"), filter={"n": 3})] == ["3"]
    assert store.list_namespaces(prefix=("docs", "ann")) == [
        ("docs", "ann", "a"),
        ("docs", "ann", "b"),
    ]
    assert store.list_namespaces(max_depth=2) == [("docs", "ann"), ("docs", "bo")]
    # Overwrite keeps created_at; delete removes; a new client on the folder sees the same.
    store.put(("docs", "ann", "a"), "1", {"text": "jasmine tea", "n": 1})
    again = store.get(("docs", "ann", "a"), "1")
    assert again is not None and again.created_at == first.created_at
    assert again.updated_at >= first.updated_at
    store.delete(("docs", "ann", "b"), "2")
    other = ChromaStore(chroma_client(tmp_path / "c"), embeddings, fields=FIELDS)
    assert [h.key for h in other.search(("docs", "ann"), limit=10)] == ["1", "3"]
    assert other.search(("docs", "ann"), query="jasmine", limit=1)[0].value["text"] == (
        "jasmine tea"
    )
    with pytest.raises(TmoGraphError, match="cannot filter with"):
        store.search(("docs",), filter={"n": {"$in": [1]}})
    with pytest.raises(TmoGraphError, match="needs LangChain Embeddings"):
        ChromaStore(chroma_client(tmp_path / "c"), object())  # type: ignore[arg-type]


def test_the_stores_search_with_the_measured_hnsw_settings(
    tmp_path: Path, pgvector: PgVector
) -> None:
    """Chroma's and pgvector's HNSW defaults lost rare turns among 100,000 (docs/memory.md,
    "Measured"): the collections and the index are made with the tuned settings, and
    PostgreSQL searches at hnsw.ef_search 1000."""
    from tmo_graph.memory.chroma_store import CHROMA_HNSW
    from tmo_graph.memory.stores import PG_EF_SEARCH

    client = chroma_client(tmp_path / "chroma")
    ChromaStore(client, WordEmbeddings(), fields=FIELDS).put(
        thread_namespace("ada", "t1"), "0", {"text": "the gate code is 1948"}
    )
    (collection,) = client.list_collections()
    hnsw = collection.configuration["hnsw"]
    assert {key: hnsw[key] for key in CHROMA_HNSW} == CHROMA_HNSW
    store = postgres_store(pgvector.fresh().socket_url, WordEmbeddings(), dims=DIMS)
    try:
        with store.conn.connection() as conn:  # type: ignore[union-attr]
            ef = conn.execute("SHOW hnsw.ef_search").fetchone()
            indexes = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexdef ~ 'hnsw'")
            definitions = [row["indexdef"] for row in indexes.fetchall()]
    finally:
        store.conn.close()
    assert ef == {"hnsw.ef_search": str(PG_EF_SEARCH)}
    assert definitions and all("m='32'" in d and "ef_construction='200'" in d for d in definitions)


def test_turns_that_read_alike_are_stored_in_one_call(make_store: StoreFactory) -> None:
    """Two finished turns with the same text (a user asking the same thing twice) are both
    stored and recalled, on every backend (InMemoryStore fails on such a batch)."""
    store = make_store(WordEmbeddings())
    same = "User: what is the gate code\\nAssistant: 1948"
    remember(store, user_id="ada", thread_id="t1", turns=[(0, same), (1, same), (2, "other")])
    assert sorted(stored_turns(store, user_id="ada", thread_id="t1")) == [0, 1, 2]


def test_a_long_listing_is_paged_by_chroma_not_fetched_whole(tmp_path: Path) -> None:
    """Listing a namespace page by page asks Chroma for one page at its offset: fetching
    offset + limit rows to slice here failed past about 32,000 stored turns (SQLite's
    variable limit, found by bench/routing_overhead.py at 100,000)."""
    store = ChromaStore(chroma_client(tmp_path / "c"), WordEmbeddings(), fields=FIELDS)
    turns = [(n, f"turn number {n}") for n in range(250)]
    remember(store, user_id="ann", thread_id="t", turns=turns)
    asked: list[dict[str, Any]] = []
    collection = store._collection(("tmo_memory", "ann"), create=False)
    assert collection is not None
    get = type(collection).get

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs)
        return get(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(collection), "get", spy)
        page = store.search(("tmo_memory", "ann", "t"), limit=100, offset=200)
    assert len(page) == 50 and {(a["limit"], a["offset"]) for a in asked} == {(100, 200)}
    assert sorted(stored_turns(store, user_id="ann", thread_id="t")) == list(range(250))


def test_a_search_skips_chromas_prefilter_unless_an_unindexed_item_took_a_place(
    tmp_path: Path,
) -> None:
    """Chroma lists every item a metadata filter passes before its HNSW search, so the
    "indexed" filter is only used when an item stored without an index ranked among the
    best: then the search is made again with it, and such items are never returned."""
    store = ChromaStore(chroma_client(tmp_path / "c"), WordEmbeddings(), fields=FIELDS)
    store.put(("docs", "ann"), "tea", {"text": "green tea leaves"})
    collection = store._collection(("docs", "ann"), create=False)
    assert collection is not None
    asked: list[Any] = []
    query = type(collection).query

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs.get("where"))
        return query(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(collection), "query", spy)
        assert [i.key for i in store.search(("docs", "ann"), query="green tea", limit=1)] == ["tea"]
        assert asked == [None]  # one search, no filter
        for n in range(5):
            store.put(("docs", "ann"), f"plain{n}", {"text": f"plain {n}"}, index=False)
        asked.clear()
        hits = store.search(("docs", "ann"), query="green tea", limit=3)
    assert [i.key for i in hits] == ["tea"]  # the unindexed items are never results
    assert asked == [None, {"indexed": True}]  # they took places: searched again, filtered
