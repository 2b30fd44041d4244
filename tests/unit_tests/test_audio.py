"""Audio clips: decoded, checked, stored by hash, transcribed once, routed like
views (private ones never sent), sent as input_audio only when chosen, billed at audio prices."""

from __future__ import annotations

import base64
import io
import json
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services, png_bytes
from tmo_graph.cli.dialogues import parse_dialogue
from tmo_graph.context import Context
from tmo_graph.costs.prices import PRICES, audio_input_tokens
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.media import audio
from tmo_graph.media.audio import (
    SAMPLE_RATE,
    cloud_audio,
    samples_of,
    store_audio,
    store_audio_bytes,
)
from tmo_graph.policy.base import Action
from tmo_graph.policy.budget import CostModel
from tmo_graph.prompts import PRIVATE
from tmo_graph.sections import AudioSettings, CloudSettings
from tmo_graph.settings import Settings

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "audio"
HEARING = "gpt-4o-mini-audio-preview"


def wav(seconds: float, rate: int = SAMPLE_RATE, channels: int = 1, freq: float = 440.0) -> bytes:
    """A sine tone as a 16-bit WAV file."""
    t = np.arange(int(seconds * rate)) / rate
    tone = (0.3 * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2")
    frames = np.repeat(tone[:, None], channels, axis=1)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames.tobytes())
    return buffer.getvalue()


class Ears:
    """A recogniser that "hears" a clip by its length: one scripted phrase per length."""

    name = "test-ears"

    def __init__(self, phrases: dict[float, str]) -> None:
        self.phrases = phrases
        self.calls = 0
        self.loads = 0

    def load(self) -> None:
        self.loads += 1

    def transcribe(self, samples: np.ndarray) -> str:
        self.calls += 1
        return self.phrases.get(round(samples.size / SAMPLE_RATE, 1), "")


@pytest.fixture(autouse=True)
def _fresh_transcripts() -> Iterator[None]:
    audio._TRANSCRIPTS.clear()  # every test hears its own clips
    yield
    audio._TRANSCRIPTS.clear()


# ---- decoding, trimming, checks ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "seconds"),
    [
        (DATA / "check_the_oven.mp3", 1.33),
        (DATA / "check_the_oven.flac", 1.33),
        (EXAMPLES / "bench_mic.ogg", 2.64),
        (EXAMPLES / "voice_note.wav", 2.53),
    ],
)
def test_every_format_decodes_to_mono_16k(path: Path, seconds: float) -> None:
    samples = samples_of(str(path))
    assert samples.dtype == np.int16 and samples.ndim == 1
    assert samples.size / SAMPLE_RATE == pytest.approx(seconds, abs=0.06)
    assert np.abs(samples).max() > 1000  # speech, not silence


def test_a_stereo_44k_clip_is_resampled_and_trimmed_for_the_cloud(tmp_path: Path) -> None:
    ref = store_audio_bytes(wav(3.0, rate=44_100, channels=2), tmp_path, 120)
    assert ref.seconds == pytest.approx(3.0, abs=0.01) and ref.format == "wav"
    sent = cloud_audio(ref.ref, max_seconds=1.0)
    with wave.open(io.BytesIO(base64.b64decode(sent.data))) as clip:
        assert (clip.getnchannels(), clip.getframerate(), clip.getsampwidth()) == (1, 16_000, 2)
        assert clip.getnframes() == 16_000
    assert sent.trimmed and sent.seconds == 1.0
    whole = cloud_audio(ref.ref, max_seconds=30.0)
    assert not whole.trimmed and whole.seconds == pytest.approx(3.0, abs=0.01)


def test_an_inline_clip_is_stored_once_under_its_hash(tmp_path: Path) -> None:
    url = "data:audio/wav;base64," + base64.b64encode(wav(0.5)).decode()
    first, again = store_audio(url, tmp_path, 120), store_audio(url, tmp_path, 120)
    assert first == again and Path(first.ref).name == f"{first.sha256}.wav"
    assert len(list(tmp_path.iterdir())) == 1


