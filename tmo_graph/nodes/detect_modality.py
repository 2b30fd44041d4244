"""detect_modality: this turn's text, images and audio, the task category, and association.

Five steps, one function each: the dialogue's named modalities (``views``) checked and
stored by reference (:func:`stored_modalities`); the message's images
(:func:`inline_images`) and voice notes with their transcripts (:func:`inline_audio`); the
named audio sources' transcripts (:func:`hear_sources`); the task category; and each
shareable modality's association with the prompt (:func:`association_scores`), which makes
the turn's cloud candidates (:func:`candidates`).

Audio: named audio sources (a view with ``audio`` instead of ``image``) and voice notes in
the message (LangChain ``audio`` blocks, OpenAI ``input_audio`` parts) are stored by
reference like images and transcribed once per clip on the device, by the services'
recogniser. A voice note's transcript is kept in its content block, so the prompt (task
classifier, association, local model) reads it; a source's transcript joins its
description for the association score.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage, ToolMessage
from langgraph.config import get_config

from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.media.audio import AudioRef, audio_bytes, mime_type, store_audio, store_audio_bytes
from tmo_graph.media.audio import transcript as clip_transcript
from tmo_graph.media.images import image_preview, store_image
from tmo_graph.media.modalities import check_views
from tmo_graph.media.store import MEDIA_TYPES, media_url
from tmo_graph.models.speech import Recogniser
from tmo_graph.prompts import AUDIO_BLOCKS, TRANSCRIPT_KEY, question_index
from tmo_graph.sections import AudioSettings
from tmo_graph.services import Services
from tmo_graph.state import Candidate, ModalitySpec, State
from tmo_graph.turn import earlier_prompts, prompt_text


def detect_modality(state: State, context: Context, services: Services) -> dict[str, Any]:
    message = _question(state)
    update: dict[str, Any] = {}
    stored = stored_modalities(state.views, services.media_dir, services.settings.audio)
    if stored is not None:
        update["views"] = stored
    views = stored or state.views
    ready_to_hear(message, views, services.recogniser)
    media = message_media(message, services)
    if media.rewritten is not None:
        update["messages"] = [media.rewritten]
    # The voice notes' transcripts are part of the prompt.
    prompt = prompt_text(media.rewritten or message)
    sources = hear_sources(views, services)
    transcripts = {**media.transcripts(), **sources.words}
    # Private views are never candidates: they cannot be sent, so they are not even scored.
    shareable = {n: v for n, v in views.items() if not v.get("private", False)}
    scores = association_scores(
        prompt,
        # A message with its own image or voice note is about it ("what fruit is this?").
        [] if media.images or media.clips else earlier_prompts(state.messages, CONTEXT_MESSAGES),
        modality_captions(shareable, sources.words),
        services,
        context.context_weight,
    )
    reading_s = media.reading_s + sources.reading_s
    return {
        **update,
        "prompt": prompt,
        "task": services.tasks.classify_vector(services.embed(prompt)),
        "candidates": candidates(media, shareable, scores, sources),
        "transcripts": transcripts,
        "transcription_s": reading_s if transcripts else 0.0,
        "warnings": media.warnings,  # fresh each turn: none left from a turn that failed
    }


def ready_to_hear(
    message: HumanMessage, views: Mapping[str, ModalitySpec], recogniser: Recogniser | None
) -> None:
    """Load the recogniser before the turn's clips are timed, when it has any: the one-off
    loading of its model is no part of the device's reading time, which the dialogue's
    latency budget is charged (a turn without clips never loads it)."""
    if recogniser is None:
        return
    notes = not isinstance(message.content, str) and any(
        isinstance(block, dict) and block.get("type") in AUDIO_BLOCKS for block in message.content
    )
    if notes or any(view.get("audio") for view in views.values()):
        recogniser.load()


def _question(state: State) -> HumanMessage:
    """The turn's message: a human one with something to read (words, or a voice note's).
    A turn that carries tool results ends with them; its question is the human message
    before them."""
    last = state.messages[-1] if state.messages else None
    if not isinstance(last, HumanMessage | ToolMessage):
        raise TmoGraphError(
            "a turn must end with a human message (or the results of the tools its answer called)",
            "send {'messages': [('user', 'your question')]}",
        )
    message = state.messages[question_index(state.messages)]
    assert isinstance(message, HumanMessage)
    if not prompt_text(message):
        raise TmoGraphError("the message has no text", "ask a question in words")
    return message


# ---- 1. the dialogue's named modalities ----------------------------------------------------


def stored_modalities(
    views: Mapping[str, ModalitySpec], folder: Path, audio: AudioSettings
) -> dict[str, ModalitySpec] | None:
    """The views, checked, with each image or clip as a stored reference and hash (None if
    all already are)."""
    out: dict[str, ModalitySpec] = {}
    changed = False
    for name, view in check_views(views).items():
        if view.get("image") and not view.get("sha256"):
            ref = store_image(str(view["image"]), folder)
            view["image"], view["sha256"] = ref.ref, ref.sha256
            changed = True
        if view.get("audio") and not view.get("sha256"):
            clip = store_audio(str(view["audio"]), folder, audio.max_clip_seconds)
            view["audio"], view["sha256"] = clip.ref, clip.sha256
            changed = True
        out[name] = view
    return out if changed else None


# ---- 2. the message's images and voice notes -----------------------------------------------


@dataclass
class MessageMedia:
    """The message's images and voice notes, stored by reference."""

    rewritten: HumanMessage | None  # holding references instead of bytes; None: unchanged
    images: list[str]  # stored references, at most cloud.max_images_per_call
    clips: list[tuple[AudioRef, str]]  # each voice note with its transcript
    clip_cap: int  # the voice notes past it go to the cloud as transcripts only
    reading_s: float  # the device's time reading the clips (counts in the turn's latency)
    warnings: list[str] = field(default_factory=list)

    def notes(self) -> dict[str, tuple[AudioRef, str]]:
        """The voice notes by name ("voice_note_1", ...)."""
        return {f"voice_note_{i + 1}": clip for i, clip in enumerate(self.clips)}

    def transcripts(self) -> dict[str, str]:
        return {name: words for name, (_, words) in self.notes().items()}


