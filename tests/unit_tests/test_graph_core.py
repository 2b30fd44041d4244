"""The graph core as a backend sees it: lean stored state, schemas Studio can draw, streaming a
chat UI can show as is, the caller's persona, and runs without a context."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from PIL import Image

from tests.unit_tests.fakes import FakeCloud, FakeLocal, Stats, fake_services
from tmo_graph.context import DEFAULT_SYSTEM_PROMPT, Context
from tmo_graph.graph import build_graph
from tmo_graph.state import STREAM_HIDDEN

FRAME_BYTES = 400_000


def camera_frame(path: Path, seed: int) -> Path:
    """A noisy 1600x1200 JPEG of about 400 KB, like a real camera frame (noise defeats
    compression the way sensor noise does)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, 1600, dtype=np.float32)[None, :, None]
    pixels = np.clip(base + rng.normal(0, 18, (1200, 1600, 3)), 0, 255).astype(np.uint8)
    for quality in range(95, 5, -5):  # the highest quality that stays near 400 KB
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        if buffer.tell() <= FRAME_BYTES * 1.1:
            break
    path.write_bytes(buffer.getvalue())
    return path


def thread_bytes(db: Path, thread_id: str) -> tuple[int, int]:
    """(the thread's latest checkpoint, everything stored for the thread: every checkpoint
    and pending write), in bytes as the SQLite checkpointer wrote them."""
    with sqlite3.connect(db) as conn:
        latest = conn.execute(
            "SELECT LENGTH(checkpoint) + LENGTH(metadata) FROM checkpoints "
            "WHERE thread_id = ? ORDER BY checkpoint_id DESC LIMIT 1",
            (thread_id,),
        ).fetchone()
        (checkpoints,) = conn.execute(
            "SELECT COALESCE(SUM(LENGTH(checkpoint) + LENGTH(metadata)), 0) "
            "FROM checkpoints WHERE thread_id = ?",
            (thread_id,),
        ).fetchone()
        (writes,) = conn.execute(
            "SELECT COALESCE(SUM(LENGTH(value)), 0) FROM writes WHERE thread_id = ?",
            (thread_id,),
        ).fetchone()
    return (int(latest[0]) if latest else 0), int(checkpoints) + int(writes)


@pytest.mark.parametrize("durability", ["async", "exit"])
def test_camera_frames_stay_out_of_the_stored_state(tmp_path: Path, durability: str) -> None:
    """Three turns, three ~400 KB camera frames sent to the cloud every turn: the stored state
    grows by a few KB a turn. With the default durability LangGraph keeps a checkpoint per
    step (about 8 a turn, each a few KB); with ``durability="exit"`` one per turn."""
    frames = {
        name: camera_frame(tmp_path / f"{name}.jpg", seed)
        for seed, name in enumerate(("first_person", "overhead", "side"))
    }
    sizes = [p.stat().st_size for p in frames.values()]
    assert all(300_000 <= s <= 440_000 for s in sizes), sizes
    views = {
        name: {"image": str(path), "description": f"{name} camera"} for name, path in frames.items()
    }
    cloud = FakeCloud()
    cloud.sent = []
    services = fake_services(tmp_path, FakeLocal(["ok"]), cloud, scores={n: 0.9 for n in frames})
    db = tmp_path / "threads.sqlite"
    config = {"configurable": {"thread_id": "cam"}}
    with SqliteSaver.from_conn_string(str(db)) as saver:
        saver.setup()
        graph = build_graph(services, checkpointer=saver)
        stored = [thread_bytes(db, "cam")]
        for turn, text in enumerate(["What is on the stove?", "And now?", "Is it boiling?"]):
            state_in: dict[str, Any] = {"messages": [("user", text)]}
            if turn == 0:
                state_in["views"] = views
            context = Context(policy="always-cloud")
            out = graph.invoke(state_in, config, context=context, durability=durability)
            stored.append(thread_bytes(db, "cam"))
            assert out["turns"][-1]["views_sent"], "every turn sends camera views"
        values = graph.get_state(config).values
    state_growth = [b[0] - a[0] for a, b in zip(stored, stored[1:], strict=False)]
    thread_growth = [b[1] - a[1] for a, b in zip(stored, stored[1:], strict=False)]
    print(
        f"durability={durability}: latest state bytes {[s[0] for s in stored]}, "
        f"whole thread bytes {[s[1] for s in stored]}"
    )
    assert max(state_growth) <= 20_000, state_growth
    # Every checkpoint of the turn is small too: about 8 of a few KB (one with "exit").
    assert max(thread_growth) <= (20_000 if durability == "exit" else 60_000), thread_growth
    # The views are references with a content hash; the cloud got downscaled pixels.
    assert values["views"]["overhead"]["image"] == str(frames["overhead"].resolve())
    assert len(values["views"]["overhead"]["sha256"]) == 64
    sent = [p for p in cloud.sent[-1][-1].content if isinstance(p, dict) and "image_url" in p]
    with Image.open(io.BytesIO(_data_url_bytes(sent[0]["image_url"]["url"]))) as img:
        assert max(img.size) == 768
    # Nothing of the turn's scratch is left between turns.
    assert values["candidates"] == [] and values["calls"] == [] and values["decision"] is None


