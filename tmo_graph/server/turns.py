"""Turns as tasks: each runs to its end even when its client leaves (so a thread never keeps a
question without its answer), at most ``max_concurrent_turns`` at once (503 beyond)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import Checkpoint

from tmo_graph.context import Context
from tmo_graph.conversation import Done, Token, astream_turn
from tmo_graph.learning.shadow import AnsweredTurn, ShadowJudge
from tmo_graph.memory.recall import copy_thread
from tmo_graph.server.errors import ApiError

if TYPE_CHECKING:
    from langgraph.store.base import BaseStore

log = logging.getLogger(__name__)


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Usage:
        """The turn's tokens, as its record counts them."""
        return cls(int(record.get("input_tokens", 0)), int(record.get("output_tokens", 0)))

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass
class Finished:
    """The turn is over: its end event and the tokens it used."""

    done: Done
    usage: Usage


# What a running turn puts on its queue: answer tokens, then Finished, or the error that ended it.
Event = Token | Finished | BaseException
# Run when a turn has finished, before its client hears so (e.g. record the dialogue's chain).
AfterTurn = Callable[[Finished], Awaitable[None]]


class TurnRunner:
    """Runs turns as tasks that finish even when their client leaves; counts them."""

    def __init__(
        self,
        graph: Any,
        max_concurrent_turns: int,
        thread_wait_s: float,
        store: BaseStore | None = None,
        judge: ShadowJudge | None = None,
    ) -> None:
        self.graph = graph
        # Judges sampled and escalated turns once their answers are out (learning.shadow_rate).
        self.judge = judge
        # The graph's memory store, for forks to carry (default: the one it was compiled with).
        self.store = store if store is not None else getattr(graph, "store", None)
        self.max_concurrent_turns = max_concurrent_turns
        self.thread_wait_s = thread_wait_s
        self.active = 0
        self._tasks: set[asyncio.Task[None]] = set()  # strong references until done

    async def stored(self, thread_id: str) -> list[BaseMessage]:
        """The thread's messages, which a request's are compared with (none without a
        checkpointer: each turn is then a dialogue of its own)."""
        if getattr(self.graph, "checkpointer", None) is None:
            return []
        snapshot = await self.graph.aget_state({"configurable": {"thread_id": thread_id}})
        return list(snapshot.values.get("messages") or [])

    async def turns_done(self, thread_id: str) -> int:
        """How many turns the thread has answered (0 without a checkpointer)."""
        if getattr(self.graph, "checkpointer", None) is None:
            return 0
        snapshot = await self.graph.aget_state({"configurable": {"thread_id": thread_id}})
        return int(snapshot.values.get("turn_count") or 0)

    async def fork(self, source: str, turns: int, target: str, user_id: str = "") -> bool:
        """Start thread ``target`` as a copy of ``source`` when it had answered ``turns``
        turns (its checkpoint then: dialogue, budget left, turn count; and ``user_id``'s
        memory of the turns that had left its window), leaving ``source`` as it is; False
        when ``source`` has no such checkpoint."""
        saver = getattr(self.graph, "checkpointer", None)
        if saver is None:
            return False
        async for snapshot in self.graph.aget_state_history(
            {"configurable": {"thread_id": source}}
        ):
            # Newest first: the first finished state with that count ends that turn.
            if snapshot.next or snapshot.values.get("turn_count") != turns:
                continue
            saved = await saver.aget_tuple(snapshot.config)
            if saved is None:
                return False
            checkpoint = _standalone(saved.checkpoint, self.graph, snapshot.values)
            await saver.aput(
                {"configurable": {"thread_id": target, "checkpoint_ns": ""}},
                checkpoint,
                saved.metadata,
                dict(checkpoint["channel_versions"]),  # every channel: the copy stands alone
            )
            if self.store is not None:
                await asyncio.to_thread(
                    copy_thread,
                    self.store,
                    user_id=user_id,
                    source=source,
                    target=target,
                    before=_remembered_before(snapshot.values, turns),
                )
            return True
        return False

    def start(
        self,
        inputs: dict[str, Any],
        thread_id: str,
        context: Context,
        after: AfterTurn | None = None,
        drafts: bool = False,
    ) -> asyncio.Queue[Event]:
        """Start a turn; its events come on the queue returned (503 when too many run).
        ``drafts``: local drafts' tokens too, marked (the console greys them)."""
        if self.active >= self.max_concurrent_turns:
            raise ApiError(
                503,
                f"the server is answering {self.active} turns, its limit; retry in a moment",
                "server_error",
                code="overloaded",
                headers={"retry-after": "1"},
            )
        self.active += 1  # counted before the task starts: no await between check and count
        queue: asyncio.Queue[Event] = asyncio.Queue()
        task = asyncio.create_task(self._run(inputs, thread_id, context, queue, after, drafts))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return queue

    async def _run(
        self,
        inputs: dict[str, Any],
        thread_id: str,
        context: Context,
        queue: asyncio.Queue[Event],
        after: AfterTurn | None,
        drafts: bool = False,
    ) -> None:
        try:
            async for event in astream_turn(
                self.graph, inputs, thread_id, context, self.thread_wait_s, drafts
            ):
                if isinstance(event, Done):
                    # Still inside the thread's lock: no later turn has written yet.
                    finished = Finished(event, Usage.of(event.record))
                    if after is not None:
                        try:
                            await after(finished)
                        except Exception:  # the answer stands; only its bookkeeping failed
                            log.exception("after the turn of thread %s", thread_id)
                    queue.put_nowait(finished)
                    self._judge_later(event, thread_id, context)
                else:
                    queue.put_nowait(event)
        except Exception as exc:
            queue.put_nowait(exc)
        finally:
            self.active -= 1

    def _judge_later(self, done: Done, thread_id: str, context: Context) -> None:
        """Hand the answered turn to the judge, which works in a task of its own: the
        answer is already on its way and nothing here can delay or change it."""
        if self.judge is None:
            return
        try:
            self.judge.schedule(AnsweredTurn.of(done.record, done.state, thread_id, context))
        except Exception:  # judging is optional: the turn stands
            log.exception("could not start judging a turn of thread %s", thread_id)

    async def drain(self) -> None:
        """Let running turns finish, then the judging under way (shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=60)
        if self.judge is not None:
            await self.judge.drain()


def _standalone(checkpoint: Checkpoint, graph: Any, values: Mapping[str, Any]) -> Checkpoint:
    """``checkpoint`` holding the whole value of every ``DeltaChannel`` (the dialogue, the turn
    records): such a channel stores only a step's writes, which its thread's earlier
    checkpoints complete; a copy in a new thread has none, so it carries the values, read
    back by LangGraph as the channel's seed."""
    deltas = [k for k, ch in graph.channels.items() if isinstance(ch, DeltaChannel)]
    channel_values = dict(checkpoint["channel_values"])
    channel_values.update({k: values[k] for k in deltas if k in values})
    return {**checkpoint, "channel_values": channel_values}


def _remembered_before(values: Mapping[str, Any], turns: int) -> int:
    """The turn number below which the source's memory held its turns at the fork: those
    that had left the window then (``remembered_turns`` of the finished turns its messages
    held; a thread checkpointed before the whole dialogue was kept held only its window)."""
    held = sum(1 for m in values.get("messages") or [] if m.type == "human")
    return turns - held + int(values.get("remembered_turns") or 0)
