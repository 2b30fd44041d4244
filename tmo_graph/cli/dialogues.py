"""Scripted dialogues from JSONL: one dialogue per line.

```json
{"id": "kitchen-1", "user_id": "alice",
 "views": {"overhead": {"image": "images/overhead.png", "description": "camera above the stove"}},
 "context": {"policy": "rules", "latency_budget_s": 90},
 "turns": ["Turn on the lights.", {"text": "What fruit is this?", "images": ["images/fruit.png"]},
           {"text": "My PIN is 4711, remind me later.", "private": true}]}
```

Audio: a view may be a named audio source, ``"mic": {"audio": "clips/bench.wav",
"description": "microphone at the workbench"}``, and a turn may carry voice notes,
``{"text": "What is that noise?", "audio": ["clips/note.ogg"]}`` (WAV, FLAC, MP3 or OGG
Vorbis; a turn with a voice note may leave ``text`` out).

A turn marked ``"private": true`` (a JSON boolean) is answered on the device and never sent
to the cloud, not even as history or recalled memory later (:mod:`tmo_graph.guards.privacy`).

The format is the pydantic models below (unknown fields are refused). Images stay
references: a relative path is resolved against the JSONL file's folder into an absolute
path, a URL is kept as given; each is checked to be a readable image at load time, but no
pixels are read into the dialogue (the graph makes data URLs only for what it sends).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_type_hints

from langchain_core.messages import HumanMessage
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.media.audio import check_audio
from tmo_graph.media.images import check_image, is_remote
from tmo_graph.media.modalities import WRITTEN_FIELDS, Modality
from tmo_graph.prompts import PRIVATE
from tmo_graph.sections import POLICIES
from tmo_graph.state import ModalitySpec

if TYPE_CHECKING:
    from tmo_graph.settings import Settings

FORMAT_HELP = 'see "Dialogue file (JSONL)" in the README'

# --- the file format ------------------------------------------------------------------------


class _Strict(BaseModel):
    # No silent "3" -> 3 or "yes" -> True in a file; no NaN or infinite numbers either.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


class TurnSpec(_Strict):
    """A user message: its text, inline images (candidates for a cloud call unless the turn
    is private) and whether it is private (answered on the device, never sent)."""

    text: str = ""
    images: list[str] = Field(default_factory=list)
    private: bool = False
    audio: list[str] = Field(default_factory=list)  # voice notes

    @field_validator("images", "audio")
    @classmethod
    def _images_not_blank(cls, value: list[str]) -> list[str]:
        return [_not_blank(v) for v in value]

    @model_validator(mode="after")
    def _words_or_voice(self) -> TurnSpec:
        # A voice note may stand for the words; otherwise the turn needs text.
        if not self.text.strip() and not self.audio:
            raise ValueError("the message is empty")
        return self


def _context_overrides_model() -> type[BaseModel]:
    """Every :class:`Context` field but ``user_id``, optional; ``policy`` one of POLICIES.

    Built from the dataclass so a field added to Context is accepted here without an edit.
    """
    hints = get_type_hints(Context)
    specs: dict[str, Any] = {
        f.name: (hints[f.name] | None, None) for f in fields(Context) if f.name != "user_id"
    }
    specs["policy"] = (Literal[POLICIES] | None, None)
    # Strict like the rest of the file (a budget written as 90 is still a float); a NaN
    # or infinite budget is refused too.
    config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    return create_model("ContextOverrides", __config__=config, **specs)


ContextOverrides = _context_overrides_model()


class DialogueSpec(_Strict):
    """One line of a dialogue file."""

    id: str | int | None = None
    user_id: str = "default"
    views: dict[str, Modality] = Field(default_factory=dict)
    context: ContextOverrides = Field(default_factory=ContextOverrides)  # type: ignore[valid-type]
    turns: list[TurnSpec] = Field(min_length=1)

    _user = field_validator("user_id")(_not_blank)

    @field_validator("turns", mode="before")
    @classmethod
    def _plain_text_turns(cls, value: Any) -> Any:
        # A turn may be written as a bare string: the common case needs no object.
        if isinstance(value, list):
            return [{"text": item} if isinstance(item, str) else item for item in value]
        return value


# --- what the rest of the package uses ------------------------------------------------------


@dataclass
class Turn:
    text: str
    images: list[str] = field(default_factory=list)  # absolute paths or URLs, never pixels
    private: bool = False  # answered on the device; never in a cloud request
    audio: list[str] = field(default_factory=list)  # voice notes: absolute paths, never samples

    def content(self) -> str | list[dict[str, Any]]:
        """The human message content: plain text, or text plus ``image_url`` parts and
        LangChain ``audio`` blocks (a clip's path as its url; the graph stores it)."""
        if not self.images and not self.audio:
            return self.text
        text = [{"type": "text", "text": self.text}] if self.text.strip() else []
        return [
            *text,
            *({"type": "image_url", "image_url": {"url": url}} for url in self.images),
            *({"type": "audio", "url": path} for path in self.audio),
        ]


@dataclass
class Dialogue:
    id: str
    turns: list[Turn]
    user_id: str = "default"
    views: dict[str, ModalitySpec] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)  # Context fields the file sets

    def turn_inputs(self) -> Iterator[dict[str, Any]]:
        """The graph input of each turn; the views go with the first one."""
        for i, turn in enumerate(self.turns):
            message = HumanMessage(
                content=turn.content(),  # type: ignore[arg-type]
                additional_kwargs={PRIVATE: True} if turn.private else {},
            )
            state_in: dict[str, Any] = {"messages": [message]}
            if i == 0 and self.views:
                state_in["views"] = self.views
            yield state_in


