"""A thread's images, served to its owner: `tmo-graph serve` on 127.0.0.1 (uvicorn in a
thread) with API keys; the openai client sends an image, the thread's message names it by
its media URL, and only the thread's owner can load that URL."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from openai import OpenAI

from tests.integration_tests.test_server import Served
from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services, png_bytes
from tmo_graph.graph import build_graph
from tmo_graph.server.keys import KeyRing, add_key

pytestmark = pytest.mark.integration


@dataclass
class Server:
    served: Served
    graph: Any
    secrets: dict[str, str]

    def openai(self, name: str) -> OpenAI:
        return OpenAI(base_url=f"{self.served.url}/v1", api_key=self.secrets[name], max_retries=0)

    def get(self, path: str, name: str | None, **headers: str) -> httpx.Response:
        if name is not None:
            headers["authorization"] = f"Bearer {self.secrets[name]}"
        return httpx.get(f"{self.served.url}{path}", headers=headers, timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("media")
    secrets = {name: add_key(tmp / "keys.yaml", name, f"{name}-key")[1] for name in ("al", "bo")}
    cloud = FakeCloud(answer="a green square")
    cloud.sent = []
    services = fake_services(tmp, FakeLocal(["sure"], logprob=-0.01), cloud, scores={})
    graph = build_graph(services, checkpointer=InMemorySaver())
    from tmo_graph.server.app import create_app

    app = create_app(
        graph, services.settings, services=services, keys=KeyRing(file=tmp / "keys.yaml")
    )
    served = Served(app)
    yield Server(served, graph, secrets)
    served.stop()


def _ask_with_image(client: OpenAI, data: bytes, thread: str | None = None) -> str:
    """One turn with an image (always to the cloud, so it is sent); the thread's id."""
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    reply = client.chat.completions.with_raw_response.create(
        model="tmo-always-cloud",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What colour is this?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
        extra_headers={"x-tmo-thread-id": thread} if thread else {},
    )
    return reply.headers["x-tmo-thread-id"]


def test_the_owner_loads_the_image_of_a_past_message_by_its_url(server: Server) -> None:
    data = png_bytes("green")
    sha = hashlib.sha256(data).hexdigest()
    thread = _ask_with_image(server.openai("al"), data)
    values = server.graph.get_state({"configurable": {"thread_id": thread}}).values
    question = values["messages"][0]
    block = next(b for b in question.content if b.get("type") == "image")
    url = f"/v1/threads/{thread}/media/{sha}"
    assert block["url"] == url and "base64" not in str(values["messages"])

    got = server.get(url, "al")
    assert got.status_code == 200, got.text
    assert got.content == data and got.headers["content-type"] == "image/png"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert "private" in got.headers["cache-control"]


def test_nobody_else_and_nothing_else_is_served(server: Server) -> None:
    data, other = png_bytes("red"), png_bytes("blue")
    sha = hashlib.sha256(data).hexdigest()
    thread = _ask_with_image(server.openai("al"), data)
    mine_without_it = _ask_with_image(server.openai("al"), other)
    bobs = _ask_with_image(server.openai("bo"), other)
    url = f"/v1/threads/{thread}/media/{sha}"

    assert server.get(url, None).status_code == 401  # no key
    bad = httpx.get(f"{server.served.url}{url}", headers={"authorization": "Bearer tmo-nope"})
    assert bad.status_code == 401
    # Another user's thread: the same 404 as a thread that does not exist.
    refused = server.get(url, "bo")
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "media_not_found"
    assert server.get(f"/v1/threads/no-such-thread/media/{sha}", "al").status_code == 404
    # Bob names his own thread with Alice's hash: his thread never held it.
    assert server.get(f"/v1/threads/{bobs}/media/{sha}", "bo").status_code == 404
    # Alice's other thread does not serve this thread's image either.
    assert server.get(f"/v1/threads/{mine_without_it}/media/{sha}", "al").status_code == 404
    # An unknown hash, a malformed one, and paths out of the media folder.
    for probe in ("0" * 64, sha[:-1], "..%2F..%2Fkeys.yaml", "..", "%2e%2e%2fkeys.yaml"):
        assert server.get(f"/v1/threads/{thread}/media/{probe}", "al").status_code == 404
    assert (
        server.get(f"/v1/threads/{thread}/media/..%2F..%2F..%2Fetc%2Fpasswd", "al").status_code
        == 404
    )
    # The owner still gets it.
    assert server.get(url, "al").content == data
