"""The server's tools: OpenAI's ``tools`` / ``tool_choice`` in, ``tool_calls`` out (plain and
streamed), ``role: "tool"`` results and assistant ``tool_calls`` read back, bad ones refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeLocal, ToolCloud, fake_services
from tmo_graph.graph import build_graph
from tmo_graph.server.app import create_app

TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL = {"name": "weather", "args": {"city": "Oslo"}, "id": "call_w", "type": "tool_call"}
QUESTION = {"role": "user", "content": "Will it rain in Oslo today?"}
ASKED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_w",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
        }
    ],
}
RESULT = {"role": "tool", "tool_call_id": "call_w", "content": "rain, 9 C"}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TestClient, ToolCloud, FakeLocal]]:
    cloud = ToolCloud(replies=[AIMessage("", tool_calls=[CALL]), AIMessage("Yes, rain.")])
    cloud.sent, cloud.kwargs_sent = [], []
    local = FakeLocal(["local words"])
    services = fake_services(tmp_path, local, cloud)
    app = create_app(
        build_graph(services, checkpointer=InMemorySaver()), services.settings, no_auth=True
    )
    with TestClient(app) as client:
        yield client, cloud, local


def _post(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/chat/completions", json={"model": "tmo-cascade", **body})


def test_tools_in_tool_calls_out_then_the_result_is_answered(
    served: tuple[TestClient, ToolCloud, FakeLocal],
) -> None:
    client, cloud, local = served
    first = _post(client, messages=[QUESTION], tools=[TOOL], tool_choice="auto")
    assert first.status_code == 200, first.text
    choice = first.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == ASKED["tool_calls"]
    assert cloud.kwargs_sent[0]["tools"] == [TOOL] and cloud.kwargs_sent[0]["tool_choice"] == "auto"
    assert local.calls == 0

    second = _post(client, messages=[QUESTION, ASKED, RESULT], tools=[TOOL])
    assert second.status_code == 200, second.text
    answer = second.json()["choices"][0]
    assert answer["finish_reason"] == "stop" and answer["message"]["content"] == "Yes, rain."
    sent = cloud.sent[1]
    assert isinstance(sent[-1], ToolMessage) and sent[-1].content == "rain, 9 C"
    assert isinstance(sent[-2], AIMessage) and sent[-2].tool_calls[0]["args"] == {"city": "Oslo"}


def test_streamed_tool_calls_come_as_one_delta_and_finish_with_tool_calls(
    served: tuple[TestClient, ToolCloud, FakeLocal],
) -> None:
    client, _, _ = served
    response = _post(client, messages=[QUESTION], tools=[TOOL], stream=True)
    assert response.status_code == 200, response.text
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    calls = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert calls == [[{"index": 0, **ASKED["tool_calls"][0]}]]  # type: ignore[dict-item]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_an_always_local_turn_ignores_the_tools_and_answers_in_words(
    served: tuple[TestClient, ToolCloud, FakeLocal],
) -> None:
    client, cloud, _ = served
    response = client.post(
        "/v1/chat/completions",
        json={"model": "tmo-always-local", "messages": [QUESTION], "tools": [TOOL]},
    )
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == "local words"
    assert "tool_calls" not in choice["message"] and cloud.sent == []


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"messages": [QUESTION], "tools": [{"type": "function"}]}, "tools[0]", "function tool"),
        ({"messages": [QUESTION], "tools": [TOOL], "tool_choice": "any"}, "tool_choice", "auto"),
        (
            {"messages": [QUESTION, ASKED, {"role": "tool", "content": "x"}]},
            "messages[2].tool_call_id",
            "the id of the call",
        ),
        (
            {
                "messages": [
                    QUESTION,
                    {
                        **ASKED,
                        "tool_calls": [{"id": "c", "function": {"name": "w", "arguments": "{"}}],
                    },
                    RESULT,
                ]
            },
            "messages[1].tool_calls[0]",
            "JSON object",
        ),
    ],
)
def test_bad_tool_fields_get_400_naming_the_field(
    served: tuple[TestClient, ToolCloud, FakeLocal], body: dict[str, Any], param: str, says: str
) -> None:
    client, _, _ = served
    response = _post(client, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"]


def test_a_named_thread_takes_only_the_tool_result_as_new(
    served: tuple[TestClient, ToolCloud, FakeLocal],
) -> None:
    client, cloud, _ = served
    first = _post(client, messages=[QUESTION], tools=[TOOL])
    thread = first.headers["x-tmo-thread-id"]
    second = client.post(
        "/v1/chat/completions",
        headers={"x-tmo-thread-id": thread},
        json={"model": "tmo-cascade", "messages": [QUESTION, ASKED, RESULT], "tools": [TOOL]},
    )
    assert second.status_code == 200, second.text
    assert second.json()["tmo"]["turn"] == 1 and second.json()["tmo"]["thread_id"] == thread
    # The thread's question and call are sent once: the request repeats the thread's.
    kinds = [type(m).__name__ for m in cloud.sent[1] if type(m).__name__ != "SystemMessage"]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage"]


def test_a_resent_tool_loop_without_a_thread_header_stays_one_thread(
    served: tuple[TestClient, ToolCloud, FakeLocal],
) -> None:
    client, _, _ = served
    first = _post(client, messages=[QUESTION], tools=[TOOL])
    second = _post(client, messages=[QUESTION, ASKED, RESULT], tools=[TOOL])
    assert first.status_code == second.status_code == 200, second.text
    assert first.headers["x-tmo-thread-id"] == second.headers["x-tmo-thread-id"]
    assert (first.json()["tmo"]["turn"], second.json()["tmo"]["turn"]) == (0, 1)


def test_a_resent_tool_call_with_other_arguments_is_not_the_thread_s(
    served: tuple[TestClient, ToolCloud, FakeLocal],
) -> None:
    """The chain holds each call's name and arguments (re-serialised: spacing and key order do
    not matter), so a history whose call the client changed is not the thread's dialogue."""
    client, _, _ = served
    first = _post(client, messages=[QUESTION], tools=[TOOL])
    function = ASKED["tool_calls"][0]["function"]  # type: ignore[index]
    changed = {**ASKED, "tool_calls": [{"function": {**function, "arguments": '{"city":"Rome"}'}}]}
    second = _post(client, messages=[QUESTION, changed, RESULT], tools=[TOOL])
    assert first.status_code == second.status_code == 200, second.text
    assert first.headers["x-tmo-thread-id"] != second.headers["x-tmo-thread-id"]
    assert second.json()["tmo"]["turn"] == 0


def test_call_pieces_read_openai_s_shape_and_the_record_s_alike() -> None:
    from tmo_graph.server.continuity import call_pieces

    openai_shape = [{"function": {"name": "weather", "arguments": '{ "city" :"Oslo" }'}}]
    assert call_pieces(openai_shape) == call_pieces([CALL]) == ('call:weather:{"city": "Oslo"}',)
    assert call_pieces([{"function": {"name": "f", "arguments": "not json"}}]) == (
        'call:f:"not json"',
    )
    assert call_pieces(None) == ()