def message_media(message: HumanMessage, services: Services) -> MessageMedia:
    """The message's voice notes (transcribed) and images as stored references, over the
    per-call caps with a warning each."""
    folder, audio = services.media_dir, services.settings.audio
    thread_id = run_thread()
    began = services.clock()
    clips, with_clips = inline_audio(message, folder, audio, services.recogniser, thread_id)
    reading_s = services.clock() - began
    preview_px = services.settings.threads.image_preview_px
    images, rewritten = inline_images(with_clips or message, folder, thread_id, preview_px)
    media = MessageMedia(
        rewritten=rewritten or with_clips,
        images=images,
        clips=clips,
        clip_cap=audio.max_clips_per_call,
        reading_s=reading_s,
    )
    cap = services.settings.cloud.max_images_per_call
    if len(images) > cap:
        media.warnings.append(
            f"{len(images) - cap} of the message's {len(images)} images were dropped: at most "
            f"{cap} go to the cloud with one message (cloud.max_images_per_call)"
        )
        media.images = images[:cap]
    if len(clips) > media.clip_cap:
        media.warnings.append(
            f"{len(clips) - media.clip_cap} of the message's {len(clips)} voice notes go to "
            f"the cloud only as transcripts: at most {media.clip_cap} clips go with one message "
            "(audio.max_clips_per_call)"
        )
    return media


def _image_block_source(block: dict[str, Any]) -> str | None:
    """The image a content block carries (URL, data URL or stored path), else None."""
    kind = block.get("type")
    if kind == "image_url":
        url = block["image_url"]
        return str(url["url"] if isinstance(url, dict) else url)
    if kind == "image":
        if block.get("url"):
            return str(block["url"])
        data = block.get("base64") or block.get("data")
        if not data:
            raise TmoGraphError(
                "an image block has neither url nor base64 data",
                "send {'type': 'image', 'base64': ..., 'mime_type': 'image/png'}",
            )
        mime = block.get("mime_type") or block.get("mimeType") or "image/png"  # Python, JS
        return f"data:{mime};base64,{data}"
    return None


def run_thread() -> str | None:
    """The run's thread id (None for a run without a thread, or outside a run)."""
    try:
        thread_id = get_config().get("configurable", {}).get("thread_id")
    except RuntimeError:  # called outside a LangGraph run (a unit test of one function)
        return None
    return None if thread_id is None else str(thread_id)


def stored_url(path: str, sha256: str, thread_id: str | None) -> str:
    """What a rewritten message names stored media by: the thread's media URL, which a chat
    UI loads from the server (tmo_graph.media.store), or, in a run without a thread (nothing
    is kept for a UI), the file's ``file://`` URL."""
    return f"file://{path}" if thread_id is None else media_url(thread_id, sha256)


