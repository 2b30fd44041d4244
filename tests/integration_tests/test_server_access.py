"""Who may reach what through `tmo-graph serve`: API keys, thread ownership, recall, limits.

A real server on 127.0.0.1 (uvicorn in a thread) on instant fake models, driven by the
official ``openai`` client. The local model echoes everything it is given (persona,
recalled memory, history, question), so any turn of another user that reached its prompt
would show in the answer.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from openai import OpenAI

from tests.integration_tests.test_server import Served
from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services
from tmo_graph.graph import build_graph
from tmo_graph.guards.audit import read_audit
from tmo_graph.server.app import create_app
from tmo_graph.server.keys import KeyRing, add_key, revoke_key
from tmo_graph.settings import Settings

pytestmark = pytest.mark.integration

BOB_SECRET = "zebra-quasar-7781"  # only ever in bob's dialogue
LIMITS = {
    "max_body_bytes": 64 * 1024,
    "max_messages": 6,
    "max_images": 1,
    "max_image_bytes": 2048,
    "max_audio": 1,
    "max_audio_bytes": 2048,
    "max_tokens": 256,
}


@dataclass
class EchoLocal(FakeLocal):
    """A sure local model whose answer is everything it was given, one text after another."""

    answers: list[str] = field(default_factory=list)
    logprob: float = -0.01

    def reply(self, messages: list[dict[str, str]]) -> str:
        return " | ".join(str(m.get("content", "")) for m in messages)


def access_settings(tmp: Path, **server: Any) -> Settings:
    """Recall every older turn of the user's dialogues (recall_scope user, no score floor),
    one turn kept verbatim, so recall is exercised on every turn after the second."""
    return Settings(
        routing={
            "recent_turns": 1,
            "recall_k": 20,
            "min_recall_score": -1.0,
            "recall_scope": "user",
        },
        server={**LIMITS, **server},
        audit={"path": str(tmp / "audit.jsonl")},
        spending={"ledger": str(tmp / "spend.sqlite")},
    )


@dataclass
class Keys:
    file: Path
    secrets: dict[str, str]  # name -> key
    ids: dict[str, str]  # name -> key id


def make_keys(folder: Path) -> Keys:
    """alice, bob, a revoked carol, dave at 2 requests a second, erin limited to the local
    policy and to a tiny daily cap."""
    file = folder / "keys.yaml"
    specs: dict[str, dict[str, Any]] = {
        "alice": {"rate": "100000/minute"},
        "bob": {"rate": "100000/minute"},
        "carol": {},
        "dave": {"rate": "2/second"},
        "erin": {"policies": ["always-local", "always-cloud"], "daily_cost_cap_usd": 1e-9},
    }
    secrets, ids = {}, {}
    for name, spec in specs.items():
        entry, secret = add_key(file, name, f"{name}-key", **spec)
        secrets[name], ids[name] = secret, entry.id
    revoke_key(file, "carol-key")
    return Keys(file, secrets, ids)


@dataclass
class Server:
    served: Served
    graph: Any
    keys: Keys
    cloud: FakeCloud
    tmp: Path
    local: EchoLocal

    def client(self, name: str | None, **kwargs: Any) -> OpenAI:
        key = self.keys.secrets[name] if name else "sk-not-a-key-of-this-server"
        return OpenAI(base_url=f"{self.served.url}/v1", api_key=key, max_retries=0, **kwargs)

    def state(self, thread_id: str) -> dict[str, Any]:
        return dict(self.graph.get_state({"configurable": {"thread_id": thread_id}}).values)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("access")
    keys = make_keys(tmp)
    cloud = FakeCloud(answer="from the cloud")
    cloud.sent = []
    local = EchoLocal()
    services = fake_services(tmp, local, cloud, settings=access_settings(tmp))
    graph = build_graph(services, checkpointer=InMemorySaver())
    served = Served(create_app(graph, services.settings, keys=KeyRing(file=keys.file)))
    yield Server(served, graph, keys, cloud, tmp, local)
    served.stop()


def ask(client: OpenAI, text: str, thread: str | None = None, **kwargs: Any) -> Any:
    headers = {**kwargs.pop("extra_headers", {}), **({"x-tmo-thread-id": thread} if thread else {})}
    return client.chat.completions.with_raw_response.create(
        model=kwargs.pop("model", "tmo-always-local"),
        messages=[{"role": "user", "content": text}],
        extra_headers=headers,
        **kwargs,
    )


def error_of(info: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    body = info.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}, body
    assert "Traceback" not in body["message"]
    return body


# --------------------------------------------------------------------------- keys


def test_no_key_a_wrong_key_and_a_revoked_key_get_401(server: Server) -> None:
    no_key = httpx.post(
        f"{server.served.url}/v1/chat/completions",
        json={"model": "tmo-always-local", "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"].startswith("Bearer")
    assert no_key.json()["error"]["code"] == "missing_api_key"
    assert "Authorization: Bearer" in no_key.json()["error"]["message"]
    for name, code in ((None, "invalid_api_key"), ("carol", "revoked_api_key")):
        with pytest.raises(openai.AuthenticationError) as info:
            ask(server.client(name), "Hello?")
        error = error_of(info)
        assert error["code"] == code
        key = server.keys.secrets[name] if name else "sk-not-a-key-of-this-server"
        assert key not in info.value.response.text
    for header in ("Bearer", f"Basic {server.keys.secrets['bob']}"):  # only Bearer counts
        reply = httpx.get(f"{server.served.url}/v1/models", headers={"authorization": header})
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
    # The key holders do get in, each seeing the models their key allows.
    assert len(server.client("alice").models.list().data) == 5
    assert [m.id for m in server.client("erin").models.list().data] == [
        "tmo-always-local",
        "tmo-always-cloud",
    ]


def test_a_key_revoked_while_the_server_runs_is_refused_at_its_next_request(
    tmp_path: Path,
) -> None:
    keys = make_keys(tmp_path)
    graph = build_graph(fake_services(tmp_path, EchoLocal()), checkpointer=InMemorySaver())
    served = Served(create_app(graph, keys=KeyRing(file=keys.file)))
    try:
        client = OpenAI(base_url=f"{served.url}/v1", api_key=keys.secrets["bob"], max_retries=0)
        assert ask(client, "Hi").parse().choices[0].message.content
        time.sleep(0.02)  # a file time stamp that surely differs
        revoke_key(keys.file, "bob-key")
        with pytest.raises(openai.AuthenticationError) as info:
            ask(client, "Hi again")
        assert info.value.body["code"] == "revoked_api_key"  # type: ignore[index]
    finally:
        served.stop()


def test_a_user_field_or_header_naming_another_user_is_refused_with_403(server: Server) -> None:
    alice = server.client("alice")
    with pytest.raises(openai.PermissionDeniedError) as info:
        ask(alice, "Show me bob's things", user="bob")
    assert error_of(info)["code"] == "user_mismatch"
    with pytest.raises(openai.PermissionDeniedError):
        ask(alice, "Show me bob's things", extra_headers={"x-tmo-user": "bob"})
    # Naming oneself is fine; the key decides either way.
    reply = ask(alice, "Hello, it is me", user="alice").parse()
    assert reply.choices[0].message.content


def test_a_key_uses_only_its_policies(server: Server) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:
        ask(server.client("erin"), "Hello?", model="tmo-cascade")
    error = error_of(info)
    assert error["code"] == "model_not_allowed" and "tmo-always-local" in error["message"]


def test_a_keys_daily_cap_keeps_its_user_off_the_cloud(server: Server) -> None:
    # The same request: alice (no cap) goes to the cloud, erin (a 1e-9 USD day) cannot.
    alice = ask(server.client("alice"), "What is boiling?", model="tmo-always-cloud").parse()
    erin = ask(server.client("erin"), "What is boiling?", model="tmo-always-cloud").parse()
    assert alice.model_extra["tmo"]["route"] == "cloud"
    assert erin.model_extra["tmo"]["route"] == "local"
    assert "reached the daily cap" in (erin.model_extra["tmo"]["fallback"] or "")


def test_the_audit_log_names_the_key_by_its_id_never_the_key(server: Server) -> None:
    before = len(server.cloud.sent)
    ask(server.client("bob"), "Ask the cloud, please", model="tmo-always-cloud")
    assert len(server.cloud.sent) == before + 1
    entries = read_audit(server.tmp / "audit.jsonl")
    assert entries[-1]["key_id"] == "bob-key" and entries[-1]["user_id"] == "bob"
    text = (server.tmp / "audit.jsonl").read_text()
    assert all(secret not in text for secret in server.keys.secrets.values())


# --------------------------------------------------------------------------- threads


def _bob_dialogue(server: Server) -> str:
    """A bob thread whose first turn holds the secret and has moved to memory."""
    bob = server.client("bob")
    first = ask(bob, f"My locker code is {BOB_SECRET}.")
    thread = first.headers["x-tmo-thread-id"]
    for text in ("What a day.", "Anything else?", "Tell me my locker code."):
        last = ask(bob, text, thread).parse()
    # Positive control: bob's own recall brings the secret back, though it left the window.
    assert BOB_SECRET in (last.choices[0].message.content or "")
    return thread


def test_another_users_thread_is_404_and_stays_as_it_was(server: Server) -> None:
    thread = _bob_dialogue(server)
    before = server.state(thread)
    alice = server.client("alice")
    with pytest.raises(openai.NotFoundError) as info:
        ask(alice, "Tell me the locker code.", thread)
    error = error_of(info)
    assert error["code"] == "thread_not_found" and BOB_SECRET not in info.value.response.text
    # A thread that does not exist gets the very same answer: ids cannot be probed.
    with pytest.raises(openai.NotFoundError) as missing:
        ask(alice, "Tell me the locker code.", "f" * 32)
    assert missing.value.body["message"].replace("f" * 32, thread) == error["message"]  # type: ignore[index]
    after = server.state(thread)
    assert after["messages"] == before["messages"] and after["turns"] == before["turns"]


def test_new_thread_ids_are_unguessable(server: Server) -> None:
    ids = {ask(server.client("alice"), "New one").headers["x-tmo-thread-id"] for _ in range(3)}
    assert len(ids) == 3 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_recall_never_brings_another_users_turns(server: Server) -> None:
    _bob_dialogue(server)
    alice = server.client("alice")
    first = ask(alice, "My bike is blue.")
    thread = first.headers["x-tmo-thread-id"]
    answers = [ask(alice, text, thread).parse() for text in ("Hm.", "Ok.", "My locker code?")]
    # alice's own older turn is recalled (the path works), bob's never is.
    assert "My bike is blue." in (answers[-1].choices[0].message.content or "")
    for reply in answers:
        assert BOB_SECRET not in (reply.choices[0].message.content or "")
    other = ask(alice, "What is my locker code?").parse()  # a new thread: user-wide recall
    assert BOB_SECRET not in (other.choices[0].message.content or "")


def test_owners_outlive_the_server_in_the_sqlite_thread_store(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    services = fake_services(tmp_path, EchoLocal(), settings=access_settings(tmp_path))
    db = tmp_path / "threads.sqlite"

    def start() -> Served:
        return Served(create_app(services=services, db=db, keys=KeyRing(file=keys.file)))

    def client(served: Served, name: str) -> OpenAI:
        return OpenAI(base_url=f"{served.url}/v1", api_key=keys.secrets[name], max_retries=0)

    served = start()
    try:
        thread = ask(client(served, "bob"), "Note: the boiler is noisy.").headers["x-tmo-thread-id"]
    finally:
        served.stop()
    served = start()  # a new process would see the same: the owner is in the SQLite file
    try:
        with pytest.raises(openai.NotFoundError):
            ask(client(served, "alice"), "And now?", thread)
        again = ask(client(served, "bob"), "And now?", thread).parse()
    finally:
        served.stop()
    assert again.model_extra["tmo"]["turn"] == 1


# --------------------------------------------------------------------------- limits


def test_over_its_rate_a_key_gets_429_with_retry_after_then_gets_in(server: Server) -> None:
    dave = server.client("dave")
    dave.models.list()
    dave.models.list()
    with pytest.raises(openai.RateLimitError) as info:
        dave.models.list()
    assert error_of(info)["code"] == "rate_limit_exceeded"
    wait = int(info.value.response.headers["retry-after"])
    assert 1 <= wait <= 2 and "2/second" in info.value.message
    time.sleep(wait)
    assert dave.models.list().data  # within the rate again


def _data_url(n: int, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(b"\0" * n).decode()


def _parts(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "Look"}, *parts]}]


def _image(n: int) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": _data_url(n)}}


def _audio(n: int) -> dict[str, Any]:
    data = base64.b64encode(b"\0" * n).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


@pytest.mark.parametrize(
    ("request_", "status", "words"),
    [
        (
            {"messages": [{"role": "user", "content": "x" * (70 * 1024)}]},
            413,
            "limit of 65536 bytes (server.max_body_bytes)",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}] * 7},
            400,
            "7 messages, over this server's limit of 6 (server.max_messages)",
        ),
        ({"messages": _parts(_image(10), _image(10))}, 400, "more than 1 images"),
        ({"messages": _parts(_image(4000))}, 413, "limit of 2048 bytes per image"),
        ({"messages": _parts(_audio(10), _audio(10))}, 400, "more than 1 audio clips"),
        ({"messages": _parts(_audio(4000))}, 413, "limit of 2048 bytes per clip"),
        ({"max_tokens": 257}, 400, "max_tokens 257 is over this server's ceiling of 256"),
        ({"max_completion_tokens": 10_000}, 400, "ceiling of 256 (server.max_tokens)"),
    ],
)
def test_each_size_limit_is_refused_naming_the_limit(
    server: Server, request_: dict[str, Any], status: int, words: str
) -> None:
    body = {"model": "tmo-always-local", "messages": [{"role": "user", "content": "Hi"}]}
    with pytest.raises(openai.APIStatusError) as info:
        server.client("alice").chat.completions.create(**{**body, **request_})
    assert info.value.status_code == status
    assert words in error_of(info)["message"]
    # Just inside each limit the request is answered (or refused for another reason).
    assert ask(server.client("alice"), "Hi", max_tokens=256).parse().choices


def test_max_tokens_within_the_ceiling_shortens_the_answer(server: Server) -> None:
    alice = server.client("alice")
    ask(alice, "Hello there", max_tokens=7)
    assert server.local.limits[-1][0] == 7
    ask(alice, "Hello again")
    assert server.local.limits[-1][0] == 64  # the config's local.max_new_tokens
    ask(alice, "Ask the cloud", model="tmo-always-cloud", max_completion_tokens=40)
    assert server.cloud.max_tokens_sent[-1] <= 40
    ask(alice, "Ask the cloud again", model="tmo-always-cloud")
    assert server.cloud.max_tokens_sent[-1] == 96  # the config's cloud.max_tokens


def test_cors_is_off_unless_origins_are_configured(server: Server, tmp_path: Path) -> None:
    preflight = {
        "Origin": "https://chat.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    url = "/v1/chat/completions"
    off = httpx.options(f"{server.served.url}{url}", headers=preflight)
    assert "access-control-allow-origin" not in off.headers
    keys = make_keys(tmp_path)
    settings = access_settings(tmp_path, cors_origins=["https://chat.example.com"])
    graph = build_graph(fake_services(tmp_path, EchoLocal()), checkpointer=InMemorySaver())
    served = Served(create_app(graph, settings, keys=KeyRing(file=keys.file)))
    try:
        on = httpx.options(f"{served.url}{url}", headers=preflight)
        other = httpx.options(f"{served.url}{url}", headers={**preflight, "Origin": "https://x.io"})
    finally:
        served.stop()
    assert on.headers["access-control-allow-origin"] == "https://chat.example.com"
    assert "access-control-allow-origin" not in other.headers
