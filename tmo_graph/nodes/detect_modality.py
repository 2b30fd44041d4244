"""detect_modality: this turn's text, images and audio, the task category, and association.

Audio: named audio sources (a view with ``audio`` instead of ``image``) and
voice notes in the message (LangChain ``audio`` blocks, OpenAI ``input_audio`` parts) are
stored by reference like images and transcribed once per clip on the device. A voice note's
transcript is kept in its content block, so the prompt (task classifier, association, local
model) reads it; a source's transcript joins its description for the association score.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, ValidationError

from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.media.audio import AudioRef, audio_bytes, mime_type, store_audio, store_audio_bytes
from tmo_graph.media.audio import transcript as clip_transcript
from tmo_graph.media.images import store_image
from tmo_graph.models.speech import recogniser_for
from tmo_graph.prompts import AUDIO_BLOCKS, TRANSCRIPT_KEY
from tmo_graph.sections import AudioSettings
from tmo_graph.services import Services
from tmo_graph.state import Candidate, State, ViewSpec
from tmo_graph.turn import earlier_prompts, prompt_text, run_context


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
        return f"data:{block.get('mime_type', 'image/png')};base64,{data}"
    return None


def inline_images(message: HumanMessage, folder: Path) -> tuple[list[str], HumanMessage | None]:
    """The message's images as references, and the message rewritten to hold references
    instead of pixels (None when it holds none)."""
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
        ref = store_image(source, folder)
        refs.append(ref.ref)
        if source.startswith("data:"):  # pixels in the message: keep a reference instead
            changed = True
            block = {"type": "image", "url": f"file://{ref.ref}", "id": ref.sha256}
        content.append(block)
    rewritten = message.model_copy(update={"content": content}) if changed else None
    return refs, rewritten


def view_caption(name: str, view: ViewSpec) -> str:
    return view.get("description") or f"camera view {name.replace('_', ' ')}"


# ---- audio ------------------------------------------------------------------------

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


def heard(ref: AudioRef, services: Services) -> str:
    """The clip's device transcript ("" without a recogniser), made once per clip."""
    recogniser = services.recogniser or recogniser_for(services.settings.audio)
    if recogniser is None:
        return ""
    return clip_transcript(ref, recogniser.name, recogniser.transcribe)


def inline_audio(
    message: HumanMessage, folder: Path, services: Services
) -> tuple[list[tuple[AudioRef, str]], HumanMessage | None]:
    """The message's voice notes as (reference, transcript), and the message rewritten to
    hold each as a stored reference with its transcript (None when nothing changed)."""
    if isinstance(message.content, str):
        return [], None
    cfg: AudioSettings = services.settings.audio
    clips: list[tuple[AudioRef, str]] = []
    content: list[Any] = []
    changed = False
    for block in message.content:
        if not (isinstance(block, dict) and block.get("type") in AUDIO_BLOCKS):
            content.append(block)
            continue
        source = _audio_block_source(block)
        if isinstance(source, bytes):
            ref = store_audio_bytes(source, folder, cfg.max_clip_seconds)
        else:
            ref = store_audio(source, folder, cfg.max_clip_seconds)
        given = block.get("extras")
        extras: dict[str, Any] = given if isinstance(given, dict) else {}
        words = extras.get(TRANSCRIPT_KEY) if block.get("id") == ref.sha256 else None
        if not isinstance(words, str):
            words = heard(ref, services)
        clips.append((ref, words))
        stored = {
            "type": "audio",
            "url": f"file://{ref.ref}",
            "id": ref.sha256,
            "mime_type": mime_type(ref.format),
            "extras": {**extras, TRANSCRIPT_KEY: words},
        }
        changed = changed or stored != block
        content.append(stored)
    rewritten = message.model_copy(update={"content": content}) if changed else None
    return clips, rewritten