def inline_images(
    message: HumanMessage, folder: Path, thread_id: str | None = None, preview_px: int = 0
) -> tuple[list[str], HumanMessage | None]:
    """The message's images as references, and the message rewritten to hold references
    instead of pixels (None when it holds none); ``thread_id``: the run's thread, whose
    media URLs name the stored images. ``preview_px`` > 0: a thread's message keeps a
    preview that small beside the reference (``mimeType``/``data``: agent-chat-ui draws only
    inline images; the models never read it: they read the stored file)."""
    if isinstance(message.content, str):
        return [], None
    refs: list[str] = []
    content: list[Any] = []
    changed = False
    for block in message.content:
        source = _image_block_source(block) if isinstance(block, dict) else None
        if source is None:
            content.append(block)
            continue
        ref = store_image(source, folder, thread_id)
        refs.append(ref.ref)
        if source.startswith("data:"):  # pixels in the message: keep a reference instead
            changed = True
            block = {
                "type": "image",
                "url": stored_url(ref.ref, ref.sha256, thread_id),
                "id": ref.sha256,
                "mime_type": MEDIA_TYPES.get(Path(ref.ref).suffix[1:], "image/png"),
            }
            if thread_id is not None and preview_px > 0:
                block |= image_preview(ref.ref, preview_px)
        content.append(block)
    rewritten = message.model_copy(update={"content": content}) if changed else None
    return refs, rewritten


_AUDIO_EXAMPLE = "{'type': 'audio', 'base64': ..., 'mime_type': 'audio/wav'}"


def _audio_block_source(block: dict[str, Any]) -> str | bytes:
    """The clip a content block carries: a path or data URL (str), or decoded bytes."""
    if block.get("type") == "input_audio":  # OpenAI: {"input_audio": {"data", "format"}}
        part = block.get("input_audio")
        data = part.get("data") if isinstance(part, dict) else None
        if not isinstance(data, str) or not data:
            raise TmoGraphError(
                "an input_audio part has no base64 `data`",
                "send {'type': 'input_audio', 'input_audio': {'data': BASE64, 'format': 'wav'}}",
            )
        return audio_bytes(data)
    if block.get("file_id"):
        raise TmoGraphError(
            "an audio block names a provider file_id; the device cannot read it",
            f"send the clip itself: {_AUDIO_EXAMPLE}",
        )
    data = block.get("base64") or block.get("data")
    if isinstance(data, str) and data:
        return audio_bytes(data)
    url = block.get("url")
    if isinstance(url, str) and url:
        return url
    raise TmoGraphError(
        "an audio block has neither base64 data nor a url", f"send {_AUDIO_EXAMPLE}"
    )


def inline_audio(
    message: HumanMessage,
    folder: Path,
    audio: AudioSettings,
    recogniser: Recogniser | None,
    thread_id: str | None = None,
) -> tuple[list[tuple[AudioRef, str]], HumanMessage | None]:
    """The message's voice notes as (reference, transcript), and the message rewritten to
    hold each as a stored reference (the thread's media URL) with its transcript (None when
    nothing changed)."""
    if isinstance(message.content, str):
        return [], None
    clips: list[tuple[AudioRef, str]] = []
    content: list[Any] = []
    changed = False
    for block in message.content:
        if not (isinstance(block, dict) and block.get("type") in AUDIO_BLOCKS):
            content.append(block)
            continue
        source = _audio_block_source(block)
        if isinstance(source, bytes):
            ref = store_audio_bytes(source, folder, audio.max_clip_seconds)
        else:
            ref = store_audio(source, folder, audio.max_clip_seconds, thread_id)
        given = block.get("extras")
        extras: dict[str, Any] = given if isinstance(given, dict) else {}
        words = extras.get(TRANSCRIPT_KEY) if block.get("id") == ref.sha256 else None
        if not isinstance(words, str):
            words = heard(ref, recogniser)
        clips.append((ref, words))
        stored = {
            "type": "audio",
            "url": stored_url(ref.ref, ref.sha256, thread_id),
            "id": ref.sha256,
            "mime_type": mime_type(ref.format),
            "extras": {**extras, TRANSCRIPT_KEY: words},
        }
        changed = changed or stored != block
        content.append(stored)
    rewritten = message.model_copy(update={"content": content}) if changed else None
    return clips, rewritten


# ---- 3. the named audio sources ------------------------------------------------------------


def heard(ref: AudioRef, recogniser: Recogniser | None) -> str:
    """The clip's device transcript ("" without a recogniser), made once per clip."""
    if recogniser is None:
        return ""
    return clip_transcript(ref, recogniser.name, recogniser.transcribe)


@dataclass
class HeardSources:
    """The named audio sources' stored clips and transcripts, by name."""

    refs: dict[str, AudioRef]
    words: dict[str, str]
    reading_s: float  # the device's time reading them


