"""Stored media named by a URL a browser can load: the thread's media URL in the state, never
pixels nor a file path; the models still read the bytes from the store, for their own
thread only; and the user a LangGraph server's auth proved decides the run's user."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services, png_bytes
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import _run_context, build_graph
from tmo_graph.media.images import store_image
from tmo_graph.media.store import (
    media_url,
    parse_media_url,
    resolve_source,
    store_once,
    stored_file,
)
from tmo_graph.settings import Settings

SHA = "ab" * 32


def test_a_media_url_names_its_thread_and_hash_and_parses_back() -> None:
    assert media_url("t-1", SHA) == f"/v1/threads/t-1/media/{SHA}"
    # Any thread id a LangGraph client chose stays one path segment.
    odd = "a/b c?"
    assert parse_media_url(media_url(odd, SHA)) == (odd, SHA)
    # A browser resolves it against the server: the absolute form parses the same.
    assert parse_media_url(f"http://127.0.0.1:2024/v1/threads/t/media/{SHA}") == ("t", SHA)
    for other in (f"/v1/threads/t/media/{SHA[:-1]}", "file:///tmp/x.png", "/v1/models"):
        assert parse_media_url(other) is None
    with pytest.raises(TmoGraphError, match="SHA-256"):
        media_url("t", "../../etc/passwd")


def test_only_a_stored_hash_of_the_stores_own_shape_finds_a_file(tmp_path: Path) -> None:
    path, sha = store_once(png_bytes(), tmp_path / "media", "png")
    (tmp_path / "secret.png").write_bytes(b"not for you")
    assert stored_file(tmp_path / "media", sha) == path
    for probe in ("../secret", "..", "*", f"{sha}.png", sha.upper(), "0" * 64):
        assert stored_file(tmp_path / "media", probe) is None


def test_a_media_url_resolves_to_its_file_for_its_own_thread_only(tmp_path: Path) -> None:
    folder = tmp_path / "media"
    path, sha = store_once(png_bytes(), folder, "png")
    url = media_url("mine", sha)
    assert resolve_source(url, folder, "mine") == str(path)
    assert store_image(url, folder, "mine").sha256 == sha
    with pytest.raises(TmoGraphError, match="not of this run's thread"):
        resolve_source(url, folder, "another")
    with pytest.raises(TmoGraphError, match="not of this run's thread"):
        resolve_source(url, folder, None)
    with pytest.raises(TmoGraphError, match="no longer stored"):
        resolve_source(media_url("mine", "0" * 64), folder, "mine")
    assert resolve_source("file:///x.png", folder, "mine") == "file:///x.png"


def _image_turn(graph: Any, thread: str, url: str) -> dict[str, Any]:
    content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": url}]
    config = {"configurable": {"thread_id": thread}}
    return dict(
        graph.invoke(
            {"messages": [("user", content)]}, config, context=Context(policy="always-cloud")
        )
    )


def test_the_state_holds_the_url_and_the_cloud_still_gets_the_pixels(tmp_path: Path) -> None:
    cloud = FakeCloud()
    cloud.sent = []
    services = fake_services(tmp_path, FakeLocal(["x"]), cloud, scores={})
    graph = build_graph(services, checkpointer=InMemorySaver())
    data = png_bytes("green")
    out = _image_turn(graph, "t1", "data:image/png;base64," + base64.b64encode(data).decode())
    sha = hashlib.sha256(data).hexdigest()
    block = next(b for b in out["messages"][0].content if b.get("type") == "image")
    preview = {k: block.pop(k) for k in ("mimeType", "data")}
    assert block == {
        "type": "image",
        "url": f"/v1/threads/t1/media/{sha}",
        "id": sha,
        "mime_type": "image/png",
    }
    assert preview["mimeType"] == "image/jpeg" and base64.b64decode(preview["data"])
    sent = [p for p in cloud.sent[-1][-1].content if p.get("type") == "image_url"]
    assert sent and base64.b64decode(sent[0]["image_url"]["url"].partition(",")[2])
    # A message that names the thread's own media (an edit or a retry resends it) is read
    # from the store and sent again; another thread's URL is refused.
    again = _image_turn(graph, "t1", f"/v1/threads/t1/media/{sha}")
    assert again["turns"][-1]["views_sent"] == ["image_1"]
    with pytest.raises(TmoGraphError, match="not of this run's thread"):
        _image_turn(graph, "t2", f"/v1/threads/t1/media/{sha}")


def test_without_a_thread_the_state_keeps_a_file_url(tmp_path: Path) -> None:
    services = fake_services(tmp_path, FakeLocal(["x"]), FakeCloud(), scores={})
    out = build_graph(services).invoke(
        {"messages": [("user", [{"type": "text", "text": "and this?"}, _png_part()])]},
        context=Context(policy="always-local"),
    )
    block = next(b for b in out["messages"][0].content if b.get("type") == "image")
    assert block["url"].startswith(f"file://{(tmp_path / 'media').resolve()}/")


def _png_part() -> dict[str, Any]:
    return {
        "type": "image_url",
        "image_url": "data:image/png;base64," + base64.b64encode(png_bytes()).decode(),
    }


def test_the_platforms_user_decides_the_runs_user_key_cap_and_policies() -> None:
    default = Context()
    given = {"user_id": "mallory", "policy": "cascade", "daily_cost_cap_usd": 2.0}
    user = {"identity": "alice", "key_id": "alice-key", "daily_cost_cap_usd": 0.5}
    context = _run_context(given, default, user)
    assert (context.user_id, context.api_key_id, context.daily_cost_cap_usd) == (
        "alice",
        "alice-key",
        0.5,
    )
    assert context.policy == "cascade"
    # Without a platform user the Context stands, as before.
    assert _run_context(given, default).user_id == "mallory"
    with pytest.raises(TmoGraphError, match="may not use the policy 'cascade'"):
        _run_context(given, default, {**user, "policies": ["always-local"]})


def _camera_frame_url(width: int = 4000, height: int = 3000) -> tuple[str, bytes]:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise((width, height), 64).convert("RGB").save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    return "data:image/jpeg;base64," + base64.b64encode(data).decode(), data


def test_a_thread_keeps_a_small_preview_a_ui_draws_and_the_cloud_gets_the_frame(
    tmp_path: Path,
) -> None:
    """agent-chat-ui draws a human message's image only from inline data (LangChain.js's
    ``mimeType``/``data``): the state keeps a preview of at most 64 px beside the
    reference; the cloud still gets the stored frame at its own size."""
    import io

    from PIL import Image

    cloud = FakeCloud()
    cloud.sent = []
    services = fake_services(tmp_path, FakeLocal(["x"]), cloud, scores={})
    graph = build_graph(services, checkpointer=InMemorySaver())
    url, frame = _camera_frame_url()
    assert len(frame) > 3_000_000  # a 12-megapixel camera frame
    out = _image_turn(graph, "t1", url)
    block = next(b for b in out["messages"][0].content if b.get("type") == "image")
    preview = base64.b64decode(block["data"])
    with Image.open(io.BytesIO(preview)) as img:
        assert max(img.size) == 64 and img.format == "JPEG"
    assert len(preview) < 6_000 and block["mimeType"] == "image/jpeg"
    assert block["url"] == f"/v1/threads/t1/media/{hashlib.sha256(frame).hexdigest()}"
    sent = next(p for p in cloud.sent[-1][-1].content if p.get("type") == "image_url")
    with Image.open(
        io.BytesIO(base64.b64decode(sent["image_url"]["url"].partition(",")[2]))
    ) as img:
        assert max(img.size) == services.settings.cloud.image_max_side


def test_no_preview_when_the_config_says_0_and_a_langchain_js_block_is_read(
    tmp_path: Path,
) -> None:
    settings = Settings.model_validate({"threads": {"image_preview_px": 0}})
    services = fake_services(tmp_path, FakeLocal(["x"]), FakeCloud(), scores={}, settings=settings)
    graph = build_graph(services, checkpointer=InMemorySaver())
    data = png_bytes("blue")
    # The block agent-chat-ui sends for an upload (LangChain.js's field names).
    upload = {"type": "image", "mimeType": "image/png", "data": base64.b64encode(data).decode()}
    out = graph.invoke(
        {"messages": [("user", [{"type": "text", "text": "and this?"}, upload])]},
        {"configurable": {"thread_id": "js"}},
        context=Context(policy="always-local"),
    )
    block = next(b for b in out["messages"][0].content if b.get("type") == "image")
    sha = hashlib.sha256(data).hexdigest()
    assert block == {
        "type": "image",
        "url": f"/v1/threads/js/media/{sha}",
        "id": sha,
        "mime_type": "image/png",
    }
    with pytest.raises(ValueError, match="image_preview_px"):
        Settings.model_validate({"threads": {"image_preview_px": 1000}})
