"""A scripted dialogue for the console's tests: two users' threads on a server built on fakes,
with keys for alice, bob and an admin; its turns are local, cloud text, cloud with an image,
escalated, private, and one whose e-mail address is kept from the cloud."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeCloud, Stats, fake_services, png_bytes
from tmo_graph.graph import build_graph
from tmo_graph.sections import ApiKey
from tmo_graph.server.keys import KeyRing, hash_key
from tmo_graph.services import Services
from tmo_graph.settings import Settings

SECRETS = {"alice": "tmo-alice-secret-0000", "bob": "tmo-bob-secret-0000", "root": "tmo-root-0000"}
EMAIL = "alice.private@example.com"
PRIVATE_WORDS = "my door code is 4711"
CAP_USD = 0.25


class UnsureLocal:
    """A local model that streams its draft word by word (through a LangChain model, as the
    real one does) and is unsure of it (``logprob`` -3: a cascade escalates; -0.05: it keeps
    the draft); ``delay`` s a word."""

    def __init__(
        self, text: str = "a hesitant local draft", delay: float = 0.0, logprob: float = -3.0
    ) -> None:
        self.text, self.delay, self.logprob = text, delay, logprob

    def answer(
        self, messages: Any, max_new_tokens: Any = None, tags: Any = None, max_time_s: Any = None
    ) -> tuple[str, Stats]:
        model = GenericFakeChatModel(messages=iter([AIMessage(content=self.text)]))
        parts = []
        for chunk in model.stream("q", config={"tags": tags or []}):
            parts.append(str(chunk.content))
            time.sleep(self.delay)
        n = len(self.text.split())
        return "".join(parts), Stats([self.logprob] * n, [0.5 - 2.0 * self.logprob] * n)


class SlowCloud(FakeCloud):
    """The fake cloud, ``delay`` s slow (so a draft stays on screen a while)."""

    delay: float = 0.0

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        time.sleep(self.delay)
        return super()._generate(messages, stop, run_manager, **kw)


def keys() -> KeyRing:
    return KeyRing(
        [
            ApiKey(
                id="alice-key",
                user="alice",
                sha256=hash_key(SECRETS["alice"]),
                daily_cost_cap_usd=CAP_USD,
            ),
            ApiKey(id="bob-key", user="bob", sha256=hash_key(SECRETS["bob"])),
            ApiKey(id="root-key", user="root", sha256=hash_key(SECRETS["root"]), admin=True),
        ]
    )


def build(tmp: Path, delay: float = 0.0, threads_url: str | None = None) -> tuple[Any, Services]:
    """The graph (fakes, in-memory checkpoints) and its services (audit log, media in ``tmp``;
    ``threads_url``: the app's own thread store on that PostgreSQL)."""
    settings = Settings(
        audit={"path": str(tmp / "audit.jsonl")},
        spending={"ledger": str(tmp / "spend.sqlite")},
        threads={"url": threads_url},
    )
    cloud = SlowCloud(answer="The cloud's considered answer.", delay=delay)
    cloud.sent = []
    services = fake_services(tmp, UnsureLocal(delay=delay / 10), cloud, settings=settings)  # type: ignore[arg-type]
    return build_graph(services, checkpointer=InMemorySaver()), services


def png_url() -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes("orange")).decode()


@dataclass
class Script:
    """The threads the script made: user -> thread id."""

    threads: dict[str, str] = field(default_factory=dict)


TURNS: list[tuple[str, Any, bool]] = [
    ("tmo-always-local", "Hello there, what can you do?", False),
    ("tmo-always-cloud", "Explain how a heat pump works.", False),
    (
        "tmo-always-cloud",
        [
            {"type": "text", "text": "What colour is this?"},
            {"type": "image_url", "image_url": {"url": png_url()}},
        ],
        False,
    ),
    ("tmo-cascade", "Is it efficient in winter?", False),
    ("tmo-always-cloud", PRIVATE_WORDS, True),
    ("tmo-always-cloud", f"Send the summary to {EMAIL} please.", False),
]


def run_script(client: httpx.Client | Any) -> Script:
    """Alice's six turns in one thread, bob's one turn in another, through ``/v1``."""
    script = Script()
    headers = {"authorization": f"Bearer {SECRETS['alice']}"}
    for model, content, private in TURNS:
        message: dict[str, Any] = {"role": "user", "content": content}
        if private:
            message["private"] = True
        thread = script.threads.get("alice")
        reply = client.post(
            "/v1/chat/completions",
            headers={**headers, **({"x-tmo-thread-id": thread} if thread else {})},
            json={"model": model, "messages": [message]},
        )
        assert reply.status_code == 200, reply.text
        script.threads["alice"] = reply.headers["x-tmo-thread-id"]
    reply = client.post(
        "/v1/chat/completions",
        headers={"authorization": f"Bearer {SECRETS['bob']}"},
        json={"model": "tmo-always-cloud", "messages": [{"role": "user", "content": "Bob asks."}]},
    )
    assert reply.status_code == 200, reply.text
    script.threads["bob"] = reply.headers["x-tmo-thread-id"]
    return script
