"""Requests per API key over a moving window (the ``limits`` library, in this process).

Each worker counts its own requests: behind a load balancer with N workers a key may make up
to N times its rate in the worst case (sticky sessions keep it at one worker's count).
"""

from __future__ import annotations

import math
import time
from functools import lru_cache
from typing import Any

from tmo_graph.errors import TmoGraphError


@lru_cache(maxsize=256)
def _item(rate: str) -> Any:
    from limits import parse

    try:
        return parse(rate)
    except ValueError:
        raise TmoGraphError(f"rate {rate!r} does not parse", "write e.g. 60/minute") from None


class RateLimiter:
    """Counts each key's requests; :meth:`hit` says how long to wait when one is too many."""

    def __init__(self) -> None:
        try:
            from limits.storage import MemoryStorage
            from limits.strategies import MovingWindowRateLimiter
        except ImportError:
            raise TmoGraphError(
                "the rate limiter (package `limits`) is not installed",
                "pip install 'tmo-graph[serve]'",
            ) from None
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, key_id: str, rate: str) -> int | None:
        """Count one request of ``key_id`` at ``rate``; None when it is allowed, else the
        whole seconds until one would be (at least 1)."""
        item = _item(rate)
        if self._limiter.hit(item, key_id):
            return None
        reset = self._limiter.get_window_stats(item, key_id).reset_time
        return max(1, math.ceil(reset - time.time()))