def dialogue_context(settings: Settings, dialogue: Dialogue, policy: str | None = None) -> Context:
    """The dialogue's run settings: ``policy`` (the CLI's ``--policy``) if given, else the
    dialogue's own ``context``, else the config's ``routing`` defaults."""
    overrides = {**dialogue.context, "user_id": dialogue.user_id}
    if policy is not None:  # None means "not given", never "fall back to the config"
        overrides["policy"] = policy
    try:
        return Context.from_settings(settings, **overrides)
    except TmoGraphError as error:
        raise TmoGraphError(f"dialogue {dialogue.id}: {error.problem}", error.fix) from None


CHAT_ATTACHMENTS = {"/image": "an image", "/audio": "a voice note"}


def chat_message(line: str, base: Path) -> str | list[dict[str, Any]]:
    """A line typed in ``tmo-graph chat`` as a message's content: plain text, or
    ``/image PATH question`` / ``/audio PATH question`` with the file attached (a path with
    spaces in quotes; relative to ``base``; the question may be empty for a voice note).

    Raises :class:`TmoGraphError` for an unknown command, a missing path or a bad file.
    """
    text = line.strip()
    if not text.startswith("/"):
        return text
    import shlex

    command, _, rest = text.partition(" ")
    if command not in CHAT_ATTACHMENTS:
        raise TmoGraphError(
            f"unknown command {command!r}",
            "type a question, /image PATH question, /audio PATH question or /quit",
        )
    try:
        words = shlex.split(rest)
    except ValueError as error:
        raise TmoGraphError(f"{command}: {error}", "close the quotes around the path") from None
    if not words:
        raise TmoGraphError(
            f"{command} needs the path of {CHAT_ATTACHMENTS[command]}",
            f"type {command} PATH and your question",
        )
    path, question = words[0], " ".join(words[1:])
    if command == "/image":
        if not question:
            raise TmoGraphError("/image needs a question after the path", "ask about the image")
        return Turn(question, images=[resolve_image(path, base)]).content()
    clip = str((base / Path(path).expanduser()).resolve())
    check_audio(clip, math.inf)  # its length is checked by the graph (audio.max_clip_seconds)
    return Turn(question, audio=[clip]).content()


def resolve_image(image: str, base: Path) -> str:
    """A URL as given, else the absolute path (relative to ``base``); checked to be an image."""
    ref = (
        image
        if is_remote(image) or image.startswith("data:")
        else str((base / Path(image).expanduser()).resolve())
    )
    check_image(ref)
    return ref


def cli_views(images: dict[str, str], captions: dict[str, str]) -> dict[str, ModalitySpec]:
    """Views given on the command line (``--view NAME=PATH``, ``--caption NAME=TEXT``)."""
    unknown = set(captions) - set(images)
    if unknown:
        raise TmoGraphError(
            f"--caption names unknown view(s) {sorted(unknown)}",
            f"caption only views given with --view ({', '.join(images) or 'none'})",
        )
    views: dict[str, ModalitySpec] = {}
    for name, path in images.items():
        view = ModalitySpec(description=captions.get(name, ""))
        if Path(path).suffix.lower().lstrip(".") in AUDIO_SUFFIXES:  # an audio source
            view["audio"] = _checked_clip(path, Path.cwd(), "command line", f"--view {name}")
        else:
            view["image"] = resolve_image(path, Path.cwd())
        views[name] = view
    return views


