"""Images as data URLs: validated once, sent only when a route chooses them."""

from __future__ import annotations

import base64
import io
from functools import lru_cache
from pathlib import Path

from tmo_graph.errors import TmoGraphError


def is_url(value: str) -> bool:
    return value.startswith(("data:", "http://", "https://"))


def to_data_url(image: str) -> str:
    """A ``data:`` URL for an image file path; URLs pass through (data URLs are checked)."""
    if image.startswith(("http://", "https://")):
        return image
    if image.startswith("data:"):
        _check_data_url(image)
        return image
    path = Path(image).expanduser()
    return _file_data_url(str(path.resolve()), path.stat().st_mtime if path.exists() else 0.0)


@lru_cache(maxsize=256)
def _file_data_url(path: str, mtime: float) -> str:  # mtime: a changed file is re-read
    file = Path(path)
    if not file.is_file():
        raise TmoGraphError(f"image file {path} does not exist", "check the path of the view")
    data = file.read_bytes()
    mime = _image_mime(data, source=path)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


@lru_cache(maxsize=64)  # views arrive as the same data URLs every turn: check each once
def _check_data_url(url: str) -> None:
    head, _, payload = url.partition(",")
    if not head.endswith(";base64") or not payload:
        raise TmoGraphError(
            "an inline image is not a base64 data URL", "send data:image/...;base64,<data>"
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except ValueError:
        raise TmoGraphError("an inline image has invalid base64", "re-encode the image") from None
    _image_mime(data, source="inline image")


def _image_mime(data: bytes, source: str) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
            fmt = (img.format or "").lower()
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise TmoGraphError(
            f"{source} is not a readable image", "pass a PNG, JPEG, GIF or WebP file"
        ) from None
    return "image/jpeg" if fmt in ("jpeg", "jpg", "mpo") else f"image/{fmt or 'png'}"


def check_image(image: str) -> None:
    """Check without inlining: a path must be a readable image file, a data URL must decode to
    an image; http(s) URLs are left to the server that fetches them.

    Raises :class:`TmoGraphError` naming the problem and the fix.
    """
    if not isinstance(image, str) or not image.strip():
        raise TmoGraphError("an image is empty", "give a file path, an http(s) URL or a data URL")
    if image.startswith(("http://", "https://")):
        return
    if image.startswith("data:"):
        _check_data_url(image)
        return
    path = Path(image).expanduser().resolve()
    if not path.is_file():
        raise TmoGraphError(f"image file {path} does not exist", "check the path of the image")
    _check_file(str(path), path.stat().st_mtime_ns)


@lru_cache(maxsize=256)
def _check_file(path: str, mtime_ns: int) -> None:  # mtime: a changed file is checked again
    _image_mime(Path(path).read_bytes(), source=path)