def audio_caption(name: str, view: ViewSpec, words: str) -> str:
    """What the association scorer reads for an audio source: its description and words."""
    about = view.get("description") or f"audio source {name.replace('_', ' ')}"
    return f"{about}. Heard: {words}" if words else about


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


def view_scores(
    prompt: str,
    earlier: Sequence[str],
    captions: Mapping[str, str],
    services: Services,
    weight: float,
) -> dict[str, float]:
    """Each view's association with this turn, dialogue context included.

    The rule: a view scores its association with the prompt; when the prompt refers back
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


class _ViewInput(BaseModel):
    """A view as a caller may send it (:class:`ViewSpec`), checked: no "yes" for True."""

    model_config = ConfigDict(extra="forbid", strict=True)

    image: str | None = None
    sha256: str | None = None
    description: str = ""
    private: bool = False
    audio: str | None = None


_VIEW_EXAMPLE = "{'views': {'overhead': {'image': PATH, 'description': TEXT, 'private': False}}}"


def check_views(views: Any) -> None:
    """Refuse graph input ``views`` that are not a mapping of names to :class:`ViewSpec`."""
    if not isinstance(views, Mapping):
        raise TmoGraphError(
            f"`views` must be a mapping of view names to views, not {type(views).__name__} "
            f"(got {repr(views)[:60]})",
            f"send {_VIEW_EXAMPLE}",
        )
    for name, view in views.items():
        if not isinstance(view, Mapping):
            raise TmoGraphError(
                f"view {name!r} must be a mapping, not {type(view).__name__} (got {view!r:.60})",
                f"send {_VIEW_EXAMPLE}",
            )
        try:
            _ViewInput.model_validate(dict(view))
        except ValidationError as exc:
            err = exc.errors()[0]
            field_name = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problem = f"view {name!r} has an unknown field `{field_name}`"
            elif err["type"] == "bool_type":
                problem = f"view {name!r}: field `{field_name}` must be True or False"
            else:
                problem = f"view {name!r}: field `{field_name}`: {err['msg'].lower()}"
            raise TmoGraphError(
                f"{problem} (got {err.get('input')!r:.60})", f"send {_VIEW_EXAMPLE}"
            ) from None


def view_references(
    views: Mapping[str, ViewSpec], folder: Path, audio: AudioSettings | None = None
) -> dict[str, ViewSpec] | None:
    """The views with each image or clip as a checked reference and hash (None if all
    already are)."""
    check_views(views)
    out: dict[str, ViewSpec] = {}
    changed = False
    for name, view in views.items():
        if not (view.get("image") or view.get("audio") or view.get("description")):
            raise TmoGraphError(
                f"view {name!r} has neither an image, an audio clip nor a description",
                "give each view {'image': PATH, 'description': TEXT} (or 'audio': CLIP)",
            )
        if view.get("image") and view.get("audio"):
            raise TmoGraphError(
                f"view {name!r} has both an image and an audio clip",
                "make them two views, e.g. 'bench_cam' (image) and 'mic' (audio)",
            )
        view = ViewSpec(**view)
        if view.get("image") and not view.get("sha256"):
            ref = store_image(str(view["image"]), folder)
            view["image"], view["sha256"] = ref.ref, ref.sha256
            changed = True
        if view.get("audio") and not view.get("sha256"):
            most = (audio or AudioSettings()).max_clip_seconds
            clip = store_audio(str(view["audio"]), folder, most)
            view["audio"], view["sha256"] = clip.ref, clip.sha256
            changed = True
        out[name] = view
    return out if changed else None


def detect_modality(state: State, runtime: Runtime[Context], services: Services) -> dict[str, Any]:
    if not state.messages or not isinstance(state.messages[-1], HumanMessage):
        raise TmoGraphError(
            "a turn must end with a human message", "send {'messages': [('user', 'your question')]}"
        )
    message = state.messages[-1]
    prompt = prompt_text(message)
    if not prompt:
        raise TmoGraphError("the message has no text", "ask a question in words")
    ctx = run_context(runtime, services.default_context)
    update: dict[str, Any] = {}

    assert services.image_dir is not None  # set by Services
    audio_cfg = services.settings.audio
    # Clips are stored beside inline images (one folder of media by content hash).
    views = view_references(state.views, services.image_dir, audio_cfg)
    if views is not None:
        update["views"] = views
    views = views or state.views
    began = services.clock()  # the device's time reading clips counts in the turn's latency
    clips, with_clips = inline_audio(message, services.image_dir, services)
    reading_s = services.clock() - began
    message = with_clips or message
    inline, rewritten = inline_images(message, services.image_dir)
    rewritten = rewritten or with_clips
    if rewritten is not None:
        update["messages"] = [rewritten]
        prompt = prompt_text(rewritten)  # the voice notes' transcripts are part of it
    # Fresh each turn: a turn that failed half-way leaves no warnings for the next one.
    update["warnings"] = []
    cap = services.settings.cloud.max_images_per_call
    if len(inline) > cap:
        update["warnings"] = [
            f"{len(inline) - cap} of the message's {len(inline)} images were dropped: at most "
            f"{cap} go to the cloud with one message (cloud.max_images_per_call)"
        ]
        inline = inline[:cap]
    clip_cap = audio_cfg.max_clips_per_call
    if len(clips) > clip_cap:
        update["warnings"] = [
            *update["warnings"],
            f"{len(clips) - clip_cap} of the message's {len(clips)} voice notes go to the cloud "
            f"only as transcripts: at most {clip_cap} clips go with one message "
            "(audio.max_clips_per_call)",
        ]

    # Every named audio source is transcribed (a private one too: the local model reads it).
    sources = {n: v for n, v in views.items() if v.get("audio")}
    began_sources = services.clock()
    source_refs = {
        n: store_audio(str(v["audio"]), services.image_dir, audio_cfg.max_clip_seconds)
        for n, v in sources.items()
    }
    words = {n: heard(ref, services) for n, ref in source_refs.items()}
    reading_s += services.clock() - began_sources
    notes = {f"voice_note_{i + 1}": clip for i, clip in enumerate(clips)}
    transcripts = {**{n: w for n, (_, w) in notes.items()}, **words}

    # Private views are never candidates: they cannot be sent, so they are not even scored.
    shareable = {n: v for n, v in views.items() if not v.get("private", False)}
    captions = {
        name: (
            audio_caption(name, view, words[name]) if name in sources else view_caption(name, view)
        )
        for name, view in shareable.items()
    }
    scores = view_scores(
        prompt,
        # A message with its own image or voice note is about it ("what fruit is this?").
        [] if inline or clips else earlier_prompts(state.messages, CONTEXT_MESSAGES),
        captions,
        services,
        ctx.context_weight,
    )
    candidates = [
        Candidate(name=f"image_{i + 1}", kind="inline", score=1.0, image=ref)
        for i, ref in enumerate(inline)
    ]
    # A voice note is the message's own: a candidate like an inline image (over the cap,
    # it is no candidate and goes as its transcript only).
    candidates += [
        Candidate(
            name=name,
            kind="inline",
            score=1.0,
            image=None,
            audio=ref.ref,
            seconds=ref.seconds,
            transcript=text,
        )
        for name, (ref, text) in list(notes.items())[:clip_cap]
    ]
    for name, view in shareable.items():
        candidate = Candidate(
            name=name, kind="device", score=scores[name], image=view.get("image") or None
        )
        if name in sources:
            ref = source_refs[name]
            candidate["audio"], candidate["seconds"] = ref.ref, ref.seconds
            candidate["transcript"] = words[name]
        candidates.append(candidate)
    return {
        **update,
        "prompt": prompt,
        "task": services.tasks.classify_vector(services.embed(prompt)),
        "candidates": candidates,
        "transcripts": transcripts,
        "transcription_s": reading_s if transcripts else 0.0,
    }
