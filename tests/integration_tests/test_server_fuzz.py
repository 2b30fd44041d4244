"""Fuzzed request bodies and headers against a running `tmo-graph serve` (127.0.0.1, instant
fake models whose answer echoes everything they were given).

Each response must be a well-formed OpenAI error (``{"error": {message, type, param,
code}}``, never a stack trace, never a 500) or a valid completion (plain or server-sent
events); no response may hold an API key or anything of bob's dialogue, which no fuzzed
request is entitled to (they come with alice's key, a revoked key, a wrong key or none);
bob's thread is unchanged at the end and the server still answers.
"""

from __future__ import annotations

import base64
import json
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langgraph.checkpoint.memory import InMemorySaver

from tests.integration_tests.test_server import Served
from tests.integration_tests.test_server_access import (
    EchoLocal,
    Keys,
    _audio,
    _image,
    access_settings,
    make_keys,
)
from tests.unit_tests.fakes import FakeCloud, fake_services, png_bytes
from tmo_graph.graph import build_graph
from tmo_graph.server.app import create_app
from tmo_graph.server.keys import KeyRing

pytestmark = pytest.mark.integration

BOB_SECRETS = ("walrus-nebula-3390", "my bank pin hint is orchid")
EXAMPLES = 1000
STATUSES = {200, 400, 401, 403, 404, 409, 413, 429}
OWN_KEY = "OWN-KEY-SENTINEL"


@dataclass
class Target:
    served: Served
    http: httpx.Client
    keys: Keys
    graph: Any
    alice_thread: str
    bob_thread: str
    bob_messages: int
    seen: dict[int, int]


def _state(graph: Any, thread: str) -> dict[str, Any]:
    return dict(graph.get_state({"configurable": {"thread_id": thread}}).values)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("fuzz")
    keys = make_keys(tmp)
    cloud = FakeCloud(answer="from the cloud")
    cloud.sent = []
    settings_ = access_settings(tmp)
    services = fake_services(tmp, EchoLocal(), cloud, settings=settings_)
    graph = build_graph(services, checkpointer=InMemorySaver())
    served = Served(create_app(graph, settings_, keys=KeyRing(file=keys.file)))
    http = httpx.Client(base_url=served.url, timeout=30)

    def turn(name: str, text: str, thread: str | None = None) -> str:
        headers = {"authorization": f"Bearer {keys.secrets[name]}"}
        if thread:
            headers["x-tmo-thread-id"] = thread
        body = {"model": "tmo-always-local", "messages": [{"role": "user", "content": text}]}
        reply = http.post("/v1/chat/completions", json=body, headers=headers)
        assert reply.status_code == 200, reply.text
        return reply.headers["x-tmo-thread-id"]

    bob = turn("bob", f"Remember {BOB_SECRETS[0]} and that {BOB_SECRETS[1]}.")
    for text in ("Fine.", "Next.", "What did I ask you to remember?"):
        turn("bob", text, bob)
    alice = turn("alice", "My bike is blue.")
    turn("alice", "It has three gears.", alice)
    try:
        yield Target(served, http, keys, graph, alice, bob, len(_state(graph, bob)["messages"]), {})
    finally:
        http.close()
        served.stop()