def _zero_frame_wav() -> bytes:
    return wav(0.0)


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("/no/such/clip.wav", "does not exist"),
        ("data:audio/wav;base64,@@@", "invalid base64"),
        ("data:audio/wav;base64," + base64.b64encode(b"hello, not audio").decode(), "not audio"),
        (
            "data:audio/mp4;base64,"
            + base64.b64encode(b"\0\0\0\x20ftypM4A " + b"\0" * 64).decode(),
            "MP4/M4A/AAC audio, which is not supported",
        ),
        ("data:audio/wav;base64," + base64.b64encode(_zero_frame_wav()).decode(), "no sound"),
        ("data:audio/wav;base64," + base64.b64encode(wav(3.0)).decode(), "3.0 s long, over"),
        ("https://example.com/clip.wav", "clips are not fetched"),
    ],
)
def test_bad_clips_are_refused_naming_the_problem_and_the_fix(
    tmp_path: Path, source: str, words: str
) -> None:
    with pytest.raises(TmoGraphError, match=words) as info:
        store_audio(source, tmp_path, max_seconds=2.0)
    assert info.value.fix


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(TmoGraphError, match=r"is empty \(0 bytes\)"):
        store_audio(str(empty), tmp_path, 120)


# ---- costs ---------------------------------------------------------------------------------


def test_audio_is_priced_at_the_audio_rate_and_counted_in_every_bound() -> None:
    price = PRICES[HEARING]
    # 10 s: 100 audio tokens at $10/M = $0.001, i.e. 6667 text tokens at $0.15/M.
    assert audio_input_tokens(price, 10.0) == 6667
    assert audio_input_tokens(PRICES["gpt-4o-mini"], 10.0) == 0  # a model that hears none
    costs = CostModel.from_settings(Settings(cloud=CloudSettings(price_as=HEARING)))
    assert costs.cloud_call_usd(costs.audio_tokens(10.0), 0) == pytest.approx(0.001, rel=1e-3)
    text = costs.expected(Action("cloud", ()), 100, audio_s={"mic": 10.0})
    with_mic = costs.expected(Action("cloud", ("mic",)), 100, audio_s={"mic": 10.0})
    assert with_mic.cost_usd - text.cost_usd == pytest.approx(0.001, rel=1e-3)
    cap = costs.cloud_input_tokens_at_most(["hi"], [], [10.0])
    assert cap == costs.cloud_input_tokens_at_most(["hi"]) + 6667


def test_a_price_row_from_the_config_can_carry_an_audio_price() -> None:
    settings = Settings.model_validate(
        {
            "cloud": {"price_as": "my-audio"},
            "prices": {
                "my-audio": {
                    "input_per_mtok": 1.0,
                    "output_per_mtok": 2.0,
                    "tokens_per_image": 85,
                    "input_audio_per_mtok": 4.0,
                    "audio_tokens_per_s": 25.0,
                }
            },
        }
    )
    costs = CostModel.from_settings(settings)
    assert costs.hears and costs.audio_tokens(2.0) == 200  # 50 audio tokens at 4x the text price


# ---- the graph -----------------------------------------------------------------------------


def _clip(tmp_path: Path, name: str, seconds: float) -> str:
    path = tmp_path / f"{name}.wav"
    path.write_bytes(wav(seconds, freq=300 + 100 * seconds))
    return str(path)


def _voice_note(seconds: float) -> dict[str, Any]:
    data = base64.b64encode(wav(seconds, freq=500)).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


PHRASES = {1.0: "the lathe is squeaking", 1.5: "my locker code is under the desk", 2.0: "how hot"}


def _graph(
    tmp_path: Path,
    price_as: str = HEARING,
    mode: str = "remote",
    scores: dict[str, float] | None = None,
    phrases: dict[float, str] | None = None,
    clock: Callable[[], float] | None = None,
) -> tuple[Any, FakeCloud, FakeLocal, Ears]:
    cloud = FakeCloud()
    cloud.sent = []
    local = FakeLocal(["local answer"])
    settings = Settings(cloud=CloudSettings(mode=mode, price_as=price_as))  # type: ignore[arg-type]
    services = fake_services(
        tmp_path, local, cloud, scores=scores or {"mic": 0.9}, settings=settings
    )
    ears = Ears(PHRASES if phrases is None else phrases)
    services.recogniser = ears
    if clock is not None:
        services.clock = clock
    return build_graph(services, checkpointer=InMemorySaver()), cloud, local, ears


def _views(tmp_path: Path) -> dict[str, Any]:
    return {
        "mic": {"audio": _clip(tmp_path, "mic", 1.0), "description": "workshop microphone"},
        "desk_mic": {"audio": _clip(tmp_path, "desk", 1.5), "private": True},
    }


def _run(graph: Any, message: Any, context: Context, **extra: Any) -> dict[str, Any]:
    config = {"configurable": {"thread_id": "t"}}
    return graph.invoke({"messages": [message], **extra}, config, context=context)["turns"][-1]