def _data_url_bytes(url: str) -> bytes:
    import base64

    return base64.b64decode(url.partition(",")[2])


def test_an_inline_data_url_is_stored_once_and_referenced(tmp_path: Path) -> None:
    import base64
    import hashlib

    frame = camera_frame(tmp_path / "frame.jpg", 7)
    url = "data:image/jpeg;base64," + base64.b64encode(frame.read_bytes()).decode()
    cloud = FakeCloud()
    cloud.sent = []
    services = fake_services(tmp_path, FakeLocal(["x"]), cloud, scores={})
    graph = build_graph(services, checkpointer=InMemorySaver())
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    config = {"configurable": {"thread_id": "inline"}}
    out = graph.invoke({"messages": [("user", content)]}, config, context=Context(policy="rules"))
    assert out["turns"][-1]["views_sent"] == ["image_1"]
    question = out["messages"][0]
    blocks = [b for b in question.content if isinstance(b, dict) and b["type"] == "image"]
    # The thread's media URL (a browser loads it from the server), not pixels nor a path.
    sha = hashlib.sha256(frame.read_bytes()).hexdigest()
    assert blocks and blocks[0]["url"] == f"/v1/threads/inline/media/{sha}"
    assert blocks[0]["mime_type"] == "image/jpeg" and "base64" not in str(question.content)
    # Beside it only a preview of at most 64 px (chat UIs that draw only inline images).
    assert len(blocks[0]["data"]) < 8_000 < len(url)
    assert len(json.dumps(graph.get_state(config).values, default=str)) < 20_000


def test_schemas_for_studio_are_non_empty_json_schemas(tmp_path: Path) -> None:
    from jsonschema import Draft202012Validator

    graph = build_graph(fake_services(tmp_path))
    schemas = {
        "input": graph.get_input_jsonschema(),
        "output": graph.get_output_jsonschema(),
        "context": graph.get_context_jsonschema(),
    }
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
    assert {"messages", "views"} <= schemas["input"]["properties"].keys()
    assert {"messages", "turns", "budget_left"} <= schemas["output"]["properties"].keys()
    policy = schemas["context"]["properties"]["policy"]
    assert "cascade" in policy["enum"] and policy["description"]
    assert all(p.get("description") for p in schemas["context"]["properties"].values())


class StreamingLocal:
    """A local model that streams its answer token by token through a LangChain chat model."""

    def __init__(self, text: str, logprob: float) -> None:
        self.text, self.logprob = text, logprob

    def answer(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int | None = None,
        tags: list[str] | None = None,
        max_time_s: float | None = None,
    ) -> tuple[str, Stats]:
        model = GenericFakeChatModel(messages=iter([AIMessage(content=self.text)]))
        reply = model.invoke("question", config={"tags": tags or []})
        n = len(self.text.split())
        stats = Stats([self.logprob] * n, [0.5 - 2.0 * self.logprob] * n)
        stats.message_id = reply.id  # type: ignore[attr-defined]
        return str(reply.content), stats

    def score_answer(self, messages: list[dict[str, str]], answer: str) -> Stats:
        raise AssertionError("the graph scores its own generation")


