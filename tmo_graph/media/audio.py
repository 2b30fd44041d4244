"""Audio clips by reference: the state keeps a path plus a content hash, never samples.

A clip comes as a file (WAV, FLAC, MP3 or OGG Vorbis), a ``data:audio/...;base64,`` URL or
bare base64 (OpenAI's ``input_audio``). Bytes sent inline are stored once in the media
folder, named by their SHA-256, and replaced by that file's path. Every clip is checked on
arrival (readable, a supported format, not empty, not longer than ``audio.max_clip_seconds``),
so a bad clip fails before any model runs.

On the device a clip is decoded to mono 16 kHz 16-bit samples for the recogniser; its
transcript is made once per clip content (:func:`transcript`). The bytes a cloud call carries
are made only inside that call, for the clips it sends: mono 16 kHz WAV, trimmed to
``audio.cloud_max_seconds`` (:func:`cloud_audio`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import threading
import wave
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tmo_graph.errors import TmoGraphError
from tmo_graph.media.store import parse_media_url, resolve_source, store_once

if TYPE_CHECKING:
    import numpy as np

SAMPLE_RATE = 16_000
FORMATS = ("wav", "flac", "mp3", "ogg")
SUPPORTED = "WAV, FLAC, MP3 or OGG Vorbis"
_MIME = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg"}
# Containers people send that are no format here: named in the error, with the fix.
_OTHER = {b"ftyp": "MP4/M4A/AAC", b"\x1aE\xdf\xa3": "WebM/Matroska", b"#!AM": "AMR"}
CONVERT = f"convert it to one of {SUPPORTED}, e.g. `sox in.m4a -r 16000 -c 1 out.wav`"


def sniff_format(data: bytes) -> str | None:
    """``wav``, ``flac``, ``mp3`` or ``ogg`` from the first bytes, else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def _check_format(data: bytes, source: str) -> str:
    if not data:
        raise TmoGraphError(f"{source} is empty (0 bytes)", "record the clip again")
    fmt = sniff_format(data)
    if fmt is not None:
        return fmt
    other = next((name for magic, name in _OTHER.items() if magic in data[:12]), None)
    if other is not None:
        raise TmoGraphError(f"{source} is {other} audio, which is not supported", CONVERT)
    raise TmoGraphError(f"{source} is not audio ({SUPPORTED})", f"send a clip in {SUPPORTED}")


def _miniaudio() -> Any:
    try:
        import miniaudio
    except ImportError:  # pragma: no cover - a dependency of the `local` extra
        raise TmoGraphError(
            "audio needs the miniaudio package", 'pip install "tmo-graph[local]"'
        ) from None
    return miniaudio


def decode(data: bytes, source: str = "the clip", max_seconds: float | None = None) -> np.ndarray:
    """Mono 16 kHz int16 samples of an encoded clip.

    Raises :class:`TmoGraphError` for bytes that are no supported audio, hold no sound, or
    (with ``max_seconds``) last longer: the length is read from the header before decoding,
    so an hour-long file is refused without decoding it."""
    import numpy as np

    fmt = _check_format(data, source)
    miniaudio = _miniaudio()
    damaged = TmoGraphError(
        f"{source} cannot be decoded (a damaged file, or a codec such as Opus inside Ogg)",
        f"re-encode it as {SUPPORTED}",
    )
    if max_seconds is not None:
        info = {
            "wav": miniaudio.wav_get_info,
            "flac": miniaudio.flac_get_info,
            "mp3": miniaudio.mp3_get_info,
            "ogg": miniaudio.vorbis_get_info,
        }[fmt]
        try:
            seconds = float(info(data).duration)
        except miniaudio.MiniaudioError:
            raise damaged from None
        _check_length(seconds, source, max_seconds)
    try:
        sound = miniaudio.decode(
            data,
            output_format=miniaudio.SampleFormat.SIGNED16,
            nchannels=1,
            sample_rate=SAMPLE_RATE,
        )
    except miniaudio.MiniaudioError:
        raise damaged from None
    samples = np.frombuffer(sound.samples, dtype=np.int16)
    if samples.size == 0:
        raise TmoGraphError(f"{source} holds no sound (0 samples)", "record the clip again")
    return samples


def _check_length(seconds: float, source: str, max_seconds: float) -> None:
    if seconds > max_seconds:
        raise TmoGraphError(
            f"{source} is {seconds:.1f} s long, over the limit of {max_seconds:g} s "
            "(audio.max_clip_seconds)",
            "send a shorter clip, or raise audio.max_clip_seconds in the config",
        )


@dataclass(frozen=True)
class AudioRef:
    """Where a clip is (absolute path), its content hash, length and format."""

    ref: str
    sha256: str
    seconds: float
    format: str


@lru_cache(maxsize=512)
def _file_info(
    path: str, mtime_ns: int, max_seconds: float
) -> tuple[str, float, str]:  # mtime: a changed file is read again
    data = Path(path).read_bytes()
    fmt = _check_format(data, f"audio file {path}")
    seconds = decode(data, f"audio file {path}", max_seconds).size / SAMPLE_RATE
    return hashlib.sha256(data).hexdigest(), seconds, fmt


def _path_of(source: str) -> Path:
    return Path(source.removeprefix("file://")).expanduser().resolve()


def audio_bytes(source: str) -> bytes:
    """The encoded bytes of a ``data:`` URL or bare base64 text."""
    payload = source
    if source.startswith("data:"):
        head, _, payload = source.partition(",")
        if not head.endswith(";base64") or not payload:
            raise TmoGraphError(
                "an inline clip is not a base64 data URL", "send data:audio/wav;base64,<data>"
            )
    try:
        return base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise TmoGraphError("an inline clip has invalid base64", "re-encode the clip") from None


