"""What the console reads, per request: the threads a viewer may see, a thread's state and the
times of its turns (from the checkpointer), and the audit log's lines."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tmo_graph.guards.audit import AuditEntry, read_audit
from tmo_graph.policy.budget import CostModel
from tmo_graph.server.console.access import Viewer
from tmo_graph.server.console.dialogue import TurnView, turn_views
from tmo_graph.server.runtime import ServerState
from tmo_graph.threads.owners import OwnedThread


@dataclass
class ThreadData:
    """One thread: its owner, its turns and the budget it started with."""

    owned: OwnedThread
    turns: list[TurnView]
    audit: list[AuditEntry]

    @property
    def thread_id(self) -> str:
        return self.owned.thread_id

    @property
    def cost_usd(self) -> float:
        """The turns' cost by their records (cloud money and the device's energy)."""
        return sum(float(t.record.get("cost_usd", 0.0)) for t in self.turns)

    @property
    def cloud_usd(self) -> float:
        """What its cloud requests cost by the audit log."""
        return sum(e["cost_usd"] for e in self.audit)

    @property
    def updated(self) -> str:
        """When the thread last answered (else when it was started), ISO 8601."""
        times = [t.time for t in self.turns if t.time]
        return max(times) if times else _iso(self.owned.created)

    def route_mix(self) -> dict[str, int]:
        mix: dict[str, int] = {}
        for turn in self.turns:
            mix[turn.route] = mix.get(turn.route, 0) + 1
        return mix


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def audit_lines(state: ServerState) -> list[AuditEntry]:
    """Every line of the server's audit log (none when it is off or not written yet)."""
    settings = state.settings
    path = settings.audit_path()
    if not settings.audit.enabled or not path.exists() or path.stat().st_size == 0:
        return []
    return read_audit(path)


async def visible_threads(state: ServerState, viewer: Viewer) -> list[OwnedThread]:
    """The threads the viewer may open, newest first."""
    if viewer.admin:
        return await state.owners.threads(None)
    owned = await state.owners.threads(
        None if viewer.caller.key and viewer.caller.key.proxy else viewer.user
    )
    return [t for t in owned if viewer.sees(t.user_id)]


async def _turn_times(graph: Any, thread_id: str) -> dict[int, str]:
    """Each turn's time: that of the first checkpoint whose turn count passed it."""
    saver = getattr(graph, "checkpointer", None)
    if saver is None:
        return {}
    times: dict[int, str] = {}
    async for saved in saver.alist({"configurable": {"thread_id": thread_id}}):
        count = saved.checkpoint.get("channel_values", {}).get("turn_count")
        if isinstance(count, int) and count > 0:
            times[count - 1] = min(
                times.get(count - 1, saved.checkpoint["ts"]), saved.checkpoint["ts"]
            )
    return times


async def read_thread(
    state: ServerState, owned: OwnedThread, viewer: Viewer, audit: list[AuditEntry]
) -> ThreadData:
    """The thread ``owned`` as ``viewer`` sees it; ``audit``: the audit log's lines."""
    graph = state.runner.graph
    values: dict[str, Any] = {}
    if getattr(graph, "checkpointer", None) is not None:
        snapshot = await graph.aget_state({"configurable": {"thread_id": owned.thread_id}})
        values = dict(snapshot.values)
    # The turns' own requests: shadow and judge requests (a purpose) answered no one.
    lines = [e for e in audit if e["thread_id"] == owned.thread_id and not e.get("purpose")]
    turns = turn_views(
        values.get("messages") or [],
        values.get("turns") or [],
        lines,
        CostModel.from_settings(state.settings),
        owner_view=viewer.owns(owned.user_id) or viewer.caller.key is None,
        times=await _turn_times(graph, owned.thread_id),
    )
    owner_view = viewer.owns(owned.user_id) or viewer.caller.key is None
    for label in await state.labels.of_thread(owned.thread_id):
        for turn in (t for t in turns if t.number == label.turn):
            turn.labels.append(
                {
                    "source": label.source,
                    "score": label.score,
                    # A comment may hold personal data: its owner's to read.
                    "comment": label.comment if owner_view else "",
                    "created": _iso(label.created),
                }
            )
    return ThreadData(owned, turns, lines)
