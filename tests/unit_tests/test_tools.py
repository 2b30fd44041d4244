"""Tool calling through the router: the cloud gets the turn's tools, the device model reads tool
results as text, a turn kept on the device warns, tool results are redacted like any text."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    FunctionMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeLocal, ToolCloud, fake_services
from tmo_graph.chat_model import TMOChatModel, ToolsNotSupported, openai_tool_choice
from tmo_graph.context import Context
from tmo_graph.conversation import new_messages
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.nodes.recall_memory import completed_turns, turn_text
from tmo_graph.sections import PrivacySettings
from tmo_graph.settings import Settings
from tmo_graph.state import State
from tmo_graph.turn import earlier_prompts, prompt_chars

QUESTION = "Please boil water for tea."
CALL = {"name": "boil", "args": {"minutes": 3}, "id": "call_1", "type": "tool_call"}
FINAL = "The water is boiling."


@tool
def boil(minutes: int) -> str:
    """Boil the kettle for some minutes."""
    return f"boiling for {minutes} min"


def _cloud(*replies: AIMessage) -> ToolCloud:
    cloud = ToolCloud(replies=list(replies) or [AIMessage("", tool_calls=[CALL]), AIMessage(FINAL)])
    cloud.sent, cloud.kwargs_sent = [], []
    return cloud


def _setup(
    tmp_path: Path, cloud: ToolCloud, policy: str = "cascade", **context: Any
) -> tuple[Any, TMOChatModel, FakeLocal]:
    local = FakeLocal(["local words"])
    graph = build_graph(fake_services(tmp_path, local, cloud), checkpointer=InMemorySaver())
    model = TMOChatModel(graph=graph, context=Context(policy=policy, **context))  # type: ignore[arg-type]
    return graph, model, local


def _conf(thread: str) -> Any:
    return {"configurable": {"thread_id": thread}}


def _last_record(graph: Any, thread: str) -> dict[str, Any]:
    return dict(graph.get_state(_conf(thread)).values["turns"][-1])


def test_a_turn_with_tools_goes_to_the_cloud_and_returns_its_tool_call(tmp_path: Path) -> None:
    cloud = _cloud()
    graph, model, local = _setup(tmp_path, cloud)
    bound = model.bind_tools([boil], tool_choice="auto")
    reply = bound.invoke(QUESTION, _conf("t"))
    assert isinstance(reply, AIMessage)
    assert reply.content == "" and [(c["name"], c["args"], c["id"]) for c in reply.tool_calls] == [
        ("boil", {"minutes": 3}, "call_1")
    ]
    assert reply.response_metadata["route"] == "cloud"
    assert local.calls == 0  # the device model was not asked: it cannot call tools
    sent = cloud.kwargs_sent[0]
    assert sent["tools"][0]["function"]["name"] == "boil" and sent["tool_choice"] == "auto"
    assert sent["tools"][0]["function"]["parameters"]["properties"]["minutes"]["type"] == "integer"
    record = _last_record(graph, "t")
    assert record["tool_calls"][0]["name"] == "boil" and "warnings" not in record

    # The agent's next call: the tool's result; the cloud reads the call and the result in
    # OpenAI's shape after the question, and answers in words.
    result = ToolMessage("boiling for 3 min", tool_call_id="call_1", name="boil")
    final = bound.invoke([HumanMessage(QUESTION), reply, result], _conf("t"))
    assert final.content == FINAL and final.tool_calls == []
    request = cloud.sent[1]
    assert [type(m).__name__ for m in request[-3:]] == ["HumanMessage", "AIMessage", "ToolMessage"]
    assert request[-2].tool_calls[0]["id"] == "call_1"  # type: ignore[attr-defined]
    assert request[-1].tool_call_id == "call_1" and request[-1].content == "boiling for 3 min"  # type: ignore[attr-defined]
    assert "tools" in cloud.kwargs_sent[1]  # offered again: the caller binds them every call
    turns = graph.get_state(_conf("t")).values["turns"]
    assert [t["turn"] for t in turns] == [0, 1] and turns[1]["answer"] == FINAL


def test_streamed_tool_calls_arrive_as_tool_call_chunks(tmp_path: Path) -> None:
    _, model, _ = _setup(tmp_path, _cloud())
    chunks = list(model.bind_tools([boil]).stream(QUESTION, _conf("s")))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole = whole + chunk
    assert [c["name"] for c in whole.tool_call_chunks] == ["boil"]
    assert whole.tool_calls[0]["args"] == {"minutes": 3}


def test_async_calls_return_the_tool_call_too(tmp_path: Path) -> None:
    _, model, _ = _setup(tmp_path, _cloud())
    reply = asyncio.run(model.bind_tools([boil]).ainvoke(QUESTION, _conf("a")))
    assert isinstance(reply, AIMessage) and reply.tool_calls[0]["name"] == "boil"


@pytest.mark.parametrize(
    ("policy", "private", "context", "why"),
    [
        ("always-local", False, {}, None),
        ("cascade", True, {}, "kept on the device: private message"),
        # A budget that pays for no cloud call masks every cloud action.
        ("cascade", False, {"cost_budget_usd": 1e-6}, None),
    ],
)
def test_a_turn_kept_on_the_device_answers_without_tools_and_warns(
    tmp_path: Path, policy: str, private: bool, context: dict[str, Any], why: str | None
) -> None:
    cloud = _cloud()
    graph, model, local = _setup(tmp_path, cloud, policy, **context)
    flags = {"private": True} if private else {}
    reply = model.bind_tools([boil]).invoke(
        [HumanMessage(QUESTION, additional_kwargs=flags)], _conf("k")
    )
    assert isinstance(reply, AIMessage)
    assert reply.tool_calls == [] and reply.response_metadata["route"] == "local"
    assert cloud.sent == [] and local.calls >= 1
    warnings = _last_record(graph, "k")["warnings"]
    assert "tools were offered but the turn was answered on the device without them" in warnings
    if why:
        assert why in warnings


def test_the_device_model_reads_tool_calls_and_results_as_text(tmp_path: Path) -> None:
    _, model, local = _setup(tmp_path, _cloud(), "always-local")
    history: list[BaseMessage] = [
        HumanMessage(QUESTION),
        AIMessage("", tool_calls=[CALL]),
        ToolMessage("boiling for 3 min", tool_call_id="call_1", name="boil"),
        ToolMessage("kettle is full", tool_call_id="call_2", name="fill"),
    ]
    model.invoke(history, _conf("d"))
    seen = local.seen[-1]
    assert [m["role"] for m in seen] == ["system", "user", "assistant", "user"]
    assert seen[2]["content"] == '[called tool boil with {"minutes": 3}]'
    assert seen[3]["content"] == (
        "[result of tool boil: boiling for 3 min]\n[result of tool fill: kettle is full]"
    )


def test_tool_results_and_call_arguments_are_redacted_and_restored(tmp_path: Path) -> None:
    mail = "bob.smith@example.com"
    # The cloud sees only the placeholder, and calls the tool with it.
    ask = {"name": "send", "args": {"to": "[EMAIL_1]"}, "id": "call_9", "type": "tool_call"}
    cloud = _cloud(AIMessage("", tool_calls=[ask]), AIMessage("Sent to [EMAIL_1]."))
    graph, model, _ = _setup(tmp_path, cloud)
    bound = model.bind_tools([boil])
    reply = bound.invoke(f"Mail {mail} the recipe", _conf("p"))
    assert isinstance(reply, AIMessage)
    assert reply.tool_calls[0]["args"] == {"to": mail}  # the tool gets the user's value
    assert mail not in str(cloud.sent[0])
    result = ToolMessage(f"delivered to {mail}", tool_call_id="call_9")
    final = bound.invoke([HumanMessage(f"Mail {mail} the recipe"), reply, result], _conf("p"))
    assert final.content == f"Sent to {mail}."
    second = cloud.sent[1]
    assert mail not in str(second)  # neither in the tool's result nor in the call's args
    assert second[-1].content == "delivered to [EMAIL_1]"
    assert second[-2].tool_calls[0]["args"] == {"to": "[EMAIL_1]"}  # type: ignore[attr-defined]
    assert _last_record(graph, "p")["redactions"]["email"] >= 1


def test_the_history_rule_takes_tool_results_as_the_new_messages() -> None:
    question, call = HumanMessage(QUESTION, id="h"), AIMessage("", tool_calls=[CALL], id="a")
    result = ToolMessage("boiling", tool_call_id="call_1")
    assert new_messages([question, call, result], [question, call]) == [result]
    # Without ids (the server), an answer that called tools is found by its calls.
    other = AIMessage("", tool_calls=[{**CALL, "args": {"minutes": 9}}])
    plain = [HumanMessage(QUESTION), AIMessage("", tool_calls=[CALL]), result]
    assert new_messages(plain, [question, call], strict=False) == [result]
    with pytest.raises(TmoGraphError, match="not this thread's"):
        new_messages([question, other, result], [question, call])
    with pytest.raises(TmoGraphError, match="'function' message"):
        new_messages([FunctionMessage("x", name="f"), HumanMessage("hi")], [])


def test_tool_choice_spellings_and_what_stays_refused(tmp_path: Path) -> None:
    assert openai_tool_choice("any") == "required" == openai_tool_choice(True)
    assert openai_tool_choice("boil") == {"type": "function", "function": {"name": "boil"}}
    assert openai_tool_choice(None) is None and openai_tool_choice("none") == "none"
    _, model, _ = _setup(tmp_path, _cloud())
    with pytest.raises(ToolsNotSupported, match="structured output"):
        model.with_structured_output(dict)
    with pytest.raises(TmoGraphError, match="unknown argument"):
        model.bind_tools([boil], parallel_tool_calls=False)
    bound: Any = model.bind_tools([boil], strict=True)
    assert bound.kwargs["tools"][0]["function"]["strict"] is True


def test_a_finished_turn_leaves_the_window_with_its_tool_results() -> None:
    first = [HumanMessage("q1"), AIMessage("", tool_calls=[CALL])]
    first += [ToolMessage("r1", tool_call_id="call_1"), AIMessage("a1")]
    now = [
        HumanMessage("q2"),
        AIMessage("", tool_calls=[CALL]),
        ToolMessage("r2", tool_call_id="x"),
    ]
    assert completed_turns([*first, *now]) == [first]  # this turn's calls stay with it
    assert turn_text(first) == (
        'User: q1\nAssistant: [called tool boil with {"minutes": 3}]\n'
        "[result of tool: r1]\nAssistant: a1"
    )


def test_a_tool_result_with_keep_local_data_keeps_the_turn_on_the_device(tmp_path: Path) -> None:
    cloud = _cloud()
    local = FakeLocal(["local words"])
    settings = Settings(privacy=PrivacySettings(keep_local=["email"]))
    services = fake_services(tmp_path, local, cloud, settings=settings)
    graph = build_graph(services, checkpointer=InMemorySaver())
    model = TMOChatModel(graph=graph, context=Context(policy="cascade"))
    bound = model.bind_tools([boil])
    reply = bound.invoke(QUESTION, _conf("kl"))
    assert isinstance(reply, AIMessage) and reply.tool_calls
    result = ToolMessage("owner: bob.smith@example.com", tool_call_id="call_1")
    final = bound.invoke([HumanMessage(QUESTION), reply, result], _conf("kl"))
    assert final.response_metadata["route"] == "local" and len(cloud.sent) == 1
    warnings = _last_record(graph, "kl")["warnings"]
    assert "kept on the device: personal data (email)" in warnings


def test_tool_choice_none_offers_no_tools_so_the_policy_routes_as_usual(tmp_path: Path) -> None:
    cloud = _cloud()
    graph, model, local = _setup(tmp_path, cloud)
    reply = model.bind_tools([boil], tool_choice="none").invoke(QUESTION, _conf("n"))
    assert reply.response_metadata["route"] == "local" and cloud.sent == []
    assert "warnings" not in _last_record(graph, "n")


def test_the_budget_counts_a_tool_result_and_the_question_once() -> None:
    result = "rain " * 200
    state = State(
        messages=[
            HumanMessage(QUESTION),
            AIMessage("", tool_calls=[CALL]),
            ToolMessage(result, tool_call_id="call_1"),
        ],
        prompt=QUESTION,
        tools=[{"type": "function", "function": {"name": "boil"}}],
    )
    tools = len('[{"type": "function", "function": {"name": "boil"}}]')
    call = len('{"name": "boil", "args": {"minutes": 3}}')
    assert prompt_chars(state) == len(result) + len(QUESTION) + tools + call
    assert earlier_prompts(state.messages, 3) == []


def test_an_escalation_carries_the_turns_tools_to_the_cloud(tmp_path: Path) -> None:
    # tool_choice "none" lets the cascade answer locally first; its unsure draft escalates.
    cloud = _cloud(AIMessage(FINAL))
    local = FakeLocal(["meh dunno"], logprob=-3.0)
    graph = build_graph(fake_services(tmp_path, local, cloud), checkpointer=InMemorySaver())
    model = TMOChatModel(graph=graph, context=Context(policy="cascade"))
    reply = model.bind_tools([boil], tool_choice="none").invoke(QUESTION, _conf("e"))
    assert reply.content == FINAL and reply.response_metadata["escalated"]
    assert local.calls == 1
    sent = cloud.kwargs_sent[0]
    assert sent["tools"][0]["function"]["name"] == "boil" and sent["tool_choice"] == "none"
