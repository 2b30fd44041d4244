"""Which thread a request continues, when it names none: the thread of the same user whose
recorded dialogue its history repeats (:mod:`tmo_graph.threads.chains`); or the one a
configured header (``server.thread_header``, e.g. Open WebUI's ``X-OpenWebUI-Chat-Id``) names,
namespaced per user; and how much of the request the thread holds already, which the
request limits do not count again.

A request's *history* is its user, assistant and tool messages (each by its text, its media
hashes and, for an answer, the tools it called with their arguments; system and developer
messages are the persona, kept apart) before the trailing user message(s) or tool results.
When its chain is recorded for the caller (and the chat the header names, if any), the
thread it names continues, or, when that thread has answered more turns since (an edit or a
regenerate), a fork of it from that turn. Otherwise the chat's header-named thread, or a new
thread, takes it. After each turn the chain of the dialogue as the client will resend it
(its answer as returned or streamed) is recorded, when the request carried the thread's
whole dialogue.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tmo_graph.server.errors import ApiError, bad
from tmo_graph.server.limits import part_data
from tmo_graph.server.messages import text_of
from tmo_graph.server.schemas import ChatMessage
from tmo_graph.threads.chains import START, Link, ThreadChains, chain_of, extend, media_hash
from tmo_graph.threads.owners import ThreadOwners

# Dialogue roles; system and developer messages are the persona (the history rule keeps it once).
DIALOGUE = ("user", "assistant", "tool")
NEW_ROLES = ("user", "tool")
MAX_HEADER = 256


def media_of(content: Any) -> tuple[str, ...]:
    """The content hashes of a message's media parts, in order."""
    if not isinstance(content, list):
        return ()
    found = (part_data(p) for p in content)
    return tuple(media_hash(d) for d in found if d is not None)


def call_pieces(calls: Sequence[Mapping[str, Any]] | None) -> tuple[str, ...]:
    """An assistant's tool calls as chain pieces: name and arguments (JSON re-dumped with sorted
    keys: clients re-serialise what they resend). Takes OpenAI's shape (``function.arguments``
    as text) and the turn record's (``name``, ``args``) alike; call ids are left out."""
    pieces = []
    for call in calls or []:
        function = call.get("function") or call
        args: Any = function.get("arguments", function.get("args"))
        if isinstance(args, str):
            try:
                args = json.loads(args or "{}")
            except json.JSONDecodeError:
                args = args.strip()
        pieces.append(f"call:{function.get('name')}:{json.dumps(args, sort_keys=True)}")
    return tuple(pieces)


@dataclass(frozen=True)
class History:
    """A request's dialogue as a hash chain."""

    chains: list[str]  # the chain after each dialogue message
    indices: list[int]  # each dialogue message's index in the request
    roles: list[str]
    prefix: int  # dialogue messages before the trailing user messages
    media: list[tuple[str, ...]]  # each dialogue message's media hashes

    @property
    def prefix_chain(self) -> str | None:
        return self.chains[self.prefix - 1] if self.prefix else None

    def boundaries(self) -> list[str]:
        """The chains after each assistant message: where a turn of a thread may end."""
        return [c for c, r in zip(self.chains, self.roles, strict=True) if r == "assistant"]

    def held_from(self, chain: str | None) -> int:
        """The request index of the first message after ``chain`` (0 for None)."""
        if chain is None:
            return 0
        return self.indices[self.chains.index(chain)] + 1

    def media_until(self, chain: str | None) -> frozenset[str]:
        """The media hashes of the dialogue up to ``chain``: what the thread holds."""
        if chain is None:
            return frozenset()
        end = self.chains.index(chain) + 1
        return frozenset(h for hashes in self.media[:end] for h in hashes)

    def answered(self, answer: str, calls: Sequence[Mapping[str, Any]] | None = None) -> str:
        """The chain of this dialogue followed by ``answer`` (and the tool ``calls`` it made):
        what the client resends next."""
        last = self.chains[-1] if self.chains else START
        return extend(last, "assistant", answer, call_pieces(calls))