def _stream(graph: Any, context: Context, hidden: bool = False) -> list[tuple[str, list[str], str]]:
    """The run's ``messages`` stream as (text, tags, node); ``hidden``: as a surface that asks
    for the hidden tokens (STREAM_HIDDEN) sees it."""
    tokens = []
    configurable = {"thread_id": "s", **({STREAM_HIDDEN: True} if hidden else {})}
    for chunk, meta in graph.stream(
        {"messages": [("user", "Explain how induction hobs work.")]},
        {"configurable": configurable},
        context=context,
        stream_mode="messages",
    ):
        tokens.append((str(chunk.content), list(meta.get("tags") or []), meta["langgraph_node"]))
    return tokens


def test_an_escalated_turn_streams_only_the_final_answer(tmp_path: Path) -> None:
    """What a chat UI streaming ``messages`` gets: the cloud's answer token by token, once;
    the replaced draft never (LangGraph's ``nostream`` tag)."""
    final = "induction heats the pan itself"
    cloud = GenericFakeChatModel(messages=iter([AIMessage(content=final)]))
    services = fake_services(tmp_path, StreamingLocal("meh dunno", -3.0), cloud)
    graph = build_graph(services, checkpointer=InMemorySaver())
    tokens = _stream(graph, Context(policy="cascade"))
    assert "".join(t for t, _, _ in tokens) == final  # no draft, nothing again from account
    assert {node for _, _, node in tokens} == {"answer_cloud"}
    assert len(tokens) > 1  # streamed token by token
    assert graph.get_state({"configurable": {"thread_id": "s"}}).values["turns"][-1]["escalated"]


def test_a_surface_that_asks_for_hidden_tokens_gets_the_draft_tagged(tmp_path: Path) -> None:
    final = "induction heats the pan itself"
    cloud = GenericFakeChatModel(messages=iter([AIMessage(content=final)]))
    services = fake_services(tmp_path, StreamingLocal("meh dunno", -3.0), cloud)
    graph = build_graph(services, checkpointer=InMemorySaver())
    tokens = _stream(graph, Context(policy="cascade"), hidden=True)
    drafts = [t for t, tags, _ in tokens if "draft" in tags]
    shown = [t for t, tags, _ in tokens if "draft" not in tags]
    assert "".join(drafts) == "meh dunno"  # the replaced draft, tagged
    assert "".join(shown) == final  # the final answer, once, nothing from account


def test_a_chat_ui_streams_the_cloud_answer_with_the_values_put_back(tmp_path: Path) -> None:
    """The cloud was sent a placeholder and answers with it: a chat UI streaming ``messages``
    gets the answer token by token with the address put back, once, never the placeholder."""
    said = "I will write to [EMAIL_1] tonight, as you asked."
    cloud = GenericFakeChatModel(messages=iter([AIMessage(content=said)]))
    services = fake_services(tmp_path, FakeLocal(["x"]), cloud)
    graph = build_graph(services, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "pii"}}
    parts = list(
        graph.stream(
            {"messages": [("user", "Send the recipe to anna@example.org tonight.")]},
            config,
            context=Context(policy="always-cloud"),
            stream_mode="messages",
        )
    )
    texts = [str(chunk.content) for chunk, _ in parts]
    assert not any("[" in t or "EMAIL" in t for t in texts), texts
    assert "".join(texts) == "I will write to anna@example.org tonight, as you asked."
    assert len(texts) > 3  # token by token
    stored = graph.get_state(config).values["messages"][-1]
    assert {chunk.id for chunk, _ in parts} == {stored.id}  # one message, not sent again
    assert {meta["langgraph_node"] for _, meta in parts} == {"answer_cloud"}
    assert stored.content == "".join(texts)