def hear_sources(views: Mapping[str, ModalitySpec], services: Services) -> HeardSources:
    """Every named audio source transcribed (a private one too: the local model reads it)."""
    began = services.clock()
    most = services.settings.audio.max_clip_seconds
    refs = {
        name: store_audio(str(view["audio"]), services.media_dir, most)
        for name, view in views.items()
        if view.get("audio")
    }
    words = {name: heard(ref, services.recogniser) for name, ref in refs.items()}
    return HeardSources(refs, words, services.clock() - began)


# ---- 4. association and candidates ---------------------------------------------------------


def camera_caption(name: str, view: ModalitySpec) -> str:
    return view.get("description") or f"camera view {name.replace('_', ' ')}"


def audio_caption(name: str, view: ModalitySpec, words: str) -> str:
    """What the association scorer reads for an audio source: its description and words."""
    about = view.get("description") or f"audio source {name.replace('_', ' ')}"
    return f"{about}. Heard: {words}" if words else about


def modality_captions(
    views: Mapping[str, ModalitySpec], heard_words: Mapping[str, str]
) -> dict[str, str]:
    """What the association scorer compares with the prompt, for each modality."""
    return {
        name: (
            audio_caption(name, view, heard_words[name])
            if name in heard_words
            else camera_caption(name, view)
        )
        for name, view in views.items()
    }


# Earlier user messages a follow-up may draw its views from (the previous one, the one before).
CONTEXT_MESSAGES = 2

# Cues that a prompt leans on the previous turn for what it is about: it opens like a follow-up
# ("and ...", "what about ...") or points back ("the one on the left", "those"). A bare
# pronoun ("it", "them") counts only in a short prompt ("Is it done?"): a longer one usually
# names its own subject ("... a healthy dinner ..., and explain why it is good"). English
# only; "that" / "this" / "there" are left out, fresh questions use them all the time.
_FOLLOW_UP = re.compile(
    r"^\W*(and|also|what about|how about)\b"
    r"|\b(those|these|the one|the ones|that one|this one|the other)\b",
    re.IGNORECASE,
)
_PRONOUN = re.compile(r"\b(it|its|they|them)\b", re.IGNORECASE)
SHORT_PROMPT_WORDS = 6


def refers_back(prompt: str) -> bool:
    """Whether ``prompt`` reads as a follow-up that needs the previous turn to be understood."""
    if _FOLLOW_UP.search(prompt):
        return True
    return len(prompt.split()) <= SHORT_PROMPT_WORDS and _PRONOUN.search(prompt) is not None


def association_scores(
    prompt: str,
    earlier: Sequence[str],
    captions: Mapping[str, str],
    services: Services,
    weight: float,
) -> dict[str, float]:
    """Each modality's association with this turn, dialogue context included.

    The rule: a modality scores its association with the prompt; when the prompt refers back
    (:func:`refers_back`), it scores at least ``weight`` times its association with the
    previous user message, and ``weight**2`` times that with the one before:
    ``score = max(s(prompt), weight * s(earlier[0]), weight**2 * s(earlier[1]))``.
    So "what about the one on the left?" keeps the view the previous question was about,
    a little weaker, while a fresh question is scored on its own words only.
    """
    assert services.association is not None
    scores = services.association.score(services.embed(prompt), captions)
    if weight <= 0 or not captions or not refers_back(prompt):
        return scores
    for k, text in enumerate(earlier, start=1):
        before = services.association.score(services.embed(text), captions)
        scores = {name: max(s, weight**k * before[name]) for name, s in scores.items()}
    return scores


def candidates(
    media: MessageMedia,
    shareable: Mapping[str, ModalitySpec],
    scores: Mapping[str, float],
    sources: HeardSources,
) -> list[Candidate]:
    """What a cloud call may send this turn: the message's images and voice notes (its own,
    score 1; over the clip cap a note is no candidate and goes as its transcript only), then
    the shareable named modalities with their association scores."""
    out = [
        Candidate(name=f"image_{i + 1}", kind="inline", score=1.0, image=ref)
        for i, ref in enumerate(media.images)
    ]
    out += [
        Candidate(
            name=name,
            kind="inline",
            score=1.0,
            image=None,
            audio=ref.ref,
            seconds=ref.seconds,
            transcript=text,
        )
        for name, (ref, text) in list(media.notes().items())[: media.clip_cap]
    ]
    for name, view in shareable.items():
        candidate = Candidate(
            name=name, kind="device", score=scores[name], image=view.get("image") or None
        )
        if name in sources.refs:
            ref = sources.refs[name]
            candidate["audio"], candidate["seconds"] = ref.ref, ref.seconds
            candidate["transcript"] = sources.words[name]
        out.append(candidate)
    return out