def _audio_parts(request: list[Any]) -> list[dict[str, Any]]:
    """The clips of a request's last message: LangChain reads an OpenAI ``input_audio`` part
    into its own ``audio`` block (ChatOpenAI writes it back as input_audio on the wire)."""
    content = request[-1].content
    return [p for p in content if isinstance(p, dict) and p.get("type") in ("input_audio", "audio")]


def _is_wav(part: dict[str, Any]) -> bool:
    if part["type"] == "input_audio":
        return bool(part["input_audio"]["format"] == "wav")
    return bool(part.get("mime_type") == "audio/wav")


def _all_text(cloud: FakeCloud) -> str:
    return json.dumps([[m.content for m in request] for request in cloud.sent])


def test_chosen_clips_go_as_input_audio_and_private_ones_never(tmp_path: Path) -> None:
    graph, cloud, _, ears = _graph(tmp_path)
    message = HumanMessage(content=[{"type": "text", "text": "What is wrong?"}, _voice_note(2.0)])
    record = _run(graph, message, Context(policy="always-cloud"), views=_views(tmp_path))
    assert record["route"] == "cloud"
    assert record["audio_sent"] == ["voice_note_1", "mic"] == record["views_sent"]
    parts = _audio_parts(cloud.sent[-1])
    assert len(parts) == 2 and all(_is_wav(p) for p in parts)
    assert record["transcripts"] == {
        "voice_note_1": "how hot",
        "mic": "the lathe is squeaking",
        "desk_mic": "my locker code is under the desk",
    }
    sent = _all_text(cloud)
    # Nothing of the private source: not its words, not its name, not its audio.
    private_audio = cloud_audio(_views(tmp_path)["desk_mic"]["audio"], 30).data
    assert "locker" not in sent and "desk_mic" not in sent and private_audio not in sent
    # A clip sent as audio is not also sent as its (low-accuracy) transcript.
    assert "how hot" not in sent and "lathe" not in sent
    assert ears.calls == 3
    # The next turn hears the same clips from the cache: no new transcription.
    _run(graph, ("user", "And now?"), Context(policy="always-cloud"))
    assert ears.calls == 3


def test_the_transcripts_are_in_the_local_prompt(tmp_path: Path) -> None:
    graph, cloud, local, _ = _graph(tmp_path)
    message = HumanMessage(content=[{"type": "text", "text": "What is wrong?"}, _voice_note(2.0)])
    record = _run(graph, message, Context(policy="always-local"), views=_views(tmp_path))
    assert record["route"] == "local" and record["audio_sent"] == [] and not cloud.sent
    prompt = local.seen[-1][-1]["content"]
    assert 'What is wrong? [voice note: "how hot"]' in prompt
    assert "the lathe is squeaking" in prompt  # the named source
    assert "my locker code is under the desk" in prompt  # private: on the device it is read


def test_the_time_spent_hearing_clips_counts_in_the_turn_and_the_budget(tmp_path: Path) -> None:
    now = [100.0]  # a clock that moves only while the device reads a clip
    graph, _, _, ears = _graph(tmp_path, clock=lambda: now[0])
    hear = ears.transcribe

    def slow_ears(samples: np.ndarray) -> str:
        now[0] += 2.0  # each clip takes the device 2 s to read
        return hear(samples)

    ears.transcribe = slow_ears  # type: ignore[method-assign]
    message = HumanMessage(content=[{"type": "text", "text": "What is wrong?"}, _voice_note(2.0)])
    context = Context(policy="always-local", latency_budget_s=60.0)
    record = _run(graph, message, context, views=_views(tmp_path))
    # Three clips heard (the voice note, the shared and the private microphone): 6 s.
    assert record["transcription_s"] == pytest.approx(6.0)
    assert record["latency_s"] >= 6.0
    assert record["budget_left"]["latency_s"] == pytest.approx(60.0 - record["latency_s"], abs=1e-3)
    # The next turn hears the same clips from the cache: no time, and no field to report.
    again = _run(graph, ("user", "And now?"), context)
    assert "transcription_s" not in again or again["transcription_s"] == 0.0


