"""`tmo-graph serve`: the OpenAI-compatible API, driven by the official openai client.

Most tests serve a graph on instant fake models (uvicorn in a background thread on a free
127.0.0.1 port); the last one runs the real CLI with the real SmolLM2 as a subprocess.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from openai import AsyncOpenAI, OpenAI

from tests.integration_tests.servers import wait_until_answering
from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services, png_bytes
from tests.unit_tests.test_graph_core import StreamingLocal
from tmo_graph.graph import build_graph
from tmo_graph.models.cloud import free_port
from tmo_graph.server.app import create_app
from tmo_graph.server.messages import SYSTEM_ID, Chat
from tmo_graph.server.schemas import ChatMessage, parse_model

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
NOT_AN_IMAGE = "data:image/png;base64,AAAA"


class Served:
    """An app served by uvicorn in a background thread."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


class SlowLocal(FakeLocal):
    """A fake local model that takes a while, so turns overlap."""

    delay: float = 0.3

    def answer(
        self, messages: Any, max_new_tokens: Any = None, tags: Any = None, max_time_s: Any = None
    ) -> Any:
        time.sleep(self.delay)
        return super().answer(messages, max_new_tokens, tags)


def _graph(tmp: Path, local: Any, cloud: Any = None) -> tuple[Any, Any]:
    services = fake_services(tmp, local, cloud)
    return build_graph(services, checkpointer=InMemorySaver()), services


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Any, FakeCloud]]:
    """A streaming local model that is sure of itself, and a cloud that reports usage."""
    cloud = FakeCloud(answer="The pot is boiling.")
    cloud.sent = []  # the class default list is shared between instances
    graph, _ = _graph(tmp_path_factory.mktemp("server"), StreamingLocal("sure thing", -0.05), cloud)
    served = Served(create_app(graph, no_auth=True))
    yield served, graph, cloud
    served.stop()


def _state(graph: Any, thread_id: str) -> dict[str, Any]:
    return dict(graph.get_state({"configurable": {"thread_id": thread_id}}).values)


def _png_url() -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes("blue")).decode()


# --------------------------------------------------------------------------- pure helpers


def test_model_names_carry_the_policy_and_an_optional_threshold() -> None:
    assert parse_model("tmo-cascade") == ("cascade", None)
    assert parse_model("tmo-cascade-0.35") == ("cascade", 0.35)
    assert parse_model("tmo-always-local") == ("always-local", None)
    assert parse_model("tmo-always-cloud-1") == ("always-cloud", 1.0)


def test_an_existing_thread_gets_only_what_follows_its_last_answer() -> None:
    msgs = [
        ChatMessage(role="system", content="Be terse."),
        ChatMessage(role="user", content="one"),
        ChatMessage(role="assistant", content="ok"),
        ChatMessage(role="user", content="two"),
        ChatMessage(role="user", content="three"),
    ]
    # The thread holds the dialogue up to its answer "ok", its persona another one.
    stored = [
        SystemMessage("Be chatty.", id=SYSTEM_ID),
        HumanMessage("one", id="1"),
        AIMessage("ok", id="2"),
    ]
    sent = Chat(msgs, new_thread=False).new_messages(stored)
    assert [(m.type, m.content) for m in sent] == [
        ("system", "Be terse."),
        ("human", "two"),
        ("human", "three"),
    ]
    assert sent[0].id == SYSTEM_ID  # replaces the thread's persona
    # An answer the client shows reformatted is no error: what follows the chat's last answer.
    reformatted = [HumanMessage("one", id="1"), AIMessage("**ok**", id="2")]
    sent = Chat(msgs, new_thread=False).new_messages(reformatted)
    assert [m.content for m in sent] == ["Be terse.", "two", "three"]
    # A new thread takes the whole conversation the client sends.
    assert [m.content for m in Chat(msgs, new_thread=True).new_messages([])][1:] == [
        "one",
        "ok",
        "two",
        "three",
    ]


# --------------------------------------------------------------------------- fake models


def test_a_plain_call_answers_with_usage_the_record_and_headers(fake: Any) -> None:
    served, graph, _ = fake
    raw = served.client().chat.completions.with_raw_response.create(
        model="tmo-always-cloud",
        messages=[{"role": "user", "content": "Is the pot boiling?"}],
        user="alice",
    )
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.model == "tmo-always-cloud"
    assert completion.choices[0].message.content == "The pot is boiling."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (100, 20)
    tmo = completion.model_extra["tmo"]
    assert tmo["route"] == "cloud" and tmo["policy"] == "always-cloud"
    assert tmo["cost_usd"] > 0 and tmo["budget_left"]["cost_usd"] < 0.05
    thread_id = raw.headers["x-tmo-thread-id"]
    assert thread_id == tmo["thread_id"]
    assert raw.headers["x-tmo-route"] == "cloud"
    assert float(raw.headers["x-tmo-cost-usd"]) == pytest.approx(tmo["cost_usd"])
    assert float(raw.headers["x-tmo-budget-left-usd"]) == pytest.approx(
        tmo["budget_left"]["cost_usd"]
    )
    assert len(_state(graph, thread_id)["turns"]) == 1


