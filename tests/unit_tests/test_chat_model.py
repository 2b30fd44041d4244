"""TMOChatModel: the router as a LangChain chat model (fake models, network blocked)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    FunctionMessage,
    HumanMessage,
)
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph

from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services, png_bytes
from tests.unit_tests.test_graph_core import StreamingLocal
from tmo_graph.chat_model import TMOChatModel, ToolsNotSupported
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph

QUESTION = "Explain how induction hobs work."
CLOUD = "induction heats the pan itself"
DRAFT = "meh dunno"  # a local answer the cascade replaces
SURE = "sure thing"  # a local answer the cascade keeps


def _graph(
    tmp_path: Path,
    local: Any,
    cloud: Any = None,
    scores: dict[str, float] | None = None,
    checkpointer: Any = True,
) -> Any:
    cloud = cloud or GenericFakeChatModel(messages=iter([AIMessage(content=CLOUD)] * 20))
    saver = InMemorySaver() if checkpointer else None
    return build_graph(fake_services(tmp_path, local, cloud, scores), checkpointer=saver)


def _model(graph: Any, policy: str = "cascade", **fields: Any) -> TMOChatModel:
    return TMOChatModel(graph=graph, context=Context(policy=policy), **fields)  # type: ignore[arg-type]


def _conf(thread: str, **more: str) -> Any:
    return {"configurable": {"thread_id": thread, **more}}


def _stored(graph: Any, thread: str) -> list[BaseMessage]:
    return list(graph.get_state(_conf(thread)).values["messages"])


# --- invoke / stream, sync and async ---------------------------------------------------------


def test_invoke_returns_the_cloud_answer_with_its_record_and_usage(tmp_path: Path) -> None:
    graph = _graph(tmp_path, FakeLocal([DRAFT], logprob=-3.0), FakeCloud(answer=CLOUD))
    reply = _model(graph).invoke(QUESTION, _conf("t"))
    assert reply.content == CLOUD
    meta = reply.response_metadata
    assert meta["route"] == "cloud" and meta["escalated"] and meta["policy"] == "cascade"
    assert meta["turn"] == 0 and meta["thread_id"] == "t" and meta["fallback"] is None
    assert meta["views_sent"] == [] and 0.0 <= meta["confidence"] < 0.5
    assert meta["cost_usd"] > 0 and meta["latency_s"] > 0
    assert meta["budget_left"]["cost_usd"] == pytest.approx(0.05 - meta["cost_usd"], abs=1e-6)
    # FakeCloud reports 100 in / 20 out; the local draft adds its 2 generated tokens.
    assert reply.usage_metadata == {"input_tokens": 100, "output_tokens": 22, "total_tokens": 122}
    # The reply carries the id the thread stored it under.
    assert reply.id == _stored(graph, "t")[-1].id


def test_ainvoke_keeps_a_sure_local_answer(tmp_path: Path) -> None:
    graph = _graph(tmp_path, FakeLocal([SURE], logprob=-0.05))
    reply = asyncio.run(_model(graph).ainvoke(QUESTION, _conf("a")))
    assert reply.content == SURE
    assert reply.response_metadata["route"] == "local"
    assert not reply.response_metadata["escalated"]
    assert reply.usage_metadata == {"input_tokens": 0, "output_tokens": 2, "total_tokens": 2}


def test_stream_of_an_escalated_turn_gives_only_the_cloud_answer(tmp_path: Path) -> None:
    graph = _graph(tmp_path, StreamingLocal(DRAFT, -3.0))
    chunks = list(_model(graph).stream(QUESTION, _conf("s")))
    texts = [str(c.content) for c in chunks]
    assert "".join(texts) == CLOUD and sum(1 for t in texts if t) > 1
    assert not any(word in "".join(texts) for word in DRAFT.split())
    assert chunks[-1].response_metadata["route"] == "cloud"
    assert chunks[-1].usage_metadata is not None


def test_stream_of_a_kept_local_answer_arrives(tmp_path: Path) -> None:
    graph = _graph(tmp_path, StreamingLocal(SURE, -0.05))
    chunks = list(_model(graph).stream(QUESTION, _conf("k")))
    assert "".join(str(c.content) for c in chunks) == SURE
    assert chunks[-1].response_metadata["route"] == "local"


def test_astream_matches(tmp_path: Path) -> None:
    graph = _graph(tmp_path, StreamingLocal(DRAFT, -3.0))

    async def run() -> list[Any]:
        return [c async for c in _model(graph).astream(QUESTION, _conf("as"))]

    chunks = asyncio.run(run())
    assert "".join(str(c.content) for c in chunks) == CLOUD
    assert chunks[-1].response_metadata["escalated"]


def test_batch_without_a_thread_runs_each_input_on_a_thread_of_its_own(tmp_path: Path) -> None:
    graph = _graph(tmp_path, FakeLocal([SURE], logprob=-0.05))
    replies = _model(graph).batch(["first question", "second question"])
    threads = {r.response_metadata["thread_id"] for r in replies}
    assert len(threads) == 2
    assert all(r.response_metadata["turn"] == 0 for r in replies)


def test_batch_with_configs_uses_their_threads(tmp_path: Path) -> None:
    graph = _graph(tmp_path, FakeLocal([SURE], logprob=-0.05))
    _model(graph).batch(["one", "two"], [_conf("b1"), _conf("b2")])
    assert [m.content for m in _stored(graph, "b1")] == ["one", SURE]
    assert [m.content for m in _stored(graph, "b2")] == ["two", SURE]


# --- LCEL ------------------------------------------------------------------------------------

PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "You are a kitchen helper."),
        MessagesPlaceholder("history"),
        ("human", "{question}"),
    ]
)


def test_a_chain_invokes_and_streams(tmp_path: Path) -> None:
    graph = _graph(tmp_path, StreamingLocal(DRAFT, -3.0))
    chain = PROMPT | _model(graph) | StrOutputParser()
    assert chain.invoke({"history": [], "question": QUESTION}, _conf("c1")) == CLOUD
    pieces = list(chain.stream({"history": [], "question": QUESTION}, _conf("c2")))
    assert "".join(pieces) == CLOUD and len([p for p in pieces if p]) > 1


def test_a_chain_passing_the_full_history_stores_each_message_once(tmp_path: Path) -> None:
    local = FakeLocal(["answer one", "answer two", "answer three"], logprob=-0.05)
    graph = _graph(tmp_path, local)
    chain = PROMPT | _model(graph) | StrOutputParser()
    history: list[BaseMessage] = []
    for question in ["Is the pot boiling?", "And the kettle?", "And the kettle?"]:
        answer = chain.invoke({"history": history, "question": question}, _conf("h"))
        history += [HumanMessage(question), AIMessage(answer)]
    stored = [(m.type, m.content) for m in _stored(graph, "h")]
    assert stored == [
        ("system", "You are a kitchen helper."),
        ("human", "Is the pot boiling?"),
        ("ai", "answer one"),
        ("human", "And the kettle?"),  # the same question asked twice is two turns
        ("ai", "answer two"),
        ("human", "And the kettle?"),
        ("ai", "answer three"),
    ]
    # The persona reached the model once, not once per turn.
    assert local.seen[-1][0] == {"role": "system", "content": "You are a kitchen helper."}


def test_without_a_checkpointer_the_history_passed_is_the_dialogue(tmp_path: Path) -> None:
    local = FakeLocal(["ok"], logprob=-0.05)
    graph = _graph(tmp_path, local, checkpointer=False)
    history = [HumanMessage("Is the pot boiling?"), AIMessage("Not yet."), HumanMessage("Now?")]
    _model(graph).invoke(history, _conf("no-saver"))
    assert [m["content"] for m in local.seen[-1][1:]] == ["Is the pot boiling?", "Not yet.", "Now?"]


# --- images and views ------------------------------------------------------------------------


def _image_parts(sent: list[BaseMessage]) -> list[str]:
    last = sent[-1]
    assert isinstance(last.content, list)
    return [
        p["image_url"]["url"]
        for p in last.content
        if isinstance(p, dict) and p.get("type") == "image_url"
    ]


def test_images_in_content_blocks_reach_the_cloud(tmp_path: Path) -> None:
    cloud = FakeCloud(answer="a red square and a blue one", sent=[])
    graph = _graph(tmp_path, FakeLocal(["local"]), cloud)
    red = base64.b64encode(png_bytes("red")).decode()
    blue = base64.b64encode(png_bytes("blue")).decode()
    message = HumanMessage(
        content=[
            {"type": "text", "text": "What colours are these?"},
            {"type": "image", "base64": red, "mime_type": "image/png"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{blue}"}},
        ]
    )
    reply = _model(graph, "always-cloud").invoke([message], _conf("img"))
    assert reply.response_metadata["views_sent"] == ["image_1", "image_2"]
    urls = _image_parts(cloud.sent[-1])
    assert len(urls) == 2 and all(u.startswith("data:image/") for u in urls)


def test_private_views_are_never_sent(tmp_path: Path) -> None:
    cloud = FakeCloud(answer="the pot is boiling", sent=[])
    graph = _graph(tmp_path, FakeLocal(["local"]), cloud, scores={"overhead": 0.9, "desk": 0.9})
    pot, desk = tmp_path / "pot.png", tmp_path / "desk.png"
    pot.write_bytes(png_bytes("red"))
    desk.write_bytes(png_bytes("green"))
    model = _model(graph, "always-cloud", views={"overhead": {"image": str(pot)}})
    reply = model.invoke(
        "Is the pot boiling?",
        _conf("views"),
        views={"desk": {"image": str(desk), "description": "my desk", "private": True}},
    )
    assert reply.response_metadata["views_sent"] == ["overhead"]
    assert len(_image_parts(cloud.sent[-1])) == 1
    stored_views = graph.get_state(_conf("views")).values["views"]
    assert stored_views["desk"]["private"] is True


# --- thread and user -------------------------------------------------------------------------


class SpyGraph:
    """The real graph, recording the context and config of each run."""

    def __init__(self, graph: Any) -> None:
        self.graph, self.checkpointer = graph, graph.checkpointer
        self.runs: list[tuple[Any, Any]] = []

    def get_state(self, config: Any) -> Any:
        return self.graph.get_state(config)

    def stream(self, inputs: Any, config: Any, **kwargs: Any) -> Any:
        self.runs.append((kwargs.get("context"), config))
        return self.graph.stream(inputs, config, **kwargs)


def test_thread_and_user_come_from_the_run_config(tmp_path: Path) -> None:
    spy = SpyGraph(_graph(tmp_path, FakeLocal(["ok"], logprob=-0.05)))
    model = _model(spy, user_id="field-user", thread_id="field-thread")
    model.invoke("hi", {"configurable": {"thread_id": "cfg", "user_id": "bob"}})
    list(model.stream("hi", {"configurable": {"thread_id": "cfg2", "user_id": "carol"}}))
    model.invoke("hi")
    contexts = [ctx.user_id for ctx, _ in spy.runs]
    threads = [conf["configurable"]["thread_id"] for _, conf in spy.runs]
    assert contexts == ["bob", "carol", "field-user"]
    assert threads == ["cfg", "cfg2", "field-thread"]
    assert all(ctx.policy == "cascade" for ctx, _ in spy.runs)  # the rest of the Context kept


def test_a_user_without_a_context_gets_the_graphs_defaults(tmp_path: Path) -> None:
    spy = SpyGraph(_graph(tmp_path, FakeLocal(["ok"], logprob=-0.05)))
    TMOChatModel(graph=spy).invoke("hi", {"configurable": {"user_id": "dan"}})
    assert spy.runs[-1][0] == {"user_id": "dan"}


def test_inside_an_outer_langgraph_app_only_final_tokens_stream_once(tmp_path: Path) -> None:
    graph = _graph(tmp_path, StreamingLocal(DRAFT, -3.0))
    model = _model(graph)

    def chat(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    outer = StateGraph(MessagesState).add_node("chat", chat).add_edge(START, "chat")
    app = outer.compile(checkpointer=InMemorySaver())
    tokens = [
        str(chunk.content)
        for chunk, _ in app.stream(
            {"messages": [("user", QUESTION)]}, _conf("outer"), stream_mode="messages"
        )
    ]
    assert "".join(tokens) == CLOUD  # no draft, no second copy from the inner graph
    # The inner graph kept its own thread (the outer one's id), not a namespace of the outer.
    assert [m.content for m in _stored(graph, "outer")] == [QUESTION, CLOUD]


def test_a_chains_events_show_the_router_not_its_draft(tmp_path: Path) -> None:
    graph = _graph(tmp_path, StreamingLocal(DRAFT, -3.0))
    chain = PROMPT | _model(graph)

    async def run() -> list[Any]:
        inputs = {"history": [], "question": QUESTION}
        return [e async for e in chain.astream_events(inputs, _conf("ev"), version="v2")]

    streamed = [e for e in asyncio.run(run()) if e["event"] == "on_chat_model_stream"]
    assert {e["name"] for e in streamed} == {"TMOChatModel"}  # the graph runs as its own run
    assert "".join(str(e["data"]["chunk"].content) for e in streamed) == CLOUD


# --- what is refused -------------------------------------------------------------------------


def test_structured_output_is_refused_with_what_to_do_instead(tmp_path: Path) -> None:
    model = _model(_graph(tmp_path, FakeLocal(["ok"])))
    with pytest.raises(ToolsNotSupported, match="structured output") as info:
        model.with_structured_output(dict)
    assert isinstance(info.value, NotImplementedError) and "bind a tool" in str(info.value)
    with pytest.raises(ToolsNotSupported):
        model.invoke("hi", response_format={"type": "json_object"})


@pytest.mark.parametrize(
    ("messages", "kwargs", "match"),
    [
        ([], {}, "no messages were given"),
        ([HumanMessage("hi"), AIMessage("hello")], {}, "not the user's"),
        ([FunctionMessage("x", name="f"), HumanMessage("hi")], {}, "'function' message"),
        ([HumanMessage("hi")], {"views": {"cam": {"img": "x.png"}}}, "unknown field"),
        ([HumanMessage("hi")], {"views": {"cam": "x.png"}}, "not a view spec"),
        ([HumanMessage("hi")], {"views": {"cam": {"private": True}}}, "neither an image"),
        ([HumanMessage("hi")], {"stop": ["\n"]}, "stop sequences"),
        ([HumanMessage("hi")], {"temperature": 0.2}, "unknown argument"),
    ],
)
def test_bad_input_says_what_to_fix(
    tmp_path: Path, messages: list[BaseMessage], kwargs: dict[str, Any], match: str
) -> None:
    model = _model(_graph(tmp_path, FakeLocal(["ok"])))
    with pytest.raises(TmoGraphError, match=match) as info:
        model.invoke(messages, _conf("bad"), **kwargs)
    assert "Fix:" in str(info.value)


def test_a_bad_view_fails_when_the_model_is_made() -> None:
    with pytest.raises(TmoGraphError, match="unknown field"):
        views: Any = {"cam": {"image": "x.png", "colour": "red"}}
        TMOChatModel(views=views)


def test_the_default_graph_is_built_once_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    import tmo_graph.graph

    built: list[Any] = []

    def fake_build(settings: Any = None) -> int:
        built.append(1)
        return 1

    monkeypatch.setattr(tmo_graph.graph, "build_graph", fake_build)
    model = TMOChatModel()
    assert built == []
    assert model.get_graph_instance() == model.get_graph_instance() == 1
    assert built == [1]