def test_loading_the_recogniser_is_not_charged_to_the_dialogue(tmp_path: Path) -> None:
    # The bug: PocketSphinx built its decoder (about a second) inside the first clip's timed
    # reading, so the dialogue's latency budget paid for loading a model.
    now = [100.0]
    graph, _, _, ears = _graph(tmp_path, clock=lambda: now[0])
    hear = ears.transcribe

    def load() -> None:
        if not ears.loads:
            now[0] += 5.0  # the model's one-off loading
        ears.loads += 1

    def slow_ears(samples: np.ndarray) -> str:
        assert ears.loads, "the recogniser was not loaded before the clips were timed"
        now[0] += 2.0
        return hear(samples)

    ears.load = load  # type: ignore[method-assign]
    ears.transcribe = slow_ears  # type: ignore[method-assign]
    context = Context(policy="always-local")
    # A turn without clips never loads the recogniser.
    _run(graph, ("user", "Hello?"), context)
    assert ears.loads == 0
    message = HumanMessage(content=[{"type": "text", "text": "What is wrong?"}, _voice_note(2.0)])
    record = _run(graph, message, context, views=_views(tmp_path))
    assert ears.loads >= 1
    assert record["transcription_s"] == pytest.approx(6.0)  # three clips read, no loading
    assert record["latency_s"] < 6.5