def test_a_stream_is_openai_sse_with_only_the_final_answer_and_a_usage_chunk(fake: Any) -> None:
    served, _, _ = fake
    stream = served.client().chat.completions.create(
        model="tmo-cascade-0.2",
        messages=[{"role": "user", "content": "Explain how induction hobs work."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "sure thing"
    contents = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(contents) > 1  # streamed token by token, not one block
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 2  # the local answer's two tokens
    assert last.model_extra["tmo"]["route"] == "local"
    assert last.model_extra["tmo"]["confidence"] is not None
    assert all(c.usage is None for c in chunks[:-1])


def test_an_escalated_stream_never_shows_the_draft(tmp_path: Path) -> None:
    cloud = FakeCloud(answer="induction heats the pan itself")
    cloud.sent = []
    graph, _ = _graph(tmp_path, StreamingLocal("meh dunno", -3.0), cloud)
    served = Served(create_app(graph, no_auth=True))
    try:
        chunks = list(
            served.client().chat.completions.create(
                model="tmo-cascade",
                messages=[{"role": "user", "content": "Explain how induction hobs work."}],
                stream=True,
            )
        )
    finally:
        served.stop()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "induction heats the pan itself"
    assert "meh" not in text
    assert chunks[-1].model_extra["tmo"]["escalated"] is True


def test_an_image_url_part_is_sent_to_the_cloud(fake: Any) -> None:
    served, _, cloud = fake
    cloud.sent.clear()
    completion = served.client().chat.completions.create(
        model="tmo-always-cloud",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What colour is this?"},
                    {"type": "image_url", "image_url": {"url": _png_url()}},
                ],
            }
        ],
    )
    tmo = completion.model_extra["tmo"]
    assert tmo["route"] == "cloud" and len(tmo["views_sent"]) == 1
    last = cloud.sent[-1][-1]
    assert any(isinstance(p, dict) and p.get("type") == "image_url" for p in last.content), (
        "the cloud got no image part"
    )


def test_turns_on_one_thread_continue_the_dialogue(fake: Any) -> None:
    served, graph, _ = fake
    client = served.client()
    history: list[dict[str, str]] = [
        {"role": "system", "content": "You are a kitchen assistant."},
        {"role": "user", "content": "Is the pot boiling?"},
    ]
    raw = client.chat.completions.with_raw_response.create(
        model="tmo-always-local", messages=history
    )
    thread_id = raw.headers["x-tmo-thread-id"]
    history.append({"role": "assistant", "content": raw.parse().choices[0].message.content})
    history.append({"role": "user", "content": "And the kettle?"})
    second = client.chat.completions.create(
        model="tmo-always-local",
        messages=history,  # the whole history, as OpenAI clients send it
        extra_headers={"x-tmo-thread-id": thread_id},
    )
    assert second.model_extra["tmo"]["thread_id"] == thread_id
    assert second.model_extra["tmo"]["turn"] == 1
    state = _state(graph, thread_id)
    kinds = [m.type for m in state["messages"]]
    # One persona message, each question and answer once: no history sent twice.
    assert kinds == ["system", "human", "ai", "human", "ai"]
    assert [r["turn"] for r in state["turns"]] == [0, 1]


def test_twenty_users_at_once_are_all_answered_on_their_own_threads(tmp_path: Path) -> None:
    local = SlowLocal(["ok"])
    local.delay = 0.5
    graph, _ = _graph(tmp_path, local)
    served = Served(create_app(graph, no_auth=True))

    async def ask(client: AsyncOpenAI, i: int) -> tuple[str, str]:
        raw = await client.chat.completions.with_raw_response.create(
            model="tmo-always-local",
            messages=[{"role": "user", "content": f"Question number {i}?"}],
            user=f"user-{i}",
        )
        return raw.headers["x-tmo-thread-id"], raw.parse().choices[0].message.content or ""

    async def run() -> tuple[list[tuple[str, str]], float, int]:
        client = AsyncOpenAI(
            base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=60
        )
        start = time.perf_counter()
        asks = asyncio.gather(*(ask(client, i) for i in range(20)))
        # While the turns run, the event loop still answers at once.
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient() as http:
            t0 = time.perf_counter()
            health = (await http.get(f"{served.url}/health")).json()
            health_s = time.perf_counter() - t0
        results = await asks
        await client.close()
        assert health_s < 0.3, f"/health took {health_s:.2f} s during 20 turns"
        return results, time.perf_counter() - start, health["active_turns"]

    try:
        results, elapsed, active = asyncio.run(run())
    finally:
        served.stop()
    threads = {thread for thread, _ in results}
    assert len(threads) == 20 and all(answer == "ok" for _, answer in results)
    assert active > 1  # the turns were running together
    # 20 turns of 0.5 s each, one after another, would take 10 s.
    assert elapsed < 6, f"20 concurrent turns took {elapsed:.1f} s"
    for thread in threads:
        assert len(_state(graph, thread)["turns"]) == 1


