"""The one schema of a named device modality: a camera view or an audio source.

A dialogue names the device's modalities under ``views`` (the graph input, a dialogue file,
``TMOChatModel(views=...)``; the key keeps its first name). Each is a camera view (``image``:
a file path, an http(s) URL or a ``data:`` URL) or an audio source (``audio``: a clip's path
or data URL), with the words the association scorer compares with the prompt
(``description``) and whether it may leave the device (``private``). :class:`Modality` is
that schema and :func:`check_views` holds a ``views`` mapping to it, whoever sent it.

The state stores each modality as the mapping the caller gave
(:class:`tmo_graph.state.ModalitySpec`, the same fields), with its file replaced by a
stored reference and its content hash (``sha256``) once the graph has read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from tmo_graph.errors import TmoGraphError
from tmo_graph.state import ModalitySpec

# The fields a caller writes (``sha256`` is the graph's to set).
WRITTEN_FIELDS = ("image", "audio", "description", "private")
VIEWS_EXAMPLE = "{'views': {'overhead': {'image': PATH, 'description': TEXT, 'private': False}}}"
_BOTH_FIX = "make them two views, e.g. 'bench_cam' (the image) and 'mic' (the audio clip)"
_EMPTY_FIX = "give each view {'image': PATH, 'description': TEXT} (or 'audio': CLIP)"


class Modality(BaseModel):
    """A named device modality: a camera view (``image``) or an audio source (``audio``).

    Strict: no "yes" for True, no unknown field (a misspelt one would be dropped silently).
    A modality has an image, an audio clip or at least a description, never both files.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    image: str | None = None
    audio: str | None = None
    description: str = ""
    private: bool = False  # never leaves the device: not even scored for a cloud call
    sha256: str | None = None  # the stored file's content hash, set by the graph

    @field_validator("image", "audio")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Modality:
        # Custom errors carry their fix, so every surface words them the same.
        if self.image and self.audio:
            raise PydanticCustomError(
                "image_and_audio", "has both an image and an audio clip", {"fix": _BOTH_FIX}
            )
        if not (self.image or self.audio or self.description):
            raise PydanticCustomError(
                "nothing_to_show",
                "has neither an image, an audio clip nor a description",
                {"fix": _EMPTY_FIX},
            )
        return self


def check_views(views: Any) -> dict[str, ModalitySpec]:
    """``views`` held to :class:`Modality`: each view as the caller gave it, or a
    :class:`TmoGraphError` naming the view, what is wrong with it and how to fix it."""
    if not isinstance(views, Mapping):
        raise TmoGraphError(
            f"`views` must be a mapping of view names to views, not {type(views).__name__} "
            f"(got {repr(views)[:60]})",
            f"send {VIEWS_EXAMPLE}",
        )
    out: dict[str, ModalitySpec] = {}
    for name, view in views.items():
        if not isinstance(name, str) or not name.strip():
            raise TmoGraphError(
                f"view name {name!r} is not a name", "name each view, e.g. 'overhead'"
            )
        if not isinstance(view, Mapping):
            raise TmoGraphError(
                f"view {name!r} is a {type(view).__name__}, not a view spec (got {view!r:.60})",
                f"send {VIEWS_EXAMPLE}",
            )
        try:
            Modality.model_validate(dict(view))
        except ValidationError as exc:
            raise view_error(name, exc.errors()[0]) from None
        out[name] = cast(ModalitySpec, dict(view))  # as given: the state stores no defaults
    return out


def view_error(name: str, err: ErrorDetails) -> TmoGraphError:
    """One line from pydantic's first error about the view ``name``."""
    fix = (err.get("ctx") or {}).get("fix")
    if fix:  # a rule of the whole view (:meth:`Modality._one_kind`)
        return TmoGraphError(f"view {name!r} {err['msg']}", str(fix))
    field_name = ".".join(str(p) for p in err["loc"])
    got = f"(got {err.get('input')!r:.60})"
    if err["type"] == "extra_forbidden":
        return TmoGraphError(
            f"view {name!r} has an unknown field `{field_name}` {got}",
            f"use {', '.join(WRITTEN_FIELDS)}",
        )
    if err["type"] == "bool_type":
        problem = f"view {name!r}: field `{field_name}` must be True or False"
    else:
        message = err["msg"].removeprefix("Value error, ")
        problem = f"view {name!r}: field `{field_name}`: {message[:1].lower()}{message[1:]}"
    return TmoGraphError(f"{problem} {got}", f"send {VIEWS_EXAMPLE}")