def test_pocketsphinx_loads_its_decoder_once_before_it_hears() -> None:
    pytest.importorskip("pocketsphinx")
    from tmo_graph.models.speech import PocketSphinxRecogniser

    ears = PocketSphinxRecogniser()
    ears.load()
    decoder = ears._decoder
    assert decoder is not None
    assert isinstance(ears.transcribe(np.zeros(SAMPLE_RATE // 2, dtype=np.int16)), str)
    ears.load()
    assert ears._decoder is decoder  # loaded once


def test_a_voice_note_alone_is_a_question(tmp_path: Path) -> None:
    graph, _, local, _ = _graph(tmp_path)
    record = _run(graph, HumanMessage(content=[_voice_note(2.0)]), Context(policy="always-local"))
    assert record["transcripts"] == {"voice_note_1": "how hot"}
    assert local.seen[-1][-1]["content"] == '[voice note: "how hot"]'


def test_a_text_only_cloud_route_gets_the_transcript(tmp_path: Path) -> None:
    graph, cloud, _, _ = _graph(tmp_path, scores={"mic": 0.0})  # the mic is not worth sending
    message = HumanMessage(content=[{"type": "text", "text": "What is wrong?"}, _voice_note(2.0)])
    context = Context(policy="always-cloud", cost_budget_usd=1.0)
    _run(graph, message, context, views=_views(tmp_path))
    record = _run(graph, ("user", "Thanks. And the bench?"), context)
    assert record["route"] == "cloud" and record["views_sent"] == [] and record["audio_sent"] == []
    assert not _audio_parts(cloud.sent[-1])
    last = json.dumps(cloud.sent[-1][-1].content)
    assert "lathe is squeaking" in last and "locker" not in last
    # The earlier voice note reaches the history as its transcript, never as audio.
    assert 'voice note: \\"how hot\\"' in json.dumps([m.content for m in cloud.sent[-1]])


def test_a_model_that_hears_none_gets_transcripts_with_a_warning(tmp_path: Path) -> None:
    graph, cloud, _, _ = _graph(tmp_path, price_as="gpt-4o-mini")
    message = HumanMessage(content=[{"type": "text", "text": "What is wrong?"}, _voice_note(2.0)])
    record = _run(graph, message, Context(policy="always-cloud"), views=_views(tmp_path))
    assert record["route"] == "cloud" and record["audio_sent"] == []
    assert not _audio_parts(cloud.sent[-1])
    assert "how hot" in json.dumps(cloud.sent[-1][-1].content)
    assert any("has no audio price" in w for w in record["warnings"])


def test_the_loopback_stand_in_gets_transcripts_billed_as_audio(tmp_path: Path) -> None:
    graph, cloud, _, _ = _graph(tmp_path, mode="loopback")
    message = HumanMessage(content=[{"type": "text", "text": "What is wrong?"}, _voice_note(2.0)])
    record = _run(graph, message, Context(policy="always-cloud"), views=_views(tmp_path))
    assert record["audio_sent"] == [] and not _audio_parts(cloud.sent[-1])
    assert any("loopback stand-in cannot hear" in w for w in record["warnings"])
    costs = CostModel.from_settings(Settings(cloud=CloudSettings(price_as=HEARING)))
    # The fake reports 100 input tokens; both clips (2 s, 1 s) are billed on top.
    assert record["input_tokens"] == 100 + costs.audio_tokens(2.0) + costs.audio_tokens(1.0)


def test_a_private_message_with_a_voice_note_stays_on_the_device(tmp_path: Path) -> None:
    graph, cloud, _, _ = _graph(tmp_path)
    secret = HumanMessage(content=[_voice_note(1.5)], additional_kwargs={PRIVATE: True})
    record = _run(graph, secret, Context(policy="always-cloud"), views=_views(tmp_path))
    assert record["route"] == "local" and record["audio_sent"] == [] and not cloud.sent
    # Every cloud action was ruled out: 1 + 2**2 actions over {voice note, mic}, local kept.
    assert len(record["masked"]) == 2**2
    later = _run(graph, ("user", "What did I just say?"), Context(policy="always-cloud"))
    assert later["route"] == "cloud"
    assert later["audio_sent"] == ["mic"] and len(_audio_parts(cloud.sent[-1])) == 1
    private_note = _voice_note(1.5)["input_audio"]["data"]
    assert "locker" not in _all_text(cloud) and private_note[:200] not in _all_text(cloud)


def test_the_action_space_spans_views_and_audio(tmp_path: Path) -> None:
    graph, _, _, _ = _graph(tmp_path, scores={"mic": 0.9, "bench": 0.9})
    views = {**_views(tmp_path), "bench": {"image": str(_png(tmp_path))}}
    message = HumanMessage(
        content=[{"type": "text", "text": "What is this?"}, _voice_note(2.0)],
        additional_kwargs={PRIVATE: True},  # every cloud action is listed as masked
    )
    record = _run(graph, message, Context(policy="always-cloud"), views=views)
    # X = 3 modalities that can be sent (voice note, mic, bench camera): 1 + 2**3 actions.
    assert len(record["masked"]) == 2**3
    assert "cloud+voice_note_1,mic,bench" in record["masked"]


def _png(tmp_path: Path) -> Path:
    path = tmp_path / "bench.png"
    path.write_bytes(png_bytes())
    return path


def test_a_tight_budget_leaves_a_long_clip_at_home(tmp_path: Path) -> None:
    graph, cloud, _, _ = _graph(tmp_path, price_as="gpt-4o-audio-preview")
    views = {"mic": {"audio": _clip(tmp_path, "long", 20.0), "description": "workshop mic"}}
    # 20 s at $40/M audio tokens is $0.008: over a $0.005 budget; a text-only call fits.
    context = Context(policy="always-cloud", cost_budget_usd=0.005)
    record = _run(graph, ("user", "What is that noise?"), context, views=views)
    assert record["route"] == "cloud" and record["audio_sent"] == []
    assert "cloud+mic" in record["masked"] and not _audio_parts(cloud.sent[-1])


def test_personal_data_in_a_transcript_keeps_the_audio_home(tmp_path: Path) -> None:
    # Spoken personal data cannot be redacted in the audio: the redacted words go instead.
    graph, cloud, _, _ = _graph(tmp_path, phrases={2.0: "my password is hunter2"})
    message = HumanMessage(content=[{"type": "text", "text": "Note this."}, _voice_note(2.0)])
    record = _run(graph, message, Context(policy="always-cloud"))
    assert record["audio_sent"] == [] and not _audio_parts(cloud.sent[-1])
    assert any("holds personal data" in w for w in record["warnings"])
    assert "hunter2" not in _all_text(cloud) and "[SECRET_1]" in _all_text(cloud)


def test_a_missing_clip_in_a_view_is_a_clear_error(tmp_path: Path) -> None:
    graph, _, _, _ = _graph(tmp_path)
    with pytest.raises(TmoGraphError, match="audio file .*nope.wav does not exist"):
        _run(graph, ("user", "hi"), Context(), views={"mic": {"audio": str(tmp_path / "nope.wav")}})


def test_a_view_with_an_image_and_a_clip_is_refused(tmp_path: Path) -> None:
    graph, _, _, _ = _graph(tmp_path)
    views = {"cam": {"image": str(_png(tmp_path)), "audio": _clip(tmp_path, "c", 1.0)}}
    with pytest.raises(TmoGraphError, match="both an image and an audio clip"):
        _run(graph, ("user", "hi"), Context(), views=views)


def test_a_too_long_clip_is_refused_by_the_configured_limit(tmp_path: Path) -> None:
    graph, _, _, _ = _graph(tmp_path)
    views = {"mic": {"audio": _clip(tmp_path, "long", 3.0)}}
    services_limit = AudioSettings(max_clip_seconds=2.0)
    assert services_limit.max_clip_seconds == 2.0
    settings = Settings(audio=services_limit)
    services = fake_services(tmp_path, settings=settings)
    short = build_graph(services, checkpointer=InMemorySaver())
    with pytest.raises(TmoGraphError, match=r"audio.max_clip_seconds"):
        _run(short, ("user", "hi"), Context(), views=views)
    _run(graph, ("user", "hi"), Context(), views=views)  # within the default 120 s


# ---- dialogue files ------------------------------------------------------------------------


def test_a_dialogue_file_takes_audio_sources_and_voice_notes(tmp_path: Path) -> None:
    (tmp_path / "mic.wav").write_bytes(wav(1.0))
    (tmp_path / "note.wav").write_bytes(wav(2.0))
    raw = {
        "views": {"mic": {"audio": "mic.wav", "description": "bench"}},
        "turns": ["Hello", {"audio": ["note.wav"]}, {"text": "And this?", "audio": ["note.wav"]}],
    }
    dialogue = parse_dialogue(raw, tmp_path, "d.jsonl:1")
    assert dialogue.views["mic"]["audio"] == str(tmp_path / "mic.wav")
    assert dialogue.turns[1].content() == [{"type": "audio", "url": str(tmp_path / "note.wav")}]
    inputs = list(dialogue.turn_inputs())
    assert inputs[2]["messages"][0].content[0] == {"type": "text", "text": "And this?"}


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"turns": [{"audio": ["missing.wav"]}]}, r"`turns\[0\]\.audio\[0\]`: audio file"),
        ({"turns": [{"audio": ["bad.wav"]}]}, r"`turns\[0\]\.audio\[0\]`: .*is not audio"),
        ({"turns": [{"audio": []}]}, r"`turns\[0\]\.text`: the message is empty"),
        ({"views": {"m": {"audio": "missing.wav"}}, "turns": ["hi"]}, r"`views\.m\.audio`"),
        (
            {"views": {"m": {"audio": "bad.wav", "image": "x.png"}}, "turns": ["hi"]},
            "both an image and an audio clip",
        ),
    ],
)
def test_bad_audio_in_a_dialogue_file_names_the_field(
    tmp_path: Path, raw: dict[str, Any], words: str
) -> None:
    (tmp_path / "bad.wav").write_text("not audio at all")
    with pytest.raises(TmoGraphError, match=words):
        parse_dialogue(raw, tmp_path, "d.jsonl:1")