def test_two_turns_at_once_on_one_thread_are_both_answered_and_kept(tmp_path: Path) -> None:
    graph, _ = _graph(tmp_path, SlowLocal(["ok"]))
    served = Served(create_app(graph, no_auth=True))
    answers: list[Any] = []

    def ask(text: str) -> None:
        answers.append(
            served.client().chat.completions.create(
                model="tmo-always-local",
                messages=[{"role": "user", "content": text}],
                extra_headers={"x-tmo-thread-id": "shared"},
            )
        )

    workers = [threading.Thread(target=ask, args=(f"question {i}",)) for i in range(2)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        served.stop()
    assert sorted(a.model_extra["tmo"]["turn"] for a in answers) == [0, 1]
    state = _state(graph, "shared")
    assert [m.type for m in state["messages"]] == ["human", "ai", "human", "ai"]
    assert {m.content for m in state["messages"] if m.type == "human"} == {
        "question 0",
        "question 1",
    }


def test_a_turn_that_cannot_wait_for_its_thread_gets_409_and_is_not_lost(tmp_path: Path) -> None:
    local = SlowLocal(["ok"])
    local.delay = 1.0
    graph, _ = _graph(tmp_path, local)
    served = Served(create_app(graph, thread_wait_s=0.05, no_auth=True))
    first = threading.Thread(
        target=lambda: served.client().chat.completions.create(
            model="tmo-always-local",
            messages=[{"role": "user", "content": "one"}],
            extra_headers={"x-tmo-thread-id": "busy"},
        )
    )
    try:
        first.start()
        time.sleep(0.3)
        with pytest.raises(openai.ConflictError) as info:
            served.client().chat.completions.create(
                model="tmo-always-local",
                messages=[{"role": "user", "content": "two"}],
                extra_headers={"x-tmo-thread-id": "busy"},
            )
        first.join()
    finally:
        served.stop()
    assert "still answering another turn" in info.value.message
    assert info.value.body["code"] == "thread_busy"  # type: ignore[index]
    assert len(_state(graph, "busy")["turns"]) == 1  # the first turn kept, the second refused


def test_a_client_that_leaves_mid_turn_does_not_cut_the_turn(tmp_path: Path) -> None:
    local = SlowLocal(["ok"])
    local.delay = 0.8
    graph, _ = _graph(tmp_path, local)
    served = Served(create_app(graph, no_auth=True))
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{served.url}/v1/chat/completions",
                json={"model": "tmo-always-local", "messages": [{"role": "user", "content": "Hi"}]},
                headers={"x-tmo-thread-id": "left"},
                timeout=httpx.Timeout(5, read=0.2),
            )
        deadline = time.monotonic() + 10
        while httpx.get(f"{served.url}/health").json()["active_turns"]:
            assert time.monotonic() < deadline, "the turn never finished"
            time.sleep(0.05)
    finally:
        served.stop()
    # The question and its answer are both in the thread: never a question left unanswered.
    assert [m.type for m in _state(graph, "left")["messages"]] == ["human", "ai"]


def test_over_the_turn_limit_the_server_answers_503(tmp_path: Path) -> None:
    local = SlowLocal(["ok"])
    local.delay = 1.0
    graph, _ = _graph(tmp_path, local)
    served = Served(create_app(graph, max_concurrent_turns=1, no_auth=True))
    first = threading.Thread(
        target=lambda: served.client().chat.completions.create(
            model="tmo-always-local", messages=[{"role": "user", "content": "one"}]
        )
    )
    try:
        first.start()
        time.sleep(0.3)
        with pytest.raises(openai.InternalServerError) as info:
            served.client().chat.completions.create(
                model="tmo-always-local", messages=[{"role": "user", "content": "two"}]
            )
        first.join()
    finally:
        served.stop()
    assert info.value.status_code == 503 and "limit" in info.value.message


