"""Acceptance: a dialogue with a named microphone clip and an inline
voice note runs offline through `tmo-graph run` and through the chat model.

The speech recogniser is the real one (pocketsphinx, nothing downloaded) on the espeak-ng
clips kept in examples/audio/; the cloud is a real ``ChatOpenAI`` against an
OpenAI-compatible server on 127.0.0.1 that records every request body. The device model and
the embeddings are fakes (instant), and the association scores are scripted per prompt so
the turns differ in what they send. Checked: the requests carry ``input_audio`` parts exactly
for the turns whose record lists the audio (``audio_sent``), nothing of the private
microphone ever (not its words, name or audio), and the transcripts reach the local prompt.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from typer.testing import CliRunner

from tests.integration_tests.test_privacy_fuzz import CaptureServer
from tests.unit_tests.fakes import FakeLocal, PromptScorer
from tmo_graph.chat_model import TMOChatModel
from tmo_graph.cli.app import app
from tmo_graph.context import Context
from tmo_graph.graph import build_graph
from tmo_graph.guards.faults import reset_breakers
from tmo_graph.media import audio
from tmo_graph.media.audio import cloud_audio
from tmo_graph.models.cloud import make_cloud_chat_model
from tmo_graph.services import Services
from tmo_graph.settings import Settings, load_settings

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DIALOGUE = EXAMPLES / "workshop_audio.jsonl"
BENCH_QUESTION = "What is that noise from the bench?"
CLIPS = {"bench_mic": "bench_mic.ogg", "voice_note_1": "voice_note.wav"}


@pytest.fixture
def server() -> Iterator[CaptureServer]:
    reset_breakers()
    audio._TRANSCRIPTS.clear()  # the real recogniser hears each clip in this test
    with CaptureServer() as s:
        yield s
    reset_breakers()


def _config(tmp_path: Path, server: CaptureServer) -> Path:
    path = tmp_path / "audio.yaml"
    path.write_text(
        "cloud:\n"
        "  mode: remote\n"
        f"  base_url: {server.base_url}\n"
        "  model: audio-model\n"
        "  price_as: gpt-4o-mini-audio-preview\n"
        "  max_attempts: 1\n"
        "  timeout_s: 20\n"
        "audit:\n"
        "  enabled: false\n"
        f"memory:\n  persist_dir: {tmp_path / 'memory'}\n"
    )
    return path


def _services(settings: Settings, server: CaptureServer, tmp_path: Path) -> Services:
    embeddings = DeterministicFakeEmbedding(size=32)
    return Services(
        settings=settings,
        local=FakeLocal(["local answer"]),
        cloud=make_cloud_chat_model(server.base_url, "audio-model", None, 20.0, 32),
        embeddings=embeddings,
        # Only the bench question is about the bench microphone.
        association=PromptScorer(embeddings, {BENCH_QUESTION: {"bench_mic": 0.9}}),
        media_dir=tmp_path / "media",
    )


def _bodies(server: CaptureServer) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in server.bodies]


def _input_audio(body: dict[str, Any]) -> list[dict[str, Any]]:
    content = body["messages"][-1]["content"]
    parts = content if isinstance(content, list) else []
    return [p for p in parts if p.get("type") == "input_audio"]


def _private_traces() -> list[str]:
    clip = EXAMPLES / "audio" / "office_mic.ogg"
    return ["office_mic", cloud_audio(str(clip), 30).data[:400]]


def test_the_workshop_dialogue_through_tmo_graph_run(
    tmp_path: Path, server: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path, server)
    services = _services(load_settings(config), server, tmp_path)
    # The CLI's own path (dialogue file, SQLite threads, records) with these services.
    monkeypatch.setattr("tmo_graph.services.build_services", lambda settings: services)
    out = tmp_path / "records.json"
    result = CliRunner().invoke(
        app,
        ["run", str(DIALOGUE), "--config", str(config), "--policy", "always-cloud"]
        + ["--db", str(tmp_path / "threads.sqlite"), "--json", str(out)],
    )
    assert result.exit_code == 0, result.output + result.stderr
    turns = json.loads(out.read_text())[0]["turns"]
    assert [t["route"] for t in turns] == ["cloud", "cloud", "local", "cloud"]
    assert [t["audio_sent"] for t in turns] == [["bench_mic"], ["voice_note_1"], [], []]
    # input_audio parts exactly for the turns whose record lists audio, one per clip listed.
    cloud_turns = [t for t in turns if t["route"] == "cloud"]
    bodies = _bodies(server)
    assert len(bodies) == len(cloud_turns) == 3
    for record, body in zip(cloud_turns, bodies, strict=True):
        parts = _input_audio(body)
        assert len(parts) == len(record["audio_sent"])
        assert all(p["input_audio"]["format"] == "wav" for p in parts)
        assert set(record["audio_sent"]) <= set(record["views_sent"])
    # Billed with the audio price row: the server reports 40 input tokens and no audio
    # details, so each clip sent is billed on top by its length (as text-price tokens).
    costs = services.costs
    for record in cloud_turns:
        clips = [
            cloud_audio(str(EXAMPLES / "audio" / CLIPS[n]), 30).seconds
            for n in record["audio_sent"]
        ]
        billed = 40 + sum(costs.audio_tokens(s) for s in clips)
        assert record["input_tokens"] == billed
        assert record["cost_usd"] == pytest.approx(costs.cloud_call_usd(billed, 6), abs=1e-8)
    assert cloud_turns[0]["cost_usd"] > 5 * cloud_turns[-1]["cost_usd"]  # audio costs more
    # The clip goes as mono 16 kHz WAV, the one the device stored for the bench microphone.
    sent = base64.b64decode(_input_audio(bodies[0])[0]["input_audio"]["data"])
    assert sent[:4] == b"RIFF" and int.from_bytes(sent[24:28], "little") == 16_000
    # Every clip was transcribed on the device; the private one never left it.
    heard = turns[0]["transcripts"]
    assert set(heard) == {"bench_mic", "office_mic"} and all(heard.values())
    raw = b"\n".join(server.bodies).decode()
    for trace in [*_private_traces(), heard["office_mic"]]:
        assert trace not in raw
    # The local turn read the transcripts: the bench and the private office microphone.
    local = services.local
    assert isinstance(local, FakeLocal)
    prompt = local.seen[-1][-1]["content"]
    assert heard["office_mic"] in prompt and heard["bench_mic"] in prompt
    # The voice note's words are in the history the last request carried, as text.
    note = turns[1]["transcripts"]["voice_note_1"]
    assert note and note in json.dumps(bodies[-1]["messages"][:-1])


def test_the_workshop_dialogue_through_the_chat_model(
    tmp_path: Path, server: CaptureServer
) -> None:
    services = _services(load_settings(_config(tmp_path, server)), server, tmp_path)
    graph = build_graph(services, checkpointer=InMemorySaver())
    views = {
        "bench_mic": {
            "audio": str(EXAMPLES / "audio" / "bench_mic.ogg"),
            "description": "microphone at the workbench",
        },
        "office_mic": {"audio": str(EXAMPLES / "audio" / "office_mic.ogg"), "private": True},
    }
    model = TMOChatModel(
        graph=graph, context=Context(policy="always-cloud"), thread_id="chat", views=views
    )
    note = base64.b64encode((EXAMPLES / "audio" / "voice_note.wav").read_bytes()).decode()
    voice = HumanMessage(
        content=[
            {"type": "text", "text": "Please answer my voice note."},
            {"type": "audio", "base64": note, "mime_type": "audio/wav"},
        ]
    )
    first = model.invoke([voice])
    second = model.invoke([voice, first, HumanMessage(content=BENCH_QUESTION)])
    third = model.invoke([HumanMessage(content="Thanks, that is all.")])
    meta = [m.response_metadata for m in (first, second, third)]
    assert [m["route"] for m in meta] == ["cloud"] * 3
    assert [m["audio_sent"] for m in meta] == [["voice_note_1"], ["bench_mic"], []]
    bodies = _bodies(server)
    assert [len(_input_audio(b)) for b in bodies] == [1, 1, 0]
    raw = b"\n".join(server.bodies).decode()
    for trace in [*_private_traces(), meta[0]["transcripts"]["office_mic"]]:
        assert trace not in raw