# ---- surfaces: the OpenAI-compatible server and the chat model ----------------------------


def _server(tmp_path: Path) -> tuple[Any, FakeCloud]:
    from fastapi.testclient import TestClient

    from tmo_graph.server.app import create_app

    cloud = FakeCloud()
    cloud.sent = []
    settings = Settings(cloud=CloudSettings(mode="remote", price_as=HEARING))
    services = fake_services(tmp_path, FakeLocal(["kept"]), cloud, settings=settings)
    services.recogniser = Ears(PHRASES)
    app = create_app(
        build_graph(services, checkpointer=InMemorySaver()), services.settings, no_auth=True
    )
    return TestClient(app), cloud


def test_the_server_accepts_an_openai_input_audio_part(tmp_path: Path) -> None:
    client, cloud = _server(tmp_path)
    with client:
        reply = client.post(
            "/v1/chat/completions",
            json={
                "model": "tmo-always-cloud",
                "messages": [{"role": "user", "content": [_voice_note(2.0)]}],  # voice only
            },
        )
        assert reply.status_code == 200, reply.text
        tmo = reply.json()["tmo"]
        assert tmo["audio_sent"] == ["voice_note_1"] and tmo["transcripts"]["voice_note_1"]
        assert len(_audio_parts(cloud.sent[-1])) == 1
        assert reply.headers["x-tmo-audio-sent"] == "voice_note_1"
        private = client.post(
            "/v1/chat/completions",
            json={
                "model": "tmo-always-cloud",
                "messages": [{"role": "user", "content": [_voice_note(1.5)], "private": True}],
            },
        )
        assert private.json()["tmo"]["route"] == "local" and len(cloud.sent) == 1


@pytest.mark.parametrize(
    ("part", "words"),
    [
        (
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"x" * 64).decode()}},
            "is not audio",
        ),
        ({"type": "input_audio", "input_audio": {"format": "wav"}}, "must be the clip as base64"),
        (
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "aiff"}},
            "format must be one of wav, flac, mp3, ogg",
        ),
        ({"type": "audio", "url": "/etc/hostname"}, "reads no URLs or files for a client"),
    ],
)
def test_the_server_refuses_bad_audio_parts(
    tmp_path: Path, part: dict[str, Any], words: str
) -> None:
    client, cloud = _server(tmp_path)
    with client:
        reply = client.post(
            "/v1/chat/completions",
            json={
                "model": "tmo-always-cloud",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, part]}],
            },
        )
    assert reply.status_code == 400 and words in reply.json()["error"]["message"]
    assert not cloud.sent


