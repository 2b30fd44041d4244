"""Beyond one machine: two workers share threads in a real PostgreSQL 15 and memory on a real
Chroma server (`chroma run`) or in PostgreSQL with pgvector (LangGraph's PostgresStore, on the
server tests/pgvector.py starts), serving one thread alternately. The models are instant
fakes: what is tested is the shared state, not the answers.

PostgreSQL refuses to run as root, and CI runs as root: the cluster then belongs to the
`postgres` system user (`runuser -u postgres --`), in a temp folder that user owns.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import openai
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding

from tests.integration_tests.servers import wait_until_answering
from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.memory import clients as memory_clients
from tmo_graph.memory.recall import recall, stored_turns
from tmo_graph.memory.stores import check_memory, open_store
from tmo_graph.sections import MemorySettings, ThreadSettings
from tmo_graph.services import Services
from tmo_graph.settings import Settings
from tmo_graph.threads.store import open_async_checkpointer, open_checkpointer

pytestmark = pytest.mark.integration

PG_BIN = Path(os.environ.get("TMO_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
CHROMA = Path(sys.executable).parent / "chroma"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner() -> list[str]:
    """The prefix that runs a PostgreSQL server command as an unprivileged user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and no `postgres` system user to own the test cluster")
    if shutil.which("runuser") is None:
        pytest.skip("running as root and no `runuser` to start PostgreSQL as `postgres`")
    return ["runuser", "-u", "postgres", "--"]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL 15 cluster on 127.0.0.1 with database `tmo`; its URL."""
    if not (PG_BIN / "initdb").is_file():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN} (set TMO_TEST_PG_BIN)")
    owner = _as_owner()
    # Not under pytest's tmp_path: that is 0700 root's, so `postgres` could not enter it.
    root = Path(tempfile.mkdtemp(prefix="tmo-pg-"))
    if owner:
        shutil.chown(root, user="postgres")
    data, port = root / "data", _free_port()
    pg_ctl = [*owner, str(PG_BIN / "pg_ctl"), "-D", str(data)]
    try:
        _run([*owner, str(PG_BIN / "initdb"), "-D", str(data), "-U", "tmo", "--auth=trust"])
        # -F: no fsync, a test cluster; -k: the unix socket in our folder, not /run/postgresql.
        options = f"-h 127.0.0.1 -p {port} -k {root} -F"
        _run([*pg_ctl, "-l", str(root / "log"), "-w", "-t", "30", "start", "-o", options])
        try:
            _run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tmo", "tmo"])
            yield f"postgresql://tmo@127.0.0.1:{port}/tmo"
        finally:
            _run([*pg_ctl, "-m", "immediate", "-w", "stop"])
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def chroma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `chroma run` server on a free 127.0.0.1 port; its URL."""
    if not CHROMA.is_file():
        pytest.skip(f"no `chroma` script beside {sys.executable} (pip install chromadb)")
    folder = tmp_path_factory.mktemp("chroma-server")
    port = _free_port()
    log = (folder / "log").open("w")
    cmd = [str(CHROMA), "run", "--path", str(folder / "data"), "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*cmd, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{url}/api/v2/heartbeat", server, folder / "log", "chroma run", 30)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _settings(pg_url: str, chroma_url: str, memory_pg_url: str | None = None) -> Settings:
    """Threads in PostgreSQL; memory on the Chroma server, or in ``memory_pg_url``'s pgvector."""
    memory = (
        MemorySettings(backend="postgres", postgres_url=memory_pg_url)
        if memory_pg_url
        else MemorySettings(server_url=chroma_url)
    )
    return Settings(threads=ThreadSettings(url=pg_url), memory=memory)


def _services(settings: Settings, name: str, tmp: Path) -> tuple[Services, FakeLocal]:
    """A worker's resources: instant fake models, memory in the store the settings name."""
    local = FakeLocal([f"answer from {name}"])
    embeddings = DeterministicFakeEmbedding(size=32)
    services = Services(
        settings=settings,
        local=local,
        cloud=FakeCloud(),
        embeddings=embeddings,
        store=open_store(settings, embeddings),
        media_dir=tmp / name,
    )
    return services, local