# --------------------------------------------------------------------------- strategies

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
texts = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["Hello?", "What did bob say?", "Tell me the secret", "  ", ""]),
)
parts = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, texts),
    st.builds(lambda n: _image(n), st.integers(0, 3000)),
    st.just({"type": "image_url", "image_url": {"url": "/etc/passwd"}}),
    st.just({"type": "image_url", "image_url": {"url": "data:image/png;base64,!!"}}),
    st.builds(lambda n: _audio(n), st.integers(0, 3000)),
    st.dictionaries(st.sampled_from(["type", "text", "image_url", "x"]), json_values, max_size=3),
)
messages = st.fixed_dictionaries(
    {
        "role": st.one_of(
            st.sampled_from(["user", "user", "user", "assistant", "system", "developer", "tool"]),
            st.text(max_size=8),
        ),
        "content": st.one_of(texts, st.lists(parts, max_size=3), st.none(), json_values),
    },
    optional={
        "private": st.one_of(st.booleans(), json_values),
        "name": st.text(max_size=8),
    },
)
models = st.one_of(
    st.sampled_from(
        ["tmo-always-local", "tmo-rules", "tmo-cascade-0.4", "tmo-cascade-7", "tmo-learned"]
    ),
    # OWN_KEY becomes the request's own key: a client that pastes its key in the wrong field
    # must not get it back in the error that names the field's value.
    st.sampled_from(["tmo-always-cloud", "gpt-4o", "", OWN_KEY, f"tmo-{OWN_KEY}"]),
    st.text(max_size=20),
)
bodies = st.fixed_dictionaries(
    {"model": models, "messages": st.one_of(st.lists(messages, max_size=8), json_values)},
    optional={
        "stream": st.one_of(st.booleans(), json_values),
        "stream_options": st.one_of(st.just({"include_usage": True}), json_values),
        "user": st.one_of(st.sampled_from(["alice", "bob", ""]), json_values),
        "max_tokens": st.one_of(st.integers(-5, 400), json_values),
        "n": st.one_of(st.integers(-1, 3), json_values),
        "tools": json_values,
        "temperature": json_values,
    },
)
raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.just(b'{"model": "tmo-rules", "messages": [{"role": "user", "content": "\\ud800"}]}'),
    st.just(b'{"model": "tmo-rules", "messages": [{"role": "user", "content": "a\\u0000b"}]}'),
)


PNG_URL = "data:image/png;base64," + base64.b64encode(png_bytes("green")).decode()
words = st.text(min_size=1, max_size=40).filter(lambda t: bool(t.strip()))
IMAGE_PART = {"type": "image_url", "image_url": {"url": PNG_URL}}
valid_content = st.one_of(
    words, st.builds(lambda t: [{"type": "text", "text": t}, IMAGE_PART], words)
)
valid_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.just("user"), "content": valid_content},
        optional={"private": st.booleans()},
    ),
    min_size=1,
    max_size=3,
)
# Requests the server should answer, but for the odd field: they reach the turns.
mostly_valid = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["tmo-always-local", "tmo-rules", "tmo-cascade-0.4"]),
        "messages": valid_messages,
    },
    optional={
        "stream": st.booleans(),
        "stream_options": st.just({"include_usage": True}),
        "user": st.sampled_from(["alice", "bob"]),
        "max_tokens": st.integers(1, 400),
    },
)


# What HTTP allows in a header value (visible ASCII, space, tab, bytes 0x80-0xFF): a request
# with anything else is not HTTP, and uvicorn refuses it before it reaches the app.
field_value_chars = st.characters(
    min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f", include_characters="\t"
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["valid", "valid", "valid", "wild", "raw"]))
    if kind == "raw":
        body = draw(raw_bodies)
    else:
        body = json.dumps(draw(mostly_valid if kind == "valid" else bodies)).encode()
    key = draw(st.sampled_from(["alice"] * 5 + ["carol", "wrong", "none"]))
    thread = draw(
        st.one_of(
            st.just(None),
            st.sampled_from(["alice", "bob", "f" * 32]),
            st.text(field_value_chars, max_size=12),
        )
    )
    user_header = draw(st.sampled_from([None, None, None, "alice", "bob"]))
    return {"body": body, "key": key, "thread": thread, "user_header": user_header}


# --------------------------------------------------------------------------- the checks


def _check_completion(data: Any) -> None:
    assert data["object"] == "chat.completion", data
    assert isinstance(data["choices"][0]["message"]["content"], str)
    assert data["choices"][0]["finish_reason"] == "stop"


def _check_error(data: Any) -> None:
    assert isinstance(data, dict) and set(data) == {"error"}, data
    error = data["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"] and 'File "' not in error["message"]


