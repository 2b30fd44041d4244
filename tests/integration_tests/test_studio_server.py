"""The graph as LangGraph Studio sees it: `langgraph dev` on 127.0.0.1 serving langgraph.json,
with non-null input / output / context schemas and a real turn answered through its API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration_tests.servers import langgraph_dev

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("studio")
    env = {
        # No loopback cloud: the turn below is answered on the device.
        "TMO_CLOUD__MODE": "off",
        "TMO_MEMORY__PERSIST_DIR": str(work / "memory"),
    }
    with langgraph_dev(work, env) as server:
        yield server.url


def _assistant(url: str) -> str:
    found = httpx.post(f"{url}/assistants/search", json={"graph_id": "tmo"}, timeout=10).json()
    return str(found[0]["assistant_id"])


def test_studio_gets_the_input_output_and_context_schemas(server: str) -> None:
    schemas = httpx.get(f"{server}/assistants/{_assistant(server)}/schemas", timeout=30).json()
    assert schemas["input_schema"] is not None and schemas["output_schema"] is not None
    assert {"messages", "views"} <= schemas["input_schema"]["properties"].keys()
    assert {"messages", "turns", "budget_left"} <= schemas["output_schema"]["properties"].keys()
    policy = schemas["context_schema"]["properties"]["policy"]
    assert "cascade" in policy["enum"]


def test_a_two_turn_dialogue_streams_through_the_sdk(server: str) -> None:
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=server)
    thread = client.threads.create()["thread_id"]
    context = {"policy": "cascade", "user_id": "studio-test", "system_prompt": "Be brief."}
    for question in ("Say hello.", "And now say goodbye."):
        tokens = []
        for part in client.runs.stream(
            thread,
            "tmo",
            input={"messages": [{"role": "user", "content": question}]},
            context=context,
            stream_mode="messages-tuple",
        ):
            if part.event == "messages":
                chunk, meta = part.data
                if "draft" not in (meta.get("tags") or []):
                    tokens.append(chunk.get("content", ""))
        assert part.event != "error", part.data
    values = client.threads.get_state(thread)["values"]
    records = values["turns"]
    assert [r["turn"] for r in records] == [0, 1]
    assert all(r["route"] == "local" and r["policy"] == "cascade" for r in records)
    # Cloud is off, so no answer can be replaced: the local tokens stream untagged, once.
    assert "".join(tokens).strip() == records[-1]["answer"] == values["messages"][-1]["content"]
    assert [m["type"] for m in values["messages"]] == ["human", "ai", "human", "ai"]
