"""One LangGraph server process for everything: `langgraph dev` on 127.0.0.1 serving this
repository's langgraph.json, with its auth (graphs/auth.py) on a key file of two users and
the OpenAI-compatible routes mounted (graphs/openai_app.py), on the real local model.

- Issue 14's ownership rules through LangGraph's auth: langgraph_sdk clients with alice's and
  bob's keys each see and reach only their own threads; a run's record carries the user the
  key proved, whatever the run's Context claims; no key or a bad key is a 401.
- `/v1/chat/completions` answers on the same port beside `/threads` and `/runs`, and the
  process holds one copy of the local model (its resident memory does not grow by a model
  when both surfaces have answered).
- A platform thread's image is served to its owner by the URL its message holds.
- The OpenAI routes remember in the platform's store (langgraph.json ``store.index``), under
  the user the key proved, where langgraph_sdk's store API finds them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration_tests.servers import langgraph_dev
from tests.unit_tests.fakes import png_bytes
from tmo_graph.server.keys import add_key
from tmo_graph.settings import Settings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
LOCAL = {"policy": "always-local", "user_id": "mallory"}  # a Context that claims another user
# SmolLM2-135M's weights in float32 are about 540 MB: a second copy would add at least that.
SECOND_COPY_BYTES = 250 * 1024 * 1024


@dataclass
class Platform:
    url: str
    pid: int
    secrets: dict[str, str]
    rss_at_start: int

    def sdk(self, name: str) -> Any:
        from langgraph_sdk import get_sync_client

        return get_sync_client(
            url=self.url, api_key=None, headers={"authorization": f"Bearer {self.secrets[name]}"}
        )

    def headers(self, name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.secrets[name]}"}


def rss_bytes(pid: int) -> int:
    """The process's resident memory."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    work = tmp_path_factory.mktemp("platform")
    secrets = {n: add_key(work / "keys.yaml", n, f"{n}-key")[1] for n in ("alice", "bob")}
    env = {
        "TMO_CLOUD__MODE": "off",  # every turn answered on the device
        "TMO_SERVER__KEYS_FILE": str(work / "keys.yaml"),
        # Threads, media, memory and ledgers of this test only; the converted model is shared.
        "TMO_LOCAL__CACHE_DIR": str(Settings().model_cache_dir()),
        "TMO_GRAPH_CACHE": str(work / "cache"),
        "TMO_ROUTING__RECENT_TURNS": "1",  # a turn leaves the window (into memory) at once
    }
    with langgraph_dev(work, env) as server:
        yield Platform(server.url, server.pid, secrets, rss_bytes(server.pid))


def _status(error: BaseException) -> int:
    """The HTTP status of a langgraph_sdk error (typed, or httpx's for runs.wait)."""
    response = getattr(error, "response", None)
    return int(getattr(response, "status_code", 0) or getattr(error, "status_code", 0))


def _turn(client: Any, thread: str, content: Any) -> dict[str, Any]:
    out = client.runs.wait(
        thread, "tmo", input={"messages": [{"role": "user", "content": content}]}, context=LOCAL
    )
    assert "__error__" not in out, out
    return dict(out)


def test_no_key_or_a_bad_key_is_refused(platform: Platform) -> None:
    bad = {"authorization": "Bearer tmo-not-a-key"}
    for path, body in (("/threads/search", {}), ("/assistants/search", {})):
        assert httpx.post(f"{platform.url}{path}", json=body).status_code == 401
        assert httpx.post(f"{platform.url}{path}", json=body, headers=bad).status_code == 401
        assert (
            httpx.post(f"{platform.url}{path}", json=body, headers={"x-api-key": "x"}).status_code
            == 401
        )
    assert httpx.get(f"{platform.url}/v1/models").status_code == 401
    assert httpx.get(f"{platform.url}/v1/models", headers=bad).status_code == 401
    # A good key is let in, in either header.
    key = platform.secrets["alice"]
    ok = httpx.post(f"{platform.url}/threads/search", json={}, headers={"x-api-key": key})
    assert ok.status_code == 200


