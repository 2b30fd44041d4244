"""Images by reference: the state keeps a path or URL plus a content hash, never the pixels
(a thread's message adds a preview of at most 64 px: :func:`image_preview`).

A data URL sent by a caller is decoded once into the media folder (named by its SHA-256, so
the same image is stored once) and replaced by that file's path (in a thread's messages, by
its URL: :func:`tmo_graph.media.store.media_url`). The bytes a cloud call
carries are made only there, for the views it sends: downscaled to a longest side and
re-encoded (:func:`cloud_image`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tmo_graph.errors import TmoGraphError
from tmo_graph.media.store import parse_media_url, resolve_source, store_once

_EXTENSIONS = {"jpeg": "jpg", "png": "png", "gif": "gif", "webp": "webp"}


def is_remote(ref: str) -> bool:
    """An http(s) URL: the cloud fetches it; it is never read here."""
    return ref.startswith(("http://", "https://"))


def check_image(image: str) -> None:
    """Check without storing: a path must be a readable image file, a data URL must decode
    to an image; http(s) URLs are left to the server that fetches them, and a thread's media
    URL to the graph (it reads only its own thread's).

    Raises :class:`TmoGraphError` naming the problem and the fix.
    """
    if not isinstance(image, str) or not image.strip():
        raise TmoGraphError("an image is empty", "give a file path, an http(s) URL or a data URL")
    image = image.strip()
    if is_remote(image) or parse_media_url(image) is not None:
        return
    if image.startswith("data:"):
        _image_format(_decode_data_url(image), "an inline image")
        return
    path = Path(image.removeprefix("file://")).expanduser().resolve()
    if not path.is_file():
        raise TmoGraphError(f"image file {path} does not exist", "check the path of the image")
    _file_digest(str(path), path.stat().st_mtime_ns)


@dataclass(frozen=True)
class ImageRef:
    """Where an image is (absolute path or http(s) URL) and its content hash."""

    ref: str
    sha256: str


def store_image(image: str, folder: Path, thread_id: str | None = None) -> ImageRef:
    """The reference for ``image``: a path (checked), an http(s) URL, a data URL (stored), or
    the media URL of ``thread_id`` (the run's thread) for an image stored before.

    Raises :class:`TmoGraphError` for a missing file, bad base64, bytes that are no image, or
    another thread's media URL.
    """
    image = resolve_source(image.strip(), folder, thread_id)
    if is_remote(image):
        # Not fetched: the cloud fetches it; the hash names the URL, not its content.
        return ImageRef(image, hashlib.sha256(image.encode()).hexdigest())
    if image.startswith("data:"):
        data = _decode_data_url(image)
        fmt = _image_format(data, "an inline image")
        path, digest = store_once(data, folder, _EXTENSIONS.get(fmt, "img"))
        return ImageRef(str(path), digest)
    path = Path(image.removeprefix("file://")).expanduser().resolve()
    if not path.is_file():
        raise TmoGraphError(
            f"image file {path} does not exist", "check the path of the view or image"
        )
    return ImageRef(str(path), _file_digest(str(path), path.stat().st_mtime_ns))


@lru_cache(maxsize=512)
def _file_digest(path: str, mtime_ns: int) -> str:  # mtime: a changed file is re-read
    data = Path(path).read_bytes()
    _image_format(data, path)
    return hashlib.sha256(data).hexdigest()


def _decode_data_url(url: str) -> bytes:
    head, _, payload = url.partition(",")
    if not head.endswith(";base64") or not payload:
        raise TmoGraphError(
            "an inline image is not a base64 data URL", "send data:image/...;base64,<data>"
        )
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError:
        raise TmoGraphError("an inline image has invalid base64", "re-encode the image") from None


def _image_format(data: bytes, source: str) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Large camera frames are fine (they are downscaled before sending); Pillow's
            # hard limit (about 179 megapixels) still refuses decompression bombs below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.verify()
                fmt = (img.format or "").lower()
    except Image.DecompressionBombError:
        raise TmoGraphError(
            f"{source} has more pixels than this accepts (about 179 megapixels)",
            "send a smaller image, e.g. at most 10000x10000",
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise TmoGraphError(
            f"{source} is not a readable image", "pass a PNG, JPEG, GIF or WebP file"
        ) from None
    return "jpeg" if fmt in ("jpeg", "jpg", "mpo") else fmt or "png"


@dataclass(frozen=True)
class CloudImage:
    """What a cloud call sends for one image, and its size as sent (0 when unknown)."""

    url: str
    width: int
    height: int
    sent_bytes: int


def cloud_image(ref: str, max_side: int) -> CloudImage:
    """The image at ``ref`` as a data URL at most ``max_side`` pixels on its longest side.

    http(s) URLs pass through (the cloud fetches them at their own size).
    """
    if max_side < 1:
        raise TmoGraphError(f"max_side must be >= 1, got {max_side}", "use e.g. 768")
    if is_remote(ref):
        return CloudImage(ref, 0, 0, 0)
    path = Path(ref)
    if not path.is_file():
        raise TmoGraphError(
            f"image file {path} is gone", "keep the dialogue's image files while it runs"
        )
    return _encoded(str(path), path.stat().st_mtime_ns, max_side)


def image_preview(ref: str, side: int) -> dict[str, str]:
    """A preview of the stored image at ``ref``, at most ``side`` pixels on its longest
    side, as the fields LangChain.js's image block and agent-chat-ui draw inline:
    ``{"mimeType": ..., "data": <base64>}`` (a few KB at 64 px)."""
    if side < 1:
        raise TmoGraphError(f"a preview needs a side >= 1, got {side}", "use e.g. 64")
    head, _, data = cloud_image(ref, side).url.partition(",")
    return {"mimeType": head.removeprefix("data:").removesuffix(";base64"), "data": data}


@lru_cache(maxsize=64)
def _encoded(path: str, mtime_ns: int, max_side: int) -> CloudImage:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale, fast
            img.load()
            keep_alpha = img.mode in ("RGBA", "LA") or (
                img.mode == "P" and "transparency" in img.info
            )
            out = img.convert("RGBA" if keep_alpha else "RGB")
    if max(out.size) > max_side:
        out.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if keep_alpha:
        out.save(buffer, format="PNG", optimize=True)
        mime = "image/png"
    else:
        out.save(buffer, format="JPEG", quality=85)
        mime = "image/jpeg"
    data = buffer.getvalue()
    url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return CloudImage(url, out.width, out.height, len(data))