def _worker(stack: ExitStack, settings: Settings, name: str, tmp: Path) -> tuple[Any, FakeLocal]:
    """One worker: its own Postgres connection, its own Chroma client, instant fake models."""
    services, local = _services(settings, name, tmp)
    saver = stack.enter_context(open_checkpointer(settings))
    return build_graph(services, checkpointer=saver), local


def _context(user: str) -> Context:
    # Two turns kept verbatim: older ones move to the Chroma server; recall everything stored.
    return Context(
        policy="always-local", user_id=user, recent_turns=2, recall_k=5, min_recall_score=-1
    )


TEXTS = [
    "My locker code is 4711.",
    "I like basil.",
    "The oven is gas.",
    "The fridge hums at night.",
    "What is my locker code?",
    "Which herb do I like?",
]


@pytest.mark.parametrize("memory", ["chroma-server", "pgvector"])
def test_two_workers_serve_one_thread_alternately(
    postgres: str,
    chroma: str,
    memory: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vectors = request.getfixturevalue("pgvector").fresh().url if memory == "pgvector" else None
    settings = _settings(postgres, chroma, vectors)
    shared = f"shared-{memory}"  # one thread store for both runs: a thread of each's own
    bob = f"bob-{memory}"
    config = {"configurable": {"thread_id": shared}}
    with ExitStack() as stack:
        graph_a, local_a = _worker(stack, settings, "A", tmp_path)
        if vectors is None:
            # The same URL in one process reuses its client; worker B stands for another
            # machine, so it gets a fresh one (as a second process would).
            assert graph_a.store.client is memory_clients._CLIENTS[chroma]
            monkeypatch.setattr(memory_clients, "_CLIENTS", {})
        graph_b, local_b = _worker(stack, settings, "B", tmp_path)
        assert graph_a.checkpointer is not graph_b.checkpointer
        assert graph_a.checkpointer.conn is not graph_b.checkpointer.conn

        outs = []
        for i, text in enumerate(TEXTS):
            graph = graph_a if i % 2 == 0 else graph_b
            outs.append(
                graph.invoke({"messages": [("user", text)]}, config, context=_context("alice"))
            )

        # Turn 4 ran on A and recalls turn 0, which B moved to Chroma at turn 3;
        # turn 5 ran on B and recalls turn 1, which A moved at turn 4.
        assert "4711" in local_a.seen[-1][0]["content"]
        assert "basil" in local_b.seen[-1][0]["content"]
        # Each worker answered exactly its turns' questions, with the history before them.
        assert [seen[-1]["content"] for seen in local_a.seen] == TEXTS[0::2]
        assert [seen[-1]["content"] for seen in local_b.seen] == TEXTS[1::2]
        assert "I like basil." in str(local_a.seen[1])  # turn 2 on A saw turn 1 from B

        # Either worker sees the whole thread: every turn, in order, each by its worker.
        for graph in (graph_a, graph_b):
            turns = graph.get_state(config).values["turns"]
            assert [t["turn"] for t in turns] == list(range(len(TEXTS)))
            assert [t["answer"] for t in turns] == ["answer from A", "answer from B"] * 3
        # The state keeps the whole dialogue (the models see the recent turns and memory).
        messages = outs[-1]["messages"]
        assert [m.content for m in messages[0::2]] == TEXTS

        # Turn i moved turn i - 3 to the shared store: turns 0..2 are there, once each.
        store = open_store(settings, DeterministicFakeEmbedding(size=32))  # a third process
        assert sorted(stored_turns(store, user_id="alice", thread_id=shared)) == [0, 1, 2]
        assert sorted(stored_turns(store, user_id="alice")) == [0, 1, 2]

        # Users stay apart on the server: bob's thread on worker B never sees alice's turns.
        for text in ["I drink tea.", "I bake bread.", "I cook rice.", "What is my locker code?"]:
            graph_b.invoke(
                {"messages": [("user", text)]},
                {"configurable": {"thread_id": bob}},
                context=_context("bob"),
            )
        assert "tea" in local_b.seen[-1][0]["content"]  # bob's own old turn was recalled
        assert all("4711" not in m["content"] for m in local_b.seen[-1])
        found = recall(store, user_id="bob", query="tea", k=10, min_score=-1.0)
        assert {r["thread_id"] for r in found} == {bob} and len(found) == 1
        for opened in (graph_a.store, graph_b.store, store):
            if vectors is not None:
                opened.conn.close()

    # A third connection, after both workers closed theirs, still finds the whole thread.
    with open_checkpointer(settings) as saver:  # the state as the graph reads it
        values = build_graph(fake_services(tmp_path), checkpointer=saver).get_state(config).values
        assert len(values["turns"]) == len(TEXTS)


def test_unreachable_postgres_says_what_and_how_to_fix() -> None:
    url = f"postgresql://tmo:s3cret@127.0.0.1:{_free_port()}/tmo"  # nothing listens there
    settings = Settings(threads=ThreadSettings(url=url))
    with (
        pytest.raises(TmoGraphError, match="cannot connect to PostgreSQL") as info,
        open_checkpointer(settings),
    ):
        pass
    message = str(info.value)
    assert "Fix: start the server" in message and "s3cret" not in message
    with (
        pytest.raises(TmoGraphError, match="not a PostgreSQL URL"),
        open_checkpointer(Settings(threads=ThreadSettings(url="mysql://x@h/db"))),
    ):
        pass

    async def open_async() -> None:
        async with open_async_checkpointer(settings):
            pass

    with pytest.raises(TmoGraphError, match="cannot connect to PostgreSQL") as info:
        asyncio.run(open_async())  # the server's checkpointer says the same
    assert "s3cret" not in str(info.value)


def test_a_missing_database_is_named(postgres: str) -> None:
    url = postgres.rsplit("/", 1)[0] + "/nosuchdb"
    with (
        pytest.raises(TmoGraphError, match="nosuchdb.*createdb"),
        open_checkpointer(Settings(threads=ThreadSettings(url=url))),
    ):
        pass


def test_unreachable_chroma_server_says_what_and_how_to_fix() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(TmoGraphError, match="cannot reach the Chroma server") as info:
        check_memory(Settings(memory=MemorySettings(server_url=url)))
    assert "Fix: start it (`chroma run --path DIR" in str(info.value)
    with pytest.raises(TmoGraphError, match="not an http"):
        check_memory(Settings(memory=MemorySettings(server_url="127.0.0.1:8000")))


def test_unreachable_or_vectorless_memory_postgres_says_what_and_how_to_fix(
    postgres: str,
) -> None:
    url = f"postgresql://tmo:s3cret@127.0.0.1:{_free_port()}/tmo"  # nothing listens there
    nowhere = Settings(memory=MemorySettings(backend="postgres", postgres_url=url))
    with pytest.raises(TmoGraphError, match="cannot reach the memory's PostgreSQL") as info:
        check_memory(nowhere)
    assert "s3cret" not in str(info.value)
    with pytest.raises(TmoGraphError, match="neither memory.postgres_url nor threads.url"):
        check_memory(Settings(memory=MemorySettings(backend="postgres")))
    # Debian's PostgreSQL 15 here has no pgvector: the store's tables are refused, and why.
    plain = Settings(
        memory=MemorySettings(backend="postgres"), threads=ThreadSettings(url=postgres)
    )
    check_memory(plain)  # reachable
    with pytest.raises(TmoGraphError, match="pgvector extension"):
        open_store(plain, DeterministicFakeEmbedding(size=32))


def test_two_server_workers_share_one_thread_through_the_openai_api(
    postgres: str, chroma: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tmo-graph serve` twice (two apps, two ports) on one PostgreSQL and one Chroma
    server: a client alternating between them continues one thread without losing a turn."""
    from tests.integration_tests.test_server import Served
    from tmo_graph.server.app import create_app

    settings = _settings(postgres, chroma)
    workers, locals_ = [], []
    for name in ("A", "B"):
        monkeypatch.setattr(memory_clients, "_CLIENTS", {})  # each worker its own client
        services, local = _services(settings, name, tmp_path)
        workers.append(Served(create_app(settings=settings, services=services, no_auth=True)))
        locals_.append(local)
    try:
        thread = None
        for i, text in enumerate(TEXTS):
            headers = {"x-tmo-thread-id": thread} if thread else {}
            raw = (
                workers[i % 2]
                .client()
                .chat.completions.with_raw_response.create(
                    model="tmo-always-local",
                    user="alice",
                    messages=[{"role": "user", "content": text}],
                    extra_headers=headers,
                )
            )
            thread = raw.headers["x-tmo-thread-id"]
            assert raw.parse().choices[0].message.content == f"answer from {'AB'[i % 2]}"
        # The owner is shared through PostgreSQL too: a thread alice starts on worker A is
        # refused (404) to bob on worker B, which never saw it.
        fresh = (
            workers[0]
            .client()
            .chat.completions.with_raw_response.create(
                model="tmo-always-local",
                user="alice",
                messages=[{"role": "user", "content": "A new dialogue."}],
            )
            .headers["x-tmo-thread-id"]
        )
        for named in (fresh, thread):
            with pytest.raises(openai.NotFoundError):
                workers[1].client().chat.completions.create(
                    model="tmo-always-local",
                    user="bob",
                    messages=[{"role": "user", "content": "Whose thread is this?"}],
                    extra_headers={"x-tmo-thread-id": named},
                )
    finally:
        for worker in workers:
            worker.stop()
    # A third process reads the thread back from PostgreSQL: every turn, in order.
    with open_checkpointer(settings) as saver:  # the state as the graph reads it
        graph = build_graph(fake_services(tmp_path), checkpointer=saver)
        values = graph.get_state({"configurable": {"thread_id": thread}}).values
    assert [r["turn"] for r in values["turns"]] == list(range(len(TEXTS)))
    assert [seen[-1]["content"] for seen in locals_[0].seen] == [*TEXTS[0::2], "A new dialogue."]
    assert [seen[-1]["content"] for seen in locals_[1].seen] == TEXTS[1::2]  # bob never got in


def test_dialogue_chains_are_shared_by_workers_on_postgresql(postgres: str) -> None:
    """The content chains that find a resent dialogue's thread live in PostgreSQL: a chain one
    worker records is found by another, per user, and the first thread keeps it."""
    from tmo_graph.threads.chains import Link, PostgresChains

    async def run() -> None:
        one, two = await PostgresChains.connect(postgres), await PostgresChains.connect(postgres)
        try:
            await one.add("ann", "c1", "t1", 0)
            await two.add("ann", "c1", "t2", 4)  # a fork shares the history: t1 keeps it
            assert await two.find("ann", ["c1", "c2"]) == {"c1": Link("t1", 0)}
            assert await two.find("ben", ["c1"]) == {}
        finally:
            await one.aclose()
            await two.aclose()

    asyncio.run(run())


def test_a_fork_copies_a_turns_checkpoint_to_a_new_thread_in_postgresql(
    postgres: str, tmp_path: Path
) -> None:
    """The server forks an edited dialogue by copying the checkpoint that ended that turn into
    a new thread; in PostgreSQL the copy stands alone and the source is left as it was."""
    from tests.unit_tests.fakes import fake_services
    from tmo_graph.server.turns import TurnRunner

    settings = Settings(threads=ThreadSettings(url=postgres))
    context = Context(policy="always-local", user_id="ann")

    async def run() -> None:
        async with open_async_checkpointer(settings) as saver:
            services = fake_services(tmp_path, FakeLocal(["ok"]), settings=settings)
            graph = build_graph(services, checkpointer=saver)
            source = {"configurable": {"thread_id": "fork-source"}}
            for text in ["one?", "two?", "three?"]:
                await graph.ainvoke({"messages": [("user", text)]}, source, context=context)
            runner = TurnRunner(graph, 4, 5.0)
            assert await runner.fork("fork-source", 2, "fork-copy")
            assert not await runner.fork("fork-source", 7, "fork-none")
            copy = {"configurable": {"thread_id": "fork-copy"}}
            values = (await graph.aget_state(copy)).values
            assert values["turn_count"] == 2
            assert [m.content for m in values["messages"] if m.type == "human"] == ["one?", "two?"]
            out = await graph.ainvoke({"messages": [("user", "3?")]}, copy, context=context)
            assert out["turns"][-1]["turn"] == 2
            assert (await graph.aget_state(source)).values["turn_count"] == 3

    asyncio.run(run())