# File endings taken as audio sources by ``--view NAME=PATH``.
AUDIO_SUFFIXES = ("wav", "flac", "mp3", "ogg", "oga")


def parse_dialogue(raw: Any, base: Path, where: str) -> Dialogue:
    """One dialogue from its JSON object; ``where`` (e.g. ``file.jsonl:3``) names it in errors."""
    try:
        spec = DialogueSpec.model_validate(raw)
    except ValidationError as exc:
        raise _schema_error(exc.errors()[0], where) from None
    turns = []
    for i, turn in enumerate(spec.turns):
        images = [
            _checked(p, base, where, f"turns[{i}].images[{j}]") for j, p in enumerate(turn.images)
        ]
        clips = [
            _checked_clip(p, base, where, f"turns[{i}].audio[{j}]")
            for j, p in enumerate(turn.audio)
        ]
        turns.append(Turn(text=turn.text, images=images, private=turn.private, audio=clips))
    views: dict[str, ModalitySpec] = {}
    for name, entry in spec.views.items():
        if entry.sha256 is not None:  # the graph sets it when it stores the file
            raise TmoGraphError(
                f"{where}: unknown field `views.{name}.sha256`", f"use {_ALLOWED['views']}"
            )
        view = ModalitySpec(description=entry.description, private=entry.private)
        if entry.image is not None:
            view["image"] = _checked(entry.image, base, where, f"views.{name}.image")
        if entry.audio is not None:
            view["audio"] = _checked_clip(entry.audio, base, where, f"views.{name}.audio")
        views[name] = view
    return Dialogue(
        id=where if spec.id is None else str(spec.id),
        turns=turns,
        user_id=spec.user_id,
        views=views,
        context=cast(BaseModel, spec.context).model_dump(exclude_none=True),
    )


def load_dialogues(path: str | Path) -> list[Dialogue]:
    """Every dialogue of a JSONL file, checked (format, context values, images)."""
    path = Path(path)
    if not path.is_file():
        raise TmoGraphError(f"dialogue file {path} does not exist", "pass a JSONL file")
    dialogues = []
    first_line: dict[str, int] = {}  # dialogue id -> the line that used it first
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TmoGraphError(
                f"{path}:{number} is not valid JSON ({exc.msg})", "one JSON object per line"
            ) from None
        dialogue = parse_dialogue(raw, path.parent, f"{path.name}:{number}")
        if dialogue.id in first_line:  # one thread per id: the second would wipe the first
            raise TmoGraphError(
                f"{path.name}:{number}: dialogue id {dialogue.id!r} is already used on line "
                f"{first_line[dialogue.id]}",
                "give every dialogue in the file its own id",
            )
        first_line[dialogue.id] = number
        dialogues.append(dialogue)
    if not dialogues:
        raise TmoGraphError(f"{path} holds no dialogue", "add one JSON object per line")
    return dialogues


# --- error messages -------------------------------------------------------------------------

_ALLOWED = {
    "": "id, user_id, views, context, turns",
    "views": ", ".join(WRITTEN_FIELDS),
    "turns": 'text, images, audio, private (or write the turn as a plain string: "...")',
}


def _checked_clip(clip: str, base: Path, where: str, loc: str) -> str:
    """The clip's absolute path (relative to ``base``), checked to be readable audio. Its
    length is checked by the graph against the config's audio.max_clip_seconds."""
    path = clip if clip.startswith("data:") else str((base / Path(clip).expanduser()).resolve())
    try:
        check_audio(path, math.inf)
    except TmoGraphError as error:
        raise TmoGraphError(f"{where}: field `{loc}`: {error.problem}", error.fix) from None
    return path