def history_of(messages: Sequence[ChatMessage]) -> History:
    """The request's dialogue as a chain (role, text, media hashes per message)."""
    kept = [(i, m) for i, m in enumerate(messages) if m.role in DIALOGUE]
    media = [media_of(m.content) for _, m in kept]
    entries = [
        (m.role, text_of(m.content), h + call_pieces(m.tool_calls))
        for (_, m), h in zip(kept, media, strict=True)
    ]
    prefix = len(kept)
    # What is new: the trailing question(s), or the results of the tools the last answer called.
    while prefix > 0 and kept[prefix - 1][1].role in NEW_ROLES:
        prefix -= 1
    return History(
        chain_of(entries), [i for i, _ in kept], [m.role for _, m in kept], prefix, media
    )


@dataclass(frozen=True)
class Place:
    """Where a request's turn runs, and what of the request its thread holds already."""

    thread_id: str | None  # the thread the request names or repeats; None: a new one
    held: str | None  # the chain of the request's messages the thread holds (None: none)
    # The request's history is recorded as this thread's at this turn: with the thread's
    # later turns answered, the request edits or regenerates: it forks from that turn.
    link: Link | None
    # Named by x-tmo-thread-id, or the configured header's thread taking a history it has not
    # recorded: continued as named, never forked.
    named: bool


async def locate(
    history: History,
    scope: str,
    chains: ThreadChains,
    named: str | None,
    by_header: str | None = None,
    turns_done: Callable[[str], Awaitable[int]] | None = None,
) -> Place:
    """Where the turn of a request with ``history`` runs: the thread ``named`` by
    x-tmo-thread-id; else the thread whose dialogue the history repeats, recorded under
    ``scope`` (:func:`scope_of`); else the chat's thread ``by_header`` (the configured
    header's, when sent), unless the request begins that chat again from its first question
    (an edit or a regenerate of it: a new thread); else a new thread."""
    links = await chains.find(scope, history.boundaries())
    prefix = history.prefix_chain
    if named is not None:
        mine = [c for c in history.boundaries() if c in links and links[c].thread_id == named]
        held = mine[-1] if mine else None
        link = links.get(prefix) if prefix is not None and prefix == held else None
        return Place(named, held, link, named=True)
    link = links.get(prefix) if prefix is not None else None
    if link is not None:
        return Place(link.thread_id, prefix, link, named=False)
    if (
        by_header is not None
        and turns_done is not None
        and (prefix is not None or await turns_done(by_header) == 0)
    ):
        return Place(by_header, None, None, named=True)
    return Place(None, None, None, named=False)


def scope_of(user: str, by_header: str | None) -> str:
    """Whose recorded dialogues a request's history is looked up in: the user's, or those of
    the user's chat the configured header names (two chats word for word alike stay apart)."""
    return user if by_header is None else f"{user}\x1f{by_header}"


def header_thread(value: str | None, user: str, header: str) -> str | None:
    """The thread a configured header names, namespaced per user: the same value from two
    users names two threads, so no one reaches another's thread by naming its id."""
    if value is None or not value.strip():
        return None
    if len(value) > MAX_HEADER:
        raise bad(f"the {header} header is over {MAX_HEADER} characters; send a shorter id", header)
    digest = hashlib.sha256(f"{user}\x1f{value.strip()}".encode()).hexdigest()
    return f"h-{digest[:40]}"


async def claim_header_thread(thread_id: str, user: str, owners: ThreadOwners, header: str) -> None:
    """Own a header-named thread (the first request with its id starts it)."""
    if await owners.claim(thread_id, user) != user:  # only by a hash collision
        raise ApiError(
            404,
            f"no thread for this caller under that {header}; send another id",
            "not_found_error",
            param=header,
            code="thread_not_found",
        )


def complete(place: Place, stored_turns: int) -> bool:
    """Whether the request carries its thread's whole dialogue, so its chain (with the answer)
    may be recorded as the thread's: a new thread, or a history recorded as the thread's
    last turn."""
    if stored_turns == 0:
        return True  # the new thread takes the whole request
    return place.link is not None and place.link.turn + 1 == stored_turns