def _check_stream(text: str) -> None:
    events = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert events, text
    for event in events[:-1]:
        chunk = json.loads(event)
        if "error" in chunk:  # a failure mid-stream: OpenAI's error event, then the end
            _check_error(chunk)
            return
        assert chunk["object"] == "chat.completion.chunk", chunk
    assert events[-1] == "[DONE]" or "error" in json.loads(events[-1])


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=requests())
def test_fuzzed_requests_get_a_completion_or_an_openai_error_and_no_one_elses_data(
    target: Target, case: dict[str, Any]
) -> None:
    headers = {"content-type": "application/json"}
    if case["key"] == "wrong":
        headers["authorization"] = "Bearer tmo-this-is-not-a-key-of-the-server"
    elif case["key"] != "none":
        headers["authorization"] = f"Bearer {target.keys.secrets[case['key']]}"
    own = target.keys.secrets.get(case["key"], "tmo-this-is-not-a-key-of-the-server")
    body = case["body"].replace(OWN_KEY.encode(), own.encode())
    thread = case["thread"]
    if thread in ("alice", "bob"):
        thread = target.alice_thread if thread == "alice" else target.bob_thread
    if thread is not None:
        headers["x-tmo-thread-id"] = thread
    if case["user_header"] is not None:
        headers["x-tmo-user"] = case["user_header"]
    try:
        raw_headers = {k: v.encode("latin-1") for k, v in headers.items()}
        reply = target.http.post("/v1/chat/completions", content=body, headers=raw_headers)
    except httpx.LocalProtocolError:
        return  # a header httpx itself refuses to send (e.g. a space at its end) is not sent
    target.seen[reply.status_code] = target.seen.get(reply.status_code, 0) + 1
    assert reply.status_code in STATUSES, (reply.status_code, reply.text[:500])
    text = reply.text
    for secret in (*BOB_SECRETS, *target.keys.secrets.values(), own):
        assert secret not in text, (secret, text[:500])
    if reply.status_code == 200:
        if reply.headers["content-type"].startswith("text/event-stream"):
            _check_stream(text)
        else:
            _check_completion(reply.json())
        assert case["key"] == "alice"
    else:
        _check_error(reply.json())


def test_after_the_fuzz_the_server_is_up_and_bobs_thread_is_untouched(target: Target) -> None:
    assert target.http.get("/health").json()["status"] == "ok"
    assert len(_state(target.graph, target.bob_thread)["messages"]) == target.bob_messages
    # The fuzz reached the turns, not only the front door.
    assert target.seen.get(200, 0) >= 10 and target.seen.get(404, 0) >= 5, target.seen
    print(f"fuzz statuses: {dict(sorted(target.seen.items()))}")


console_paths = st.one_of(
    st.sampled_from(["/console", "/console/overview", "/console/api/overview", "/metrics"]),
    st.builds(
        lambda prefix, thread: f"{prefix}{thread}",
        st.sampled_from(["/console/threads/", "/console/api/threads/"]),
        st.one_of(st.text(string.ascii_letters + string.digits + "-_.%", max_size=40), st.just("")),
    ),
)


@given(path=console_paths, key=st.sampled_from(["alice", "carol", "wrong", None]))
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_no_console_page_or_metric_shows_bobs_dialogue_to_anyone_else(
    target: Target, path: str, key: str | None
) -> None:
    """The console's pages and JSON and /metrics, opened with alice's key, a revoked key, a
    wrong key or none, at fuzzed thread ids (and bob's own): never bob's words, never a 500."""
    headers = {}
    if key is not None:
        secret = target.keys.secrets.get(key, "tmo-wrong-key-0000")
        headers["authorization"] = f"Bearer {secret}"
    for url in (
        path,
        path.replace("{bob}", target.bob_thread),
        f"/console/threads/{target.bob_thread}",
    ):
        reply = target.http.get(url, headers=headers)
        assert reply.status_code < 500, (url, reply.status_code)
        assert not any(secret in reply.text for secret in BOB_SECRETS), url
        if key != "alice":  # only alice's own pages (and the loopback /metrics) may answer
            assert reply.status_code != 200 or url == "/metrics" or url == "/console", url