def _checked(image: str, base: Path, where: str, loc: str) -> str:
    try:
        return resolve_image(image, base)
    except TmoGraphError as error:
        raise TmoGraphError(f"{where}: field `{loc}`: {error.problem}", error.fix) from None


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_error(err: ErrorDetails, where: str) -> TmoGraphError:
    """One readable line from pydantic's first error: the line, the field, the fix."""
    loc = tuple(err["loc"])
    field_name = _dotted(loc) or "(dialogue)"
    kind = err["type"]
    got = err.get("input")
    if kind == "extra_forbidden":
        section = str(loc[0]) if len(loc) > 1 else ""
        if section == "context":
            if loc[-1] == "user_id":
                return TmoGraphError(
                    f"{where}: `context.user_id` is not a context field here",
                    "set the dialogue's owner with the top-level user_id",
                )
            names = ", ".join(sorted(f.name for f in fields(Context) if f.name != "user_id"))
            return TmoGraphError(
                f"{where}: unknown context field `{loc[-1]}`", f"use any of: {names}"
            )
        return TmoGraphError(
            f"{where}: unknown field `{field_name}`", f"use {_ALLOWED.get(section, FORMAT_HELP)}"
        )
    if loc == ("context", "policy") and kind == "literal_error":
        return TmoGraphError(
            f"{where}: unknown policy {got!r} in `context.policy`",
            f"use one of: {', '.join(POLICIES)}",
        )
    if kind == "model_type" and not loc:
        return TmoGraphError(f"{where}: a dialogue must be a JSON object", FORMAT_HELP)
    if loc == ("turns",) and kind in ("too_short", "missing"):
        return TmoGraphError(
            f"{where}: `turns` must be a non-empty list", 'add the user\'s messages: ["...", ...]'
        )
    if len(loc) == 2 and loc[0] == "views" and (err.get("ctx") or {}).get("fix"):
        # A rule of the whole view (an image and a clip, or nothing to show).
        return TmoGraphError(f"{where}: view `{loc[1]}` {err['msg']}", str(err["ctx"]["fix"]))
    if len(loc) == 2 and loc[0] == "views" and kind == "model_type":
        return TmoGraphError(
            f"{where}: field `{field_name}`: a view must be an object (got {got!r})",
            '{"image": "cam.png", "description": "what it shows", "private": false}',
        )
    if len(loc) == 2 and loc[0] == "turns" and kind == "model_type":
        return TmoGraphError(
            f"{where}: field `{field_name}`: a turn must be a string or an object (got {got!r})",
            'write "..." or {"text": "...", "images": ["photo.png"]}',
        )
    if len(loc) == 2 and loc[0] == "turns" and kind == "value_error":  # no text, no voice
        return TmoGraphError(
            f"{where}: field `{field_name}.text`: the message is empty",
            'give each turn text: "...", or a voice note: {"audio": ["note.wav"]}',
        )
    if len(loc) == 3 and loc[0] == "turns" and loc[2] == "text":
        problem = "the message is empty" if kind in ("value_error", "missing") else err["msg"]
        return TmoGraphError(
            f"{where}: field `{field_name}`: {problem.lower()}", 'give each turn text: "..."'
        )
    if loc == ("views",) and kind == "dict_type":
        return TmoGraphError(
            f"{where}: field `views` must be an object of named views, not {_kind_of(got)} "
            f"(got {_short(got)})",
            'write "views": {"overhead": {"image": "cam.png", "description": "what it shows"}}',
        )
    if len(loc) == 3 and loc[0] == "turns" and loc[2] == "images" and kind == "list_type":
        example = json.dumps([got] if isinstance(got, str) else ["photo.png"])
        return TmoGraphError(
            f"{where}: field `{field_name}` must be a list of images, not {_kind_of(got)} "
            f"(got {_short(got)})",
            f'write "images": {example}',
        )
    if kind == "bool_type":
        return TmoGraphError(
            f"{where}: field `{field_name}` must be true or false (got {_short(got)})",
            f'write "{loc[-1]}": true or "{loc[-1]}": false, without quotes around the value',
        )
    if kind in ("float_type", "finite_number"):
        what = "a finite number" if kind == "finite_number" else "a number"
        default = _context_default(loc)
        example = f", e.g. {loc[-1]}: {default}" if default is not None else ""
        return TmoGraphError(
            f"{where}: field `{field_name}` must be {what} (got {_short(got)})",
            f"write {what}{'' if kind == 'finite_number' else ' without quotes'}{example}",
        )
    message = err["msg"].removeprefix("Value error, ")
    return TmoGraphError(
        f"{where}: field `{field_name}`: {message[:1].lower()}{message[1:]} (got {got!r})",
        f"correct that value; {FORMAT_HELP}",
    )


def _kind_of(value: Any) -> str:
    """The JSON name of a value's type: "a list", "a string", ..."""
    names = {list: "a list", str: "a string", dict: "an object", bool: "a boolean"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else "null")


def _short(value: Any) -> str:
    """``repr`` of a value, cut to one short line (a 50-element list stays readable)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _context_default(loc: tuple[int | str, ...]) -> Any:
    """The default of the Context field at ``loc`` (``context.<field>``), else None."""
    if len(loc) == 2 and loc[0] == "context":
        for f in fields(Context):
            if f.name == loc[1]:
                return f.default
    return None