def test_a_kept_draft_reaches_a_chat_ui_once_as_the_final_message(tmp_path: Path) -> None:
    services = fake_services(tmp_path, StreamingLocal("sure thing", -0.05), FakeCloud())
    graph = build_graph(services, checkpointer=InMemorySaver())
    tokens = _stream(graph, Context(policy="cascade"))
    # The draft's tokens were hidden; the check kept it: account's message carries it, once.
    assert tokens == [("sure thing", [], "account")]
    stored = graph.get_state({"configurable": {"thread_id": "s"}}).values["messages"]
    assert stored[-1].content == "sure thing"


def test_a_final_local_answer_streams_untagged(tmp_path: Path) -> None:
    services = fake_services(tmp_path, StreamingLocal("sure thing", -0.05), FakeCloud())
    graph = build_graph(services, checkpointer=InMemorySaver())
    tokens = _stream(graph, Context(policy="always-local"))
    assert "".join(t for t, tags, _ in tokens if "draft" not in tags) == "sure thing"


def test_the_callers_system_message_reaches_both_models(tmp_path: Path) -> None:
    local = FakeLocal(["meh"], logprob=-3.0)
    cloud = FakeCloud()
    cloud.sent = []
    graph = build_graph(fake_services(tmp_path, local, cloud), checkpointer=InMemorySaver())
    persona = "You are Chef Ana. Always answer in one sentence."
    messages = [SystemMessage(content=persona), ("user", "How long do I boil an egg?")]
    out = graph.invoke(
        {"messages": messages},
        {"configurable": {"thread_id": "p"}},
        context=Context(policy="cascade"),
    )
    assert out["turns"][-1]["escalated"]
    assert local.seen[-1][0] == {"role": "system", "content": persona}
    assert cloud.sent[-1][0].content == persona
    assert DEFAULT_SYSTEM_PROMPT not in str(local.seen[-1])


def test_the_context_persona_is_used_without_a_system_message(tmp_path: Path) -> None:
    local = FakeLocal(["ok"])
    graph = build_graph(fake_services(tmp_path, local, None), checkpointer=InMemorySaver())
    graph.invoke(
        {"messages": [("user", "Hi")]},
        {"configurable": {"thread_id": "c"}},
        context=Context(policy="always-local", system_prompt="Speak like a pirate."),
    )
    assert local.seen[-1][0]["content"] == "Speak like a pirate."


def test_invoke_without_context_uses_the_configured_defaults(tmp_path: Path) -> None:
    local = FakeLocal(["ok"], logprob=-0.05)
    graph = build_graph(fake_services(tmp_path, local, FakeCloud()))
    out = graph.invoke({"messages": [("user", "Turn on the lights.")]})
    record = out["turns"][-1]
    assert record["policy"] == "rules" and record["answer"] == "ok"
    assert record["budget_left"]["latency_s"] == pytest.approx(60.0 - record["latency_s"])
    assert local.seen[-1][0]["content"] == DEFAULT_SYSTEM_PROMPT


def test_a_run_chooses_its_cloud_endpoint_through_the_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tmo_graph.services as services_module

    default_cloud, other_cloud = FakeCloud(answer="default"), FakeCloud(answer="other")
    default_cloud.sent, other_cloud.sent = [], []
    built: list[tuple[str, str]] = []

    def fake_endpoint(base_url: str, model: str, *args: Any) -> FakeCloud:
        built.append((base_url, model))
        return other_cloud

    monkeypatch.setattr(services_module, "_checked_cloud", fake_endpoint)
    graph = build_graph(fake_services(tmp_path, FakeLocal(["x"]), default_cloud))
    chosen = Context(
        policy="always-cloud", cloud_base_url="http://10.0.0.7:8000/v1", cloud_model="big-model"
    )
    for thread in ("a", "b"):  # the second run reuses the model built for the first
        out = graph.invoke(
            {"messages": [("user", "Hello")]},
            {"configurable": {"thread_id": thread}},
            context=chosen,
        )
        assert out["turns"][-1]["answer"] == "other"
    assert built == [("http://10.0.0.7:8000/v1", "big-model")]
    out = graph.invoke({"messages": [("user", "Hello")]}, context=Context(policy="always-cloud"))
    assert out["turns"][-1]["answer"] == "default"


