"""Tools end to end: a LangGraph agent over ``TMOChatModel`` calls its tool and answers, and the
``openai`` client against the served router gets tool calls back (plain and streamed) and its
tool result answered.

The cloud is a real ``ChatOpenAI`` against an OpenAI-compatible stand-in on 127.0.0.1 that
keeps every request body: a request that offers tools and holds no tool result yet is answered
with a call of its first tool; a request holding a tool result is answered in words quoting it.
The device model and the embeddings are fakes (instant).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.prebuilt import create_react_agent

from tests.integration_tests.test_server import Served
from tests.unit_tests.fakes import FakeLocal
from tmo_graph.chat_model import TMOChatModel
from tmo_graph.context import Context
from tmo_graph.graph import build_graph
from tmo_graph.guards.faults import reset_breakers
from tmo_graph.models.cloud import free_port, make_cloud_chat_model
from tmo_graph.server.app import create_app
from tmo_graph.services import Services
from tmo_graph.settings import Settings

pytestmark = pytest.mark.integration

USAGE = {"prompt_tokens": 60, "completion_tokens": 12, "total_tokens": 72}
ARGS = {"city": "Oslo"}


class ToolStandIn:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 that calls tools, then answers."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stand_in.bodies.append(body)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    stand_in.reply(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ToolStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def reply(h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        results = [m for m in body["messages"] if m["role"] == "tool"]
        call: dict[str, Any] | None = None
        text = ""
        if results:
            text = f"The tool said: {results[-1]['content']}"
        elif body.get("tools"):
            name = body["tools"][0]["function"]["name"]
            call = {
                "index": 0,
                "id": f"call_{len(body['messages'])}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(ARGS)},
            }
        else:
            text = "No tools, no call."
        finish = "tool_calls" if call else "stop"
        base = {"id": "chatcmpl-standin", "created": 0, "model": "tool-model"}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if call:
                message["tool_calls"] = [{k: v for k, v in call.items() if k != "index"}]
            out = {**base, "object": "chat.completion", "usage": USAGE}
            out["choices"] = [{"index": 0, "message": message, "finish_reason": finish}]
            data = json.dumps(out).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()  # HTTP/1.0: the body ends when the connection closes

        def event(choices: list[dict[str, Any]], **extra: Any) -> None:
            chunk = {**base, "object": "chat.completion.chunk", "choices": choices, **extra}
            h.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())

        def delta(d: dict[str, Any], reason: str | None = None) -> None:
            event([{"index": 0, "delta": d, "finish_reason": reason}])

        delta({"role": "assistant", "content": ""})
        if call:  # the name first, the arguments in two pieces, as OpenAI streams them
            head = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
            delta({"tool_calls": [head]})
            arguments = call["function"]["arguments"]
            for piece in (arguments[:5], arguments[5:]):
                delta({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        for i in range(0, len(text), 6):
            delta({"content": text[i : i + 6]})
        delta({}, finish)
        event([], usage=USAGE)
        h.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def stand_in() -> Iterator[ToolStandIn]:
    reset_breakers()
    with ToolStandIn() as server:
        yield server
    reset_breakers()


def _graph(stand_in: ToolStandIn, tmp_path: Path) -> Any:
    services = Services(
        settings=Settings(),
        local=FakeLocal(["local words"]),
        cloud=make_cloud_chat_model(stand_in.base_url, "tool-model", None, 20.0, 64),
        embeddings=DeterministicFakeEmbedding(size=32),
        media_dir=tmp_path / "media",
    )
    return build_graph(services, checkpointer=InMemorySaver())


# langchain (whose create_agent replaces it) is not installed; LangGraph 1.x still ships this.
@pytest.mark.filterwarnings("ignore:create_react_agent has been moved")
def test_a_react_agent_over_the_router_calls_its_tool_and_answers(
    stand_in: ToolStandIn, tmp_path: Path
) -> None:
    asked: list[str] = []

    @tool
    def weather(city: str) -> str:
        """Today's weather in a city."""
        asked.append(city)
        return f"rain in {city}, 9 C"

    graph = _graph(stand_in, tmp_path)
    router = TMOChatModel(graph=graph, context=Context(policy="cascade"))
    agent = create_react_agent(router, [weather])
    config = {"configurable": {"thread_id": "agent-1"}}
    out = agent.invoke({"messages": [("user", "Will it rain in Oslo today?")]}, config)

    assert asked == ["Oslo"]  # the agent ran the tool with the cloud's arguments
    kinds = [type(m).__name__ for m in out["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    call, result, final = out["messages"][1], out["messages"][2], out["messages"][3]
    assert isinstance(call, AIMessage) and call.tool_calls[0]["args"] == ARGS
    assert isinstance(result, ToolMessage) and result.content == "rain in Oslo, 9 C"
    assert final.content == "The tool said: rain in Oslo, 9 C"
    assert final.response_metadata["route"] == "cloud" and final.response_metadata["turn"] == 1

    first, second = stand_in.bodies
    assert [t["function"]["name"] for t in first["tools"]] == ["weather"]
    assert first["messages"][-1]["role"] == "user"
    # The follow-up carries the call and its result in OpenAI's shape.
    assistant, tool_result = second["messages"][-2], second["messages"][-1]
    assert assistant["tool_calls"][0]["function"]["name"] == "weather"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == ARGS
    assert tool_result == {
        "role": "tool",
        "content": "rain in Oslo, 9 C",
        "tool_call_id": assistant["tool_calls"][0]["id"],
    }
    # The router's thread holds the agent's dialogue once, as two turns.
    stored = graph.get_state(config).values
    assert [type(m).__name__ for m in stored["messages"]] == kinds
    assert [t["turn"] for t in stored["turns"]] == [0, 1]


WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Today's weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.mark.parametrize("stream", [False, True])
def test_the_openai_client_gets_tool_calls_and_its_tool_result_answered(
    stand_in: ToolStandIn, tmp_path: Path, stream: bool
) -> None:
    served = Served(create_app(_graph(stand_in, tmp_path), no_auth=True))
    try:
        client = served.client()
        messages: list[Any] = [{"role": "user", "content": "Will it rain in Oslo today?"}]
        ask: dict[str, Any] = {"model": "tmo-rules", "tools": [WEATHER], "tool_choice": "auto"}
        if stream:
            calls: dict[int, dict[str, Any]] = {}
            finish = None
            for chunk in client.chat.completions.create(messages=messages, stream=True, **ask):
                choice = chunk.choices[0] if chunk.choices else None
                for piece in (choice.delta.tool_calls or []) if choice else []:
                    whole = calls.setdefault(piece.index, {"arguments": ""})
                    whole["id"] = piece.id or whole.get("id")
                    if piece.function and piece.function.name:
                        whole["name"] = piece.function.name
                    if piece.function and piece.function.arguments:
                        whole["arguments"] += piece.function.arguments
                finish = (choice.finish_reason if choice else None) or finish
            assert finish == "tool_calls" and len(calls) == 1
            call = calls[0]
        else:
            reply = client.chat.completions.create(messages=messages, **ask)
            assert reply.choices[0].finish_reason == "tool_calls"
            made = reply.choices[0].message.tool_calls
            assert made is not None and len(made) == 1
            function = made[0].function  # type: ignore[union-attr]
            call = {"id": made[0].id, "name": function.name, "arguments": function.arguments}
        assert call["name"] == "weather" and json.loads(call["arguments"]) == ARGS
        assert stand_in.bodies[0]["tools"] == [WEATHER]

        function = {"name": call["name"], "arguments": call["arguments"]}
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": call["id"], "type": "function", "function": function}],
            }
        )
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": "rain, 9 C"})
        if stream:
            text = "".join(
                chunk.choices[0].delta.content or ""
                for chunk in client.chat.completions.create(messages=messages, stream=True, **ask)
                if chunk.choices
            )
        else:
            answer = client.chat.completions.create(messages=messages, **ask)
            assert answer.choices[0].finish_reason == "stop"
            text = answer.choices[0].message.content or ""
        assert text == "The tool said: rain, 9 C"
        sent = stand_in.bodies[1]["messages"]
        assert sent[-1] == {"role": "tool", "content": "rain, 9 C", "tool_call_id": call["id"]}
    finally:
        served.stop()
