"""Speech recognisers on the device: a clip's words, offline.

- ``pocketsphinx`` (default): its English acoustic model and dictionary ship inside the
  wheel, so it works with nothing downloaded. Its accuracy is low: on espeak-ng speech
  "turn the oven off before you open the door" came out as "sunday off before you all".
  The transcript is a hint for routing and for the small local model, not a record of what
  was said; a clip the cloud gets as audio is heard by the cloud model itself.
- ``faster-whisper``: far better, where the user already has a CTranslate2 Whisper model
  folder (``audio.model_dir``). Imported only when configured; never downloaded.

A recogniser takes mono 16 kHz int16 samples (:mod:`tmo_graph.media.audio` decodes) and returns
text. Recognisers are built once per process and settings (:func:`recogniser_for`); their
model is loaded by :meth:`Recogniser.load`, which the graph calls before it times a turn's
clips, so the one-off loading is never charged to a dialogue's latency budget.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tmo_graph.errors import TmoGraphError
from tmo_graph.sections import AudioSettings

if TYPE_CHECKING:
    import numpy as np


class Recogniser(Protocol):
    """Speech to text on the device."""

    name: str

    def load(self) -> None:
        """Load the model now, if not yet (once per process): no timed reading pays for it."""
        ...

    def transcribe(self, samples: np.ndarray) -> str:
        """The words in ``samples`` (mono 16 kHz int16), "" when none were recognised."""
        ...


class PocketSphinxRecogniser:
    """CMU PocketSphinx with the English model its wheel carries (low accuracy)."""

    name = "pocketsphinx"

    def __init__(self) -> None:
        self._decoder: Any = None
        self._lock = threading.Lock()  # one decoder: one utterance at a time

    def load(self) -> None:
        """Build the decoder (its English model: about a second) unless it is built."""
        with self._lock:
            if self._decoder is not None:
                return
            try:
                from pocketsphinx import Decoder
            except ImportError:
                raise TmoGraphError(
                    "audio.recogniser is pocketsphinx, but it is not installed",
                    'pip install "tmo-graph[local]" (or pocketsphinx), or set '
                    "audio.recogniser: none",
                ) from None
            self._decoder = Decoder(samprate=16000, loglevel="FATAL")

    def transcribe(self, samples: np.ndarray) -> str:
        self.load()
        with self._lock:
            decoder = self._decoder
            decoder.start_utt()
            decoder.process_raw(samples.astype("<i2").tobytes(), full_utt=True)
            decoder.end_utt()
            hyp = decoder.hyp()
            return str(hyp.hypstr) if hyp is not None else ""


class FasterWhisperRecogniser:
    """faster-whisper on the CPU from a model folder the user has (int8 weights)."""

    name = "faster-whisper"

    def __init__(self, folder: Path, language: str = "en") -> None:
        folder = Path(folder).expanduser()
        if not (folder / "model.bin").is_file():
            raise TmoGraphError(
                f"audio.model_dir {folder} is not a faster-whisper model folder (no model.bin)",
                "point audio.model_dir at a CTranslate2 Whisper folder (e.g. one made with "
                "ct2-transformers-converter), or use audio.recogniser: pocketsphinx",
            )
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise TmoGraphError(
                "audio.recogniser is faster-whisper, but the faster-whisper package is not "
                "installed",
                "pip install faster-whisper, or set audio.recogniser: pocketsphinx",
            ) from None
        # A folder path: faster-whisper loads it as is and downloads nothing.
        self._model = WhisperModel(
            str(folder), device="cpu", compute_type="int8", local_files_only=True
        )
        self.language = language
        self._lock = threading.Lock()

    def load(self) -> None:
        """Nothing to do: the model is loaded when the recogniser is built."""

    def transcribe(self, samples: np.ndarray) -> str:
        audio = samples.astype("float32") / 32768.0
        with self._lock:
            segments, _ = self._model.transcribe(audio, language=self.language, beam_size=1)
            return " ".join(s.text.strip() for s in segments)


def recogniser_for(settings: AudioSettings) -> Recogniser | None:
    """The configured recogniser (built once per process and settings); None for ``none``."""
    return _built(settings.recogniser, settings.model_dir, settings.language)


@lru_cache(maxsize=4)
def _built(kind: str, model_dir: Path | None, language: str) -> Recogniser | None:
    if kind == "none":
        return None
    if kind == "faster-whisper":
        if model_dir is None:
            raise TmoGraphError(
                "audio.recogniser is faster-whisper but audio.model_dir is not set",
                "set audio.model_dir to your faster-whisper model folder",
            )
        return FasterWhisperRecogniser(model_dir, language)
    return PocketSphinxRecogniser()
