"""End users behind one trusted proxy key (e.g. Open WebUI's): each end user has their own
threads, memory, daily cap and audit identity, as ``<key user>/<end user>``; an ordinary key
cannot name one. A real server on 127.0.0.1 on fake models whose local model echoes its
whole prompt, so another user's recalled turn would show in an answer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from openai import OpenAI

from tests.integration_tests.test_server import Served
from tests.integration_tests.test_server_access import EchoLocal, access_settings, ask, error_of
from tests.unit_tests.fakes import FakeCloud, fake_services, owner_map
from tmo_graph.graph import build_graph
from tmo_graph.guards.audit import read_audit
from tmo_graph.server.app import create_app
from tmo_graph.server.keys import KeyRing, add_key
from tmo_graph.services import Services
from tmo_graph.threads.owners import MemoryOwners

pytestmark = pytest.mark.integration

ALICE_SECRET = "walrus-lantern-4417"  # only ever in alice's dialogue
CAP_USD = 0.5


@dataclass
class Proxy:
    served: Served
    services: Services
    cloud: FakeCloud
    owners: MemoryOwners
    tmp: Path
    secrets: dict[str, str]

    def client(self, name: str) -> OpenAI:
        return OpenAI(
            base_url=f"{self.served.url}/v1",
            api_key=self.secrets[name],
            max_retries=0,
        )


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("proxy")
    file = tmp / "keys.yaml"
    rate = "1000/second"
    _, webui = add_key(file, "owui", "webui", daily_cost_cap_usd=CAP_USD, rate=rate, proxy=True)
    _, plain = add_key(file, "dora", "dora-key", rate=rate)
    cloud = FakeCloud(answer="from the cloud")
    cloud.sent = []
    services = fake_services(tmp, EchoLocal(), cloud, settings=access_settings(tmp))
    owners = MemoryOwners()
    graph = build_graph(services, checkpointer=InMemorySaver())
    app = create_app(graph, services.settings, keys=KeyRing(file=file), owners=owners)
    served = Served(app)
    yield Proxy(served, services, cloud, owners, tmp, {"webui": webui, "dora": plain})
    served.stop()


def _as(end_user: str) -> dict[str, Any]:
    """How Open WebUI names its user (ENABLE_FORWARD_USER_INFO_HEADERS=true)."""
    return {"extra_headers": {"X-OpenWebUI-User-Id": end_user}}


def test_two_end_users_of_one_proxy_never_see_each_others_threads_or_memory(
    proxy: Proxy,
) -> None:
    webui = proxy.client("webui")
    first = ask(webui, f"My locker code is {ALICE_SECRET}.", **_as("alice"))
    alice_thread = first.headers["x-tmo-thread-id"]
    for text in ("What a day.", "Anything else?"):
        ask(webui, text, alice_thread, **_as("alice"))
    # Alice's own later turn recalls it (the echoing model shows its prompt) ...
    recalled = ask(webui, "Tell me my locker code.", **_as("alice")).parse()
    assert ALICE_SECRET in (recalled.choices[0].message.content or "")
    # ... bob's never does, named by the header or by the user field.
    for how in (_as("bob"), {"user": "bob"}):
        reply = ask(webui, "Tell me my locker code.", **how).parse()
        assert ALICE_SECRET not in (reply.choices[0].message.content or "")
    with pytest.raises(openai.NotFoundError):
        ask(webui, "Hello?", alice_thread, **_as("bob"))
    with pytest.raises(openai.NotFoundError):  # the key's own user is not alice either
        ask(webui, "Hello?", alice_thread)
    assert owner_map(proxy.owners)[alice_thread] == "owui/alice"
    assert set(owner_map(proxy.owners).values()) == {"owui/alice", "owui/bob"}


def test_each_end_user_has_their_own_daily_cap(proxy: Proxy) -> None:
    ledger = proxy.services.spend_ledger()
    held = ledger.reserve("owui/carol", CAP_USD, CAP_USD)  # carol spent her day already
    assert held is not None
    ledger.settle(held, CAP_USD)
    webui = proxy.client("webui")
    carol = ask(webui, "What is boiling?", model="tmo-always-cloud", **_as("carol")).parse()
    erin = ask(webui, "What is boiling?", model="tmo-always-cloud", **_as("erin")).parse()
    assert carol.model_extra["tmo"]["route"] == "local"
    assert "reached the daily cap" in (carol.model_extra["tmo"]["fallback"] or "")
    assert erin.model_extra["tmo"]["route"] == "cloud"
    assert ledger.spent("owui/erin") > 0 and ledger.spent("owui") == 0


def test_the_audit_line_names_the_end_user(proxy: Proxy) -> None:
    ask(proxy.client("webui"), "Ask the cloud", model="tmo-always-cloud", **_as("frank"))
    entry = read_audit(proxy.tmp / "audit.jsonl")[-1]
    assert entry["user_id"] == "owui/frank" and entry["key_id"] == "webui"


def test_an_ordinary_key_cannot_name_an_end_user(proxy: Proxy) -> None:
    dora = proxy.client("dora")
    for how in (_as("alice"), {"user": "alice"}, {"extra_headers": {"x-tmo-user": "alice"}}):
        with pytest.raises(openai.PermissionDeniedError) as info:
            ask(dora, "Show me alice's things", **how)
        error = error_of(info)
        assert error["code"] == "user_mismatch" and "--proxy" in error["message"]
    assert ask(dora, "Hi, it is me", **_as("dora")).parse().choices[0].message.content


def test_a_proxy_naming_two_users_at_once_or_a_bad_one_gets_400(proxy: Proxy) -> None:
    webui = proxy.client("webui")
    with pytest.raises(openai.BadRequestError) as info:
        ask(webui, "Hello", user="alice", **_as("bob"))
    assert "name different users" in error_of(info)["message"]
    with pytest.raises(openai.BadRequestError) as info:
        ask(webui, "Hello", user="x" * 200)
    assert error_of(info)["param"] == "user"
    # Naming no one, the proxy acts as its key's own user.
    thread = ask(webui, "Hello").headers["x-tmo-thread-id"]
    assert owner_map(proxy.owners)[thread] == "owui"