def test_each_user_reaches_only_their_threads_and_runs_carry_their_user(
    platform: Platform,
) -> None:
    from langgraph_sdk.errors import NotFoundError

    alice, bob = platform.sdk("alice"), platform.sdk("bob")
    mine = alice.threads.create(metadata={"owner": "bob"})["thread_id"]  # a forged owner
    theirs = bob.threads.create()["thread_id"]
    assert alice.threads.get(mine)["metadata"]["owner"] == "alice"

    records = [_turn(alice, mine, "Say hello.")["turns"][-1]]
    records.append(_turn(bob, theirs, "Say goodbye.")["turns"][-1])
    # The key decides the user: the Context's user_id ("mallory") is overruled.
    assert [r["user"] for r in records] == ["alice", "bob"]

    for client, own, other, user in ((alice, mine, theirs, "alice"), (bob, theirs, mine, "bob")):
        listed = client.threads.search(limit=1000)
        assert own in {t["thread_id"] for t in listed}
        assert other not in {t["thread_id"] for t in listed}
        assert {t["metadata"]["owner"] for t in listed} == {user}
    # Bob cannot read, run on, change or delete alice's thread: it is not there for him.
    for reach in (
        lambda: bob.threads.get(mine),
        lambda: bob.threads.get_state(mine),
        lambda: bob.threads.update(mine, metadata={"owner": "bob"}),
        lambda: bob.runs.wait(mine, "tmo", input={"messages": [("user", "hi")]}, context=LOCAL),
        lambda: bob.threads.delete(mine),
    ):
        with pytest.raises((NotFoundError, httpx.HTTPStatusError)) as refused:
            reach()
        assert _status(refused.value) == 404
    state = alice.threads.get_state(mine)["values"]
    assert [m["type"] for m in state["messages"]] == ["human", "ai"]
    assert alice.threads.get(mine)["metadata"]["owner"] == "alice"


def test_a_platform_threads_image_is_served_to_its_owner_only(platform: Platform) -> None:
    alice, bob = platform.sdk("alice"), platform.sdk("bob")
    data = png_bytes("green")
    sha = hashlib.sha256(data).hexdigest()
    thread = alice.threads.create()["thread_id"]
    image = {"type": "image", "base64": base64.b64encode(data).decode(), "mime_type": "image/png"}
    out = _turn(alice, thread, [{"type": "text", "text": "What colour is it?"}, image])
    block = next(b for b in out["messages"][0]["content"] if b["type"] == "image")
    url = f"/v1/threads/{thread}/media/{sha}"
    assert block["url"] == url and "base64" not in str(out["messages"])

    got = httpx.get(f"{platform.url}{url}", headers=platform.headers("alice"))
    assert got.status_code == 200 and got.content == data
    assert got.headers["content-type"] == "image/png"
    assert httpx.get(f"{platform.url}{url}", headers=platform.headers("bob")).status_code == 404
    assert httpx.get(f"{platform.url}{url}").status_code == 401
    bobs = bob.threads.create()["thread_id"]
    assert (
        httpx.get(
            f"{platform.url}/v1/threads/{bobs}/media/{sha}", headers=platform.headers("bob")
        ).status_code
        == 404
    )


def test_the_openai_routes_share_the_port_and_the_one_local_model(platform: Platform) -> None:
    from openai import OpenAI

    alice = platform.sdk("alice")
    thread = alice.threads.create()["thread_id"]
    platform_answer = _turn(alice, thread, "Name a colour.")["turns"][-1]["answer"]
    client = OpenAI(base_url=f"{platform.url}/v1", api_key=platform.secrets["alice"], max_retries=0)
    reply = client.chat.completions.create(
        model="tmo-always-local", messages=[{"role": "user", "content": "Name a colour."}]
    )
    answer = reply.choices[0].message.content
    assert answer and platform_answer
    # The same greedy local model answered the same question on both surfaces.
    assert answer.strip() == platform_answer.strip()
    assert {m.id for m in client.models.list()} >= {"tmo-always-local", "tmo-cascade"}
    # Both surfaces answered, and the process grew by far less than a second model.
    grown = rss_bytes(platform.pid) - platform.rss_at_start
    assert grown < SECOND_COPY_BYTES, f"resident memory grew {grown / 2**20:.0f} MiB"
    # The platform's own routes still answer beside the mounted ones.
    assert httpx.get(f"{platform.url}/ok").status_code == 200
    assert alice.assistants.search(graph_id="tmo")


def test_the_openai_routes_remember_in_the_platforms_store(platform: Platform) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{platform.url}/v1", api_key=platform.secrets["bob"], max_retries=0)
    chat: list[dict[str, str]] = []
    thread = ""
    for question in ("My cat is called Pixel.", "Name a colour.", "Name a fruit."):
        chat.append({"role": "user", "content": question})
        raw = client.chat.completions.with_raw_response.create(
            model="tmo-always-local", messages=chat, max_tokens=8
        )
        thread = raw.headers["x-tmo-thread-id"]
        chat.append({"role": "assistant", "content": raw.parse().choices[0].message.content or ""})
    # The platform's own store (langgraph_sdk's /store routes), not the settings' Chroma.
    items = platform.sdk("bob").store.search_items(("tmo_memory", "bob", thread), limit=10)
    texts = [str(item["value"].get("text", "")) for item in items["items"]]
    assert any("Pixel" in text for text in texts), texts