@pytest.mark.parametrize(
    ("request_", "status", "words"),
    [
        ({"model": "gpt-4o"}, 404, "does not exist"),
        ({"model": "tmo-cascade-1.5"}, 400, "must be in [0, 1]"),
        ({"messages": []}, 400, "messages is empty"),
        ({"messages": [{"role": "system", "content": "Be brief."}]}, 400, "must be a user"),
        ({"messages": [{"role": "user", "content": "  "}]}, 400, "has no text"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {"url": NOT_AN_IMAGE}},
                        ],
                    }
                ]
            },
            400,
            "not a readable image",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {"url": "/etc/passwd"}},
                        ],
                    }
                ]
            },
            400,
            "must be a data URL",
        ),
        ({"n": 2}, 400, "n must be 1"),
        ({"messages": "hello"}, 400, "invalid request"),
    ],
)
def test_bad_requests_get_openai_errors_that_say_what_to_fix(
    fake: Any, request_: dict[str, Any], status: int, words: str
) -> None:
    served, _, _ = fake
    body = {
        "model": "tmo-rules",
        "messages": [{"role": "user", "content": "Hello?"}],
        **request_,
    }
    with pytest.raises(openai.APIStatusError) as info:
        served.client().chat.completions.create(**body)
    assert info.value.status_code == status
    error = info.value.body
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
    assert words in error["message"]
    assert "Traceback" not in error["message"]


def test_a_bad_request_leaves_the_thread_as_it_was(fake: Any) -> None:
    served, graph, _ = fake
    client = served.client()
    raw = client.chat.completions.with_raw_response.create(
        model="tmo-always-local", messages=[{"role": "user", "content": "Hi"}]
    )
    thread_id = raw.headers["x-tmo-thread-id"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="tmo-always-local",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:,nope"}}],
                }
            ],
            extra_headers={"x-tmo-thread-id": thread_id},
        )
    assert len(_state(graph, thread_id)["messages"]) == 2


def test_models_and_health(fake: Any) -> None:
    served, _, _ = fake
    ids = [m.id for m in served.client().models.list()]
    assert ids == [
        "tmo-always-local",
        "tmo-always-cloud",
        "tmo-random",
        "tmo-rules",
        "tmo-cascade",
    ]  # 'learned' only when the config names a trained policy file
    health = httpx.get(f"{served.url}/health").json()
    assert health["status"] == "ok" and health["active_turns"] == 0
    missing = httpx.get(f"{served.url}/v1/nothing")
    assert missing.status_code == 404 and "error" in missing.json()


def test_an_unexpected_failure_is_a_500_without_details(tmp_path: Path) -> None:
    class Broken(FakeLocal):
        def answer(
            self,
            messages: Any,
            max_new_tokens: Any = None,
            tags: Any = None,
            max_time_s: Any = None,
        ) -> Any:
            raise RuntimeError("secret internals")

    graph, _ = _graph(tmp_path, Broken(["x"]))
    served = Served(create_app(graph, no_auth=True))
    try:
        with pytest.raises(openai.InternalServerError) as info:
            served.client().chat.completions.create(
                model="tmo-always-local", messages=[{"role": "user", "content": "Hi"}]
            )
    finally:
        served.stop()
    assert info.value.status_code == 500
    assert "secret" not in info.value.message and "see the server log" in info.value.message


# --------------------------------------------------------------------------- the real CLI


def test_the_cli_serves_the_real_local_model(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TMO_CLOUD__MODE": "off",
        "TMO_LOCAL__MAX_NEW_TOKENS": "16",
        "TMO_MEMORY__PERSIST_DIR": str(tmp_path / "memory"),
    }
    cli = Path(sys.executable).parent / "tmo-graph"
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [
            str(cli),
            "serve",
            "--port",
            str(port),
            "--db",
            str(tmp_path / "threads.sqlite"),
            "--no-auth",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(
            f"{url}/health", process, tmp_path / "serve.log", "tmo-graph serve", 180
        )
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        raw = client.chat.completions.with_raw_response.create(
            model="tmo-rules", messages=[{"role": "user", "content": "Say hello."}]
        )
        plain = raw.parse()
        assert (plain.choices[0].message.content or "").strip()
        assert plain.model_extra["tmo"]["route"] == "local"  # no cloud configured
        chunks = list(
            client.chat.completions.create(
                model="tmo-always-local",
                messages=[{"role": "user", "content": "Name a fruit."}],
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-tmo-thread-id": raw.headers["x-tmo-thread-id"]},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.strip()
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        assert chunks[-1].model_extra["tmo"]["turn"] == 1  # the same thread, second turn
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
