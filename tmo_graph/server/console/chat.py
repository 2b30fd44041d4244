"""The chat box: ``POST /console/chat`` runs one turn of the viewer's own thread (or starts
one) as ``/v1/chat/completions`` does (the same owner check, policy check, daily cap, thread
lock and :class:`~tmo_graph.server.turns.TurnRunner`), and streams it as server-sent events
with the local draft's tokens marked, so the page can grey them while the confidence check may
still replace them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from langchain_core.messages import HumanMessage
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tmo_graph.conversation import Token, turn_summary
from tmo_graph.server.auth import caller_context, check_policy, thread_header, thread_of
from tmo_graph.server.console.access import require_csrf, viewer_of
from tmo_graph.server.errors import ApiError, api_error, invalid
from tmo_graph.server.limits import LimitExceeded, read_body
from tmo_graph.server.runtime import ServerState, server_state
from tmo_graph.server.schemas import parse_model
from tmo_graph.server.turns import Finished

router = APIRouter()


class ConsoleChat(BaseModel):
    """What the chat box sends."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=20_000)
    model: str = "tmo-cascade"
    private: bool = False  # the turn stays on the device, as the API's "private": true
    thread_id: str | None = None  # None: a new thread


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(queue: Any, thread_id: str) -> AsyncIterator[str]:
    """The turn as server-sent events: ``thread``, ``draft`` pieces (may still be replaced),
    ``token`` pieces of the final answer, then ``done`` with the turn's summary (or
    ``error``)."""
    yield _event("thread", {"thread_id": thread_id})
    while True:
        event = await queue.get()
        if isinstance(event, Token):
            yield _event("draft" if event.draft else "token", {"text": event.text})
        elif isinstance(event, Finished):
            record = event.done.record
            summary = turn_summary(record, thread_id)
            summary["redactions"] = dict(record.get("redactions") or {})  # counts by kind
            summary["audio_sent"] = list(record.get("audio_sent") or [])
            summary.pop("transcripts", None)
            yield _event("done", summary)
            return
        else:
            yield _event("error", {"message": api_error(event).message})
            return


@router.post("/chat", response_model=None)
async def chat(
    request: Request, state: Annotated[ServerState, Depends(server_state)]
) -> StreamingResponse:
    """One turn of the viewer's own thread (another's is the API's 404, an admin's key too)."""
    require_csrf(request)
    viewer = viewer_of(request, state)
    try:
        raw = await read_body(
            request.stream(),
            request.headers.get("content-length"),
            state.settings.server.max_body_bytes,
        )
    except LimitExceeded as exc:
        raise ApiError(exc.status, exc.message, param=exc.param) from None
    try:
        body = ConsoleChat.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid(exc.errors()) from None
    caller = viewer.caller
    policy, threshold = parse_model(body.model)
    check_policy(caller, policy, body.model, state.settings)
    named = thread_header(body.thread_id) if body.thread_id else None
    thread_id = await thread_of(named, caller, state.owners)
    context = caller_context(state.settings, caller, policy, threshold)
    flag = {"private": True} if body.private else {}
    message = HumanMessage(body.message, additional_kwargs=flag)
    queue = state.runner.start({"messages": [message]}, thread_id, context, drafts=True)
    return StreamingResponse(
        _stream(queue, thread_id),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-tmo-thread-id": thread_id},
    )
