"""Which policy file the server routes with, and when it changed.

The graph loads a ``learned`` policy file once per file version
(:func:`tmo_graph.policy.learned.load_learned`), so a new ``tmo-graph fit`` written over
``routing.policy_file`` is used from the next turn on, without a restart. This watch says
so: it looks at the file's modification time (as :class:`tmo_graph.server.keys.KeyRing`
does for the key file) every ``interval_s`` seconds and on every ``GET /health``, logs
"policy reloaded from X (fit at ...)" and reports the file on ``/health``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("tmo_graph.server")


class PolicyWatch:
    """The configured policy file's version, checked by its modification time."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._stamp: int | None = None
        self.fit_at: str | None = None
        self.reloads = 0
        self.check(initial=True)

    def _stat(self) -> int | None:
        assert self.path is not None
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return None

    def check(self, initial: bool = False) -> bool:
        """Look at the file; True (and a log line) when it changed since the last look."""
        if self.path is None:
            return False
        with self._lock:
            stamp = self._stat()
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            self.fit_at = _fit_at(self.path)
            if initial:
                return False
            self.reloads += 1
        log.info("policy reloaded from %s (fit at %s)", self.path, self.fit_at or "unknown")
        return True

    def status(self) -> dict[str, Any] | None:
        """What ``/health`` shows: the file, when it was fit, how often it was reloaded."""
        if self.path is None:
            return None
        self.check()
        return {"file": str(self.path), "fit_at": self.fit_at, "reloads": self.reloads}

    async def run(self, interval_s: float = 2.0) -> None:
        """Check every ``interval_s`` seconds until cancelled (the app's lifespan)."""
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(self.check)


def _fit_at(path: Path) -> str | None:
    """The ``fit_at`` a `tmo-graph fit` file records (None: another kind of policy file)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    info = data.get("info") if isinstance(data, dict) else None
    return info.get("fit_at") if isinstance(info, dict) else None