def test_the_chat_model_takes_a_langchain_audio_block_and_audio_views(tmp_path: Path) -> None:
    from tmo_graph.chat_model import TMOChatModel

    graph, cloud, _, _ = _graph(tmp_path)
    model = TMOChatModel(graph=graph, context=Context(policy="always-cloud"))
    note = base64.b64encode(wav(2.0, freq=500)).decode()
    message = HumanMessage(
        content=[
            {"type": "text", "text": "What is wrong?"},
            {"type": "audio", "base64": note, "mime_type": "audio/wav"},
        ]
    )
    reply = model.invoke([message], views=_views(tmp_path))
    assert reply.response_metadata["audio_sent"] == ["voice_note_1", "mic"]
    assert reply.response_metadata["transcripts"]["voice_note_1"] == "how hot"
    assert len(_audio_parts(cloud.sent[-1])) == 2 and "locker" not in _all_text(cloud)


# ---- the recogniser setting ----------------------------------------------------------------


def test_faster_whisper_needs_its_folder_and_package(tmp_path: Path) -> None:
    import importlib.util

    from tmo_graph.models.speech import recogniser_for

    with pytest.raises(TmoGraphError, match="audio.model_dir is not set"):
        recogniser_for(AudioSettings(recogniser="faster-whisper"))
    with pytest.raises(TmoGraphError, match="not a faster-whisper model folder"):
        recogniser_for(AudioSettings(recogniser="faster-whisper", model_dir=tmp_path / "none"))
    if importlib.util.find_spec("faster_whisper") is None:  # it is never installed by us
        (tmp_path / "model.bin").write_bytes(b"")
        with pytest.raises(TmoGraphError, match="pip install faster-whisper"):
            recogniser_for(AudioSettings(recogniser="faster-whisper", model_dir=tmp_path))
    assert recogniser_for(AudioSettings(recogniser="none")) is None


def test_services_hold_the_configured_recogniser(tmp_path: Path) -> None:
    # Built once with the services (the nodes never build one); a test passes its own.
    assert fake_services(tmp_path).recogniser is not None
    assert fake_services(tmp_path).recogniser is fake_services(tmp_path).recogniser
    quiet = Settings(audio=AudioSettings(recogniser="none"))
    assert fake_services(tmp_path, settings=quiet).recogniser is None


def test_without_a_recogniser_clips_still_route_on_their_descriptions(tmp_path: Path) -> None:
    cloud = FakeCloud()
    cloud.sent = []
    settings = Settings(
        cloud=CloudSettings(mode="remote", price_as=HEARING),
        audio=AudioSettings(recogniser="none"),
    )
    services = fake_services(tmp_path, FakeLocal(["ok"]), cloud, {"mic": 0.9}, settings)
    graph = build_graph(services, checkpointer=InMemorySaver())
    record = _run(
        graph,
        ("user", "What is that noise?"),
        Context(policy="always-cloud"),
        views=_views(tmp_path),
    )
    assert record["transcripts"] == {"mic": "", "desk_mic": ""}
    assert record["audio_sent"] == ["mic"] and len(_audio_parts(cloud.sent[-1])) == 1


def test_the_audit_log_names_the_clips_sent_by_hash(tmp_path: Path) -> None:
    from tmo_graph.guards.audit import AuditLog, read_audit

    cloud = FakeCloud()
    cloud.sent = []
    settings = Settings(cloud=CloudSettings(mode="remote", price_as=HEARING))
    services = fake_services(tmp_path, FakeLocal(["ok"]), cloud, {"mic": 0.9}, settings)
    services.recogniser = Ears(PHRASES)
    services.audit = AuditLog(tmp_path / "audit.jsonl")
    graph = build_graph(services, checkpointer=InMemorySaver())
    views = _views(tmp_path)
    _run(graph, ("user", "What is that noise?"), Context(policy="always-cloud"), views=views)
    (entry,) = read_audit(tmp_path / "audit.jsonl")
    mic = store_audio(views["mic"]["audio"], tmp_path, 120)
    assert entry["views"] == [{"name": "mic", "sha256": mic.sha256}]  # never desk_mic


