"""Media bytes stored once by content: the one folder inline images and audio clips share,
and the URL a chat UI loads them by.

A message in a thread's state names its stored image or clip by a relative URL,
``/v1/threads/<thread id>/media/<sha256>`` (:func:`media_url`), never by its pixels and never
by a ``file://`` path a browser cannot open; beside it, only a preview of at most
``threads.image_preview_px`` (64 px, a few KB) for chat UIs that draw inline images only.
``tmo-graph serve``, and the same routes mounted on ``langgraph dev``, serve that URL to the
thread's owner (``tmo_graph.server.media``). The models read the bytes from this folder:
:func:`resolve_source` turns the URL back into the stored file, for the run's own thread
only.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import quote, unquote

from tmo_graph.errors import TmoGraphError

# What a stored file's extension says it holds (the route's Content-Type).
MEDIA_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
}
SHA256 = re.compile(r"^[0-9a-f]{64}$")
_URL = re.compile(r"^/v1/threads/(?P<thread>[^/?#]{1,400})/media/(?P<sha256>[0-9a-f]{64})$")


def store_once(data: bytes, folder: Path, extension: str) -> tuple[Path, str]:
    """``data`` written to ``folder/<sha256>.<extension>`` unless already there: (path, hash).

    The write is atomic (a temporary file renamed), so a reader never sees half a file and
    the same bytes sent twice are stored once.
    """
    digest = hashlib.sha256(data).hexdigest()
    path = Path(folder).expanduser().resolve() / f"{digest}.{extension}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path, digest


def media_url(thread_id: str, sha256: str) -> str:
    """The relative URL a thread's message names its stored media by (the thread id
    percent-encoded: any id a LangGraph client chose stays one path segment)."""
    if not SHA256.match(sha256):
        raise TmoGraphError(
            f"{sha256[:80]!r} is not a SHA-256", "pass the 64 lowercase hex digits store_once gave"
        )
    if not thread_id:
        raise TmoGraphError("the thread id is empty", "pass the id of the run's thread")
    return f"/v1/threads/{quote(thread_id, safe='')}/media/{sha256}"


def parse_media_url(url: str) -> tuple[str, str] | None:
    """(thread id, sha256) of a :func:`media_url` (also with a scheme and host in front, as
    a browser resolves it), else None."""
    path = re.sub(r"^https?://[^/]+", "", url.strip())
    found = _URL.match(path)
    return None if found is None else (unquote(found["thread"]), found["sha256"])


def stored_file(folder: Path, sha256: str) -> Path | None:
    """The file in ``folder`` holding the bytes of ``sha256``, or None when none does.

    Only a well-formed hash is looked up, and only names of the store's own shape match
    (``<sha256>.<known extension>``), so no request can reach outside the folder.
    """
    if not SHA256.match(sha256):
        return None
    base = Path(folder).expanduser().resolve()
    for extension in MEDIA_TYPES:
        path = base / f"{sha256}.{extension}"
        if path.is_file():
            return path
    return None


def resolve_source(source: str, folder: Path, thread_id: str | None) -> str:
    """``source`` itself, or for a :func:`media_url` of ``thread_id`` the stored file's path.

    Raises :class:`TmoGraphError` for a media URL of another thread (a run reads only its
    own thread's media) or one whose bytes are not in ``folder``.
    """
    parsed = parse_media_url(source)
    if parsed is None:
        return source
    thread, sha256 = parsed
    if thread_id is None or thread != thread_id:
        raise TmoGraphError(
            f"the message names media of thread {thread[:80]!r}, not of this run's thread",
            "send the image or clip itself (a data URL) instead of another thread's link",
        )
    path = stored_file(folder, sha256)
    if path is None:
        raise TmoGraphError(
            f"the media {sha256} this thread names is no longer stored in {folder}",
            "send the image or clip again (a data URL); keep the media folder with the threads",
        )
    return str(path)