def test_a_bad_per_run_model_choice_is_a_clear_error() -> None:
    from tmo_graph.errors import TmoGraphError

    with pytest.raises(TmoGraphError, match="not an http"):
        Context(cloud_base_url="10.0.0.7:8000")
    with pytest.raises(TmoGraphError, match="system_prompt is empty"):
        Context(system_prompt="  ")
    with pytest.raises(TmoGraphError, match="unknown policy"):
        Context(policy="smartest")  # type: ignore[arg-type]


@pytest.mark.parametrize(("max_side", "tiles"), [(768, 4), (256, 1)])
def test_high_detail_images_are_billed_at_the_size_sent(
    tmp_path: Path, max_side: int, tiles: int
) -> None:
    from tmo_graph.sections import CloudSettings
    from tmo_graph.settings import Settings

    frame = camera_frame(tmp_path / "overhead.jpg", 3)  # 1600 x 1200
    settings = Settings(cloud=CloudSettings(image_detail="high", image_max_side=max_side))
    cloud = FakeCloud()
    cloud.sent = []
    services = fake_services(
        tmp_path, FakeLocal(["x"]), cloud, scores={"overhead": 0.9}, settings=settings
    )
    graph = build_graph(services, checkpointer=InMemorySaver())
    views = {"overhead": {"image": str(frame), "description": "above the stove"}}
    out = graph.invoke(
        {"messages": [("user", "What is cooking?")], "views": views},
        {"configurable": {"thread_id": "bill"}},
        context=Context(policy="always-cloud"),
    )
    record = out["turns"][-1]
    assert record["views_sent"] == ["overhead"]
    part = next(p for p in cloud.sent[-1][-1].content if isinstance(p, dict) and "image_url" in p)
    assert part["image_url"]["detail"] == "high"
    # gpt-4o-mini: 2,833 base + 5,667 a tile; 768 x 576 is 2 x 2 tiles, 256 x 192 one.
    image = 2833 + tiles * 5667
    assert record["cost_usd"] == pytest.approx(((100 + image) * 0.15 + 20 * 0.60) / 1e6)


def test_a_context_given_as_json_is_read_like_a_context(tmp_path: Path) -> None:
    local = FakeLocal(["ok"])
    graph = build_graph(fake_services(tmp_path, local, FakeCloud()))
    out = graph.invoke(
        {"messages": [("user", "Hi there")]},
        context={"policy": "always-local", "system_prompt": "Be a pirate."},  # type: ignore[arg-type]
    )
    assert out["turns"][-1]["policy"] == "always-local"
    assert local.seen[-1][0]["content"] == "Be a pirate."


def test_without_a_cloud_a_cascade_answer_is_final_not_a_draft(tmp_path: Path) -> None:
    services = fake_services(tmp_path, StreamingLocal("only me", -3.0), None)
    graph = build_graph(services, checkpointer=InMemorySaver())
    tokens = _stream(graph, Context(policy="cascade"))
    assert all("draft" not in tags for _, tags, _ in tokens)
    assert "".join(t for t, _, _ in tokens) == "only me"


def test_context_fields_a_run_leaves_out_take_the_configured_defaults(tmp_path: Path) -> None:
    """LangGraph builds a run's Context from the JSON a client sent (Studio, the LangGraph
    server, an assistant) as ``Context(**given)``: the fields left out must take the
    config's ``routing:`` values, not the class's defaults; the fields named stand."""
    from tmo_graph.context import named_fields
    from tmo_graph.settings import Settings

    assert named_fields(Context(policy="cascade")) == {"policy"}
    settings = Settings(routing={"policy": "always-cloud", "recent_turns": 7})
    cloud = FakeCloud(responses=["cloud answer"])
    graph = build_graph(fake_services(tmp_path, cloud=cloud, settings=settings))
    ask = {"messages": [("user", "hello")]}
    out = graph.invoke(ask, context={"user_id": "ada"})  # as langgraph dev passes it
    assert out["turns"][-1]["route"] == "cloud"
    out = graph.invoke(ask, context=Context(user_id="ada", policy="always-local"))
    assert out["turns"][-1]["route"] == "local"