def test_a_view_on_the_command_line_may_be_a_clip(tmp_path: Path) -> None:
    from tmo_graph.cli.dialogues import cli_views

    clip = _clip(tmp_path, "mic", 1.0)
    views = cli_views({"mic": clip, "cam": str(_png(tmp_path))}, {"mic": "bench microphone"})
    assert views["mic"] == {"description": "bench microphone", "audio": clip}
    assert "image" in views["cam"] and "audio" not in views["cam"]
    (tmp_path / "bad.wav").write_text("no audio here")
    with pytest.raises(TmoGraphError, match="`--view bad`: .*is not audio"):
        cli_views({"bad": str(tmp_path / "bad.wav")}, {})


def test_reported_audio_tokens_are_repriced_at_the_audio_rate(tmp_path: Path) -> None:
    from langchain_core.messages import AIMessage

    from tmo_graph.models.cloud_billing import CloudBilling

    settings = Settings(cloud=CloudSettings(mode="remote", price_as=HEARING))
    services = fake_services(tmp_path, settings=settings)
    billing = CloudBilling.for_endpoint(settings.cloud, services.costs)
    usage: Any = {"input_tokens": 120, "output_tokens": 5, "total_tokens": 125}
    # OpenAI counts the clip's audio tokens in prompt_tokens and says how many they were.
    told = AIMessage(content="x", usage_metadata={**usage, "input_token_details": {"audio": 20}})
    # 100 text tokens + 20 audio tokens at $10/M = 1334 tokens at the $0.15/M text price.
    assert billing.input_tokens(told, sent_audio_s=[2.0]) == 100 + 1334
    # An endpoint that does not say: the clip sent is billed on top, by its length.
    silent = AIMessage(content="x", usage_metadata=usage)
    assert billing.input_tokens(silent, sent_audio_s=[2.0]) == 120 + services.costs.audio_tokens(
        2.0
    )
    assert billing.input_tokens(silent) == 120  # no clip sent, nothing added


def test_the_loopback_stand_in_is_billed_as_the_priced_model(tmp_path: Path) -> None:
    from langchain_core.messages import AIMessage

    from tmo_graph.models.cloud_billing import CloudBilling

    settings = Settings(cloud=CloudSettings(mode="loopback", price_as=HEARING))
    costs = fake_services(tmp_path, settings=settings).costs
    billing = CloudBilling.for_endpoint(settings.cloud, costs)
    reply = AIMessage(
        content="x", usage_metadata={"input_tokens": 50, "output_tokens": 5, "total_tokens": 55}
    )
    # The text-only stand-in dropped the image and got the clip as words: billed for both.
    billed = billing.input_tokens(reply, images=[(512, 384)], unheard_audio_s=[3.0])
    assert billed == 50 + costs.image_tokens(512, 384) + costs.audio_tokens(3.0)
    assert billing.why_not_heard() == (
        "the loopback stand-in cannot hear (billed as the priced model would bill the audio)"
    )
    assert billing.audio_seconds([], [3.0]) == [3.0]
    # A real endpoint reports what it billed; clips it did not hear are not billed as audio.
    remote = CloudBilling.for_endpoint(CloudSettings(mode="remote", price_as=HEARING), costs)
    assert remote.input_tokens(reply, images=[(512, 384)], unheard_audio_s=[3.0]) == 50
    assert remote.why_not_heard() is None and remote.audio_seconds([], [3.0]) == []


class SeenCaptions:
    """An association scorer that keeps the captions it was asked to score."""

    def __init__(self) -> None:
        self.captions: list[dict[str, str]] = []

    def score(self, prompt_vector: Any, captions: Any) -> dict[str, float]:
        self.captions.append(dict(captions))
        return dict.fromkeys(captions, 0.5)


def test_transcripts_feed_the_classifier_and_the_association(tmp_path: Path) -> None:
    services = fake_services(tmp_path)
    services.recogniser = Ears(PHRASES)
    seen = SeenCaptions()
    services.association = seen
    classified: list[list[float]] = []
    classify = services.tasks.classify_vector

    def spy(vector: Any) -> str:
        classified.append(list(vector))
        return classify(vector)

    services.tasks.classify_vector = spy  # type: ignore[method-assign]
    graph = build_graph(services, checkpointer=InMemorySaver())
    _run(graph, HumanMessage(content=[_voice_note(2.0)]), Context(), views=_views(tmp_path))
    # The voice note's words are the prompt the task is classified from.
    assert classified == [list(services.embed('[voice note: "how hot"]'))]
    # A source is scored on its description and what it heard; a private one not at all.
    assert seen.captions[-1] == {"mic": "workshop microphone. Heard: the lathe is squeaking"}