def is_inline(source: str) -> bool:
    """A ``data:`` URL (bytes in the message) rather than a file."""
    return source.startswith("data:")


def check_audio(source: str, max_seconds: float) -> AudioRef | None:
    """Check a clip without storing it: a file must be readable audio of at most
    ``max_seconds``, a data URL must decode to such audio. Returns the file's reference
    (None for a data URL, which is stored only when the graph receives it, and for a
    thread's media URL, which the graph resolves for its own thread only)."""
    if not isinstance(source, str) or not source.strip():
        raise TmoGraphError("an audio clip is empty", "give a file path or a data URL")
    source = source.strip()
    if source.startswith(("http://", "https://")):
        raise TmoGraphError(
            f"audio clip {source[:60]} is a URL; clips are not fetched",
            "download it and give the file, or send it as base64",
        )
    if is_inline(source):
        decode(audio_bytes(source), "an inline clip", max_seconds)
        return None
    if parse_media_url(source) is not None:  # a thread's stored clip: the graph resolves it
        return None
    path = _path_of(source)
    if not path.is_file():
        raise TmoGraphError(f"audio file {path} does not exist", "check the path of the clip")
    sha, seconds, fmt = _file_info(str(path), path.stat().st_mtime_ns, max_seconds)
    return AudioRef(str(path), sha, seconds, fmt)


def store_audio_bytes(data: bytes, folder: Path, max_seconds: float) -> AudioRef:
    """Store encoded clip bytes once in ``folder`` (named by their hash); checked first."""
    fmt = _check_format(data, "an inline clip")
    seconds = decode(data, "an inline clip", max_seconds).size / SAMPLE_RATE
    path, digest = store_once(data, folder, fmt)
    return AudioRef(str(path), digest, seconds, fmt)


def store_audio(
    source: str, folder: Path, max_seconds: float, thread_id: str | None = None
) -> AudioRef:
    """The reference for a clip given as a path, ``file://`` URL, data URL (stored) or the
    media URL of ``thread_id`` (the run's thread) for a clip stored before."""
    source = source.strip() if isinstance(source, str) else source
    if isinstance(source, str):
        source = resolve_source(source, folder, thread_id)
    if isinstance(source, str) and is_inline(source):
        return store_audio_bytes(audio_bytes(source), folder, max_seconds)
    ref = check_audio(source, max_seconds)
    assert ref is not None
    return ref


def mime_type(fmt: str) -> str:
    return _MIME.get(fmt, "audio/wav")


def samples_of(ref: str) -> np.ndarray:
    """Mono 16 kHz int16 samples of the stored clip at ``ref``."""
    path = Path(ref)
    if not path.is_file():
        raise TmoGraphError(f"audio file {path} is gone", "keep the dialogue's clips while it runs")
    return decode(path.read_bytes(), f"audio file {path}")


@dataclass(frozen=True)
class CloudAudio:
    """What a cloud call sends for one clip: base64 WAV, its length and size as sent."""

    data: str  # base64 of a mono 16 kHz 16-bit WAV
    seconds: float
    sent_bytes: int
    trimmed: bool  # cut to the configured length


def wav_bytes(samples: np.ndarray) -> bytes:
    """A mono 16 kHz 16-bit WAV file of ``samples``."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


def cloud_audio(ref: str, max_seconds: float) -> CloudAudio:
    """The clip at ``ref`` as the cloud gets it: mono 16 kHz WAV of at most ``max_seconds``."""
    if not max_seconds > 0:
        raise TmoGraphError(f"max_seconds must be > 0, got {max_seconds}", "use e.g. 30")
    path = Path(ref)
    if not path.is_file():
        raise TmoGraphError(f"audio file {path} is gone", "keep the dialogue's clips while it runs")
    return _encoded(str(path), path.stat().st_mtime_ns, max_seconds)


@lru_cache(maxsize=8)  # a few clips: each is up to about 1 MB of base64 at 30 s
def _encoded(path: str, mtime_ns: int, max_seconds: float) -> CloudAudio:
    samples = samples_of(path)
    most = int(max_seconds * SAMPLE_RATE)
    trimmed = samples.size > most
    samples = samples[:most]
    data = wav_bytes(samples)
    return CloudAudio(
        base64.b64encode(data).decode("ascii"), samples.size / SAMPLE_RATE, len(data), trimmed
    )


# ---- transcripts: made once per clip content and recogniser --------------------------------

_TRANSCRIPTS: OrderedDict[tuple[str, str], str] = OrderedDict()
_TRANSCRIPTS_LOCK = threading.Lock()
_MAX_TRANSCRIPTS = 1024


def transcript(ref: AudioRef, recogniser: str, transcribe: Callable[[np.ndarray], str]) -> str:
    """The words of the clip, from ``transcribe`` (a recogniser named ``recogniser``) once
    per clip content; later calls for the same content come from the cache."""
    key = (recogniser, ref.sha256)
    with _TRANSCRIPTS_LOCK:
        if key in _TRANSCRIPTS:
            _TRANSCRIPTS.move_to_end(key)
            return _TRANSCRIPTS[key]
    text = " ".join(transcribe(samples_of(ref.ref)).split())
    with _TRANSCRIPTS_LOCK:
        _TRANSCRIPTS[key] = text
        while len(_TRANSCRIPTS) > _MAX_TRANSCRIPTS:
            _TRANSCRIPTS.popitem(last=False)
    return text
