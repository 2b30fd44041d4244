"""Media bytes stored once by content: the one folder inline images and audio clips share."""

from __future__ import annotations

import hashlib
from pathlib import Path


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
