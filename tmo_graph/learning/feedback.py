"""A user's score of one turn: stored as a ``feedback`` label and as a line of the audit log.

Every surface records feedback through :func:`record_feedback` (the server's
``POST /v1/feedback``, :meth:`tmo_graph.chat_model.TMOChatModel.feedback`, or a caller of the
graph itself with :func:`turns_of`), so the checks and the audit line are the same on all.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tmo_graph.errors import TmoGraphError
from tmo_graph.guards.audit import AuditLog, FeedbackEntry, now_iso
from tmo_graph.threads.labels import TurnLabel, TurnLabels


def check_turn(turn: Any, turns_done: int) -> None:
    """Refuse a ``turn`` the thread does not have (it has ``turns_done``, numbered from 0)."""
    if isinstance(turn, bool) or not isinstance(turn, int):
        raise TmoGraphError(
            f"turn must be an integer, got {turn!r:.40}",
            "pass the `turn` the answer's tmo field (or response_metadata) reports",
        )
    if not 0 <= turn < turns_done:
        have = f"turns 0..{turns_done - 1}" if turns_done else "no answered turn yet"
        raise TmoGraphError(
            f"the thread has {have}; turn {turn} is not one of them",
            "pass the `turn` the answer's tmo field (or response_metadata) reports",
        )


async def record_feedback(
    labels: TurnLabels,
    *,
    thread_id: str,
    turn: int,
    score: float,
    user_id: str,
    comment: str | None = None,
    turns_done: int | None = None,
    audit: AuditLog | None = None,
    key_id: str | None = None,
) -> TurnLabel:
    """Keep ``user_id``'s ``score`` of ``turn`` of ``thread_id`` (1 / -1: thumbs up / down)
    as a ``feedback`` label, and a line in ``audit`` saying so (the comment's length, never
    its words). ``turns_done``: how many turns the thread has answered, to refuse a turn it
    does not have (None: not checked). The caller checks that ``user_id`` owns the thread.
    Raises :class:`TmoGraphError` saying what to fix for a bad turn, score or comment."""
    if turns_done is not None:
        check_turn(turn, turns_done)
    if comment is not None and not isinstance(comment, str):
        raise TmoGraphError(
            f"comment must be text, got {type(comment).__name__}", "send a string, or none"
        )
    label = TurnLabel(thread_id, turn, user_id, "feedback", score, comment or "")
    await labels.add(label)
    if audit is not None:
        entry = FeedbackEntry(
            kind="feedback",
            time=now_iso(),
            thread_id=thread_id,
            user_id=user_id,
            key_id=key_id,
            turn=turn,
            score=float(score),
            comment_chars=len(label.comment),
        )
        await asyncio.to_thread(audit.append, entry)
    return label


def turns_of(graph: Any, thread_id: str) -> int:
    """How many turns ``graph``'s thread ``thread_id`` has answered (its checkpoint's
    ``turn_count``); 0 for a graph without a checkpointer, which keeps no threads."""
    if getattr(graph, "checkpointer", None) is None:
        return 0
    snapshot = graph.get_state({"configurable": {"thread_id": thread_id}})
    return int(snapshot.values.get("turn_count") or 0)
