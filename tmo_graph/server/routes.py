"""The endpoints: ``GET /health``, ``GET /v1/models`` and ``POST /v1/chat/completions``
(plain and streamed). Every ``/v1`` route depends on :func:`tmo_graph.server.auth.authenticate`."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tmo_graph.server.auth import (
    Caller,
    allowed_policies,
    authenticate,
    caller_context,
    check_policy,
    named_caller,
    thread_header,
    thread_of,
)
from tmo_graph.server.chores import answer_chore, chore_of
from tmo_graph.server.continuity import (
    History,
    Place,
    claim_header_thread,
    complete,
    header_thread,
    history_of,
    locate,
    scope_of,
)
from tmo_graph.server.errors import ApiError, api_error, bad
from tmo_graph.server.limits import LimitExceeded, check_request, read_body
from tmo_graph.server.messages import Chat, check_tools
from tmo_graph.server.responses import completion, sse, tmo_headers
from tmo_graph.server.runtime import ServerState, server_state
from tmo_graph.server.schemas import ChatRequest, model_id, parse_chat_request, parse_model
from tmo_graph.server.turns import AfterTurn, Event, Finished

router = APIRouter()

AppState = Annotated[ServerState, Depends(server_state)]
Authenticated = Annotated[Caller, Depends(authenticate)]


@router.get("/health")
async def health(state: AppState) -> dict[str, Any]:
    return {
        "status": "ok",
        "active_turns": state.runner.active,
        "max_concurrent_turns": state.runner.max_concurrent_turns,
        "policy": state.policy.status() if state.policy is not None else None,
    }


@router.get("/v1/models")
async def models(caller: Authenticated, state: AppState) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": model_id(p), "object": "model", "created": 0, "owned_by": "tmo"}
            for p in allowed_policies(caller, state.settings)
        ],
    }


async def _read_request(request: Request, state: ServerState) -> ChatRequest:
    """The body, within its size limit, as a chat request (400 naming what is wrong)."""
    limits = state.settings.server
    try:
        raw = await read_body(
            request.stream(), request.headers.get("content-length"), limits.max_body_bytes
        )
    except LimitExceeded as exc:
        code = "request_too_large" if exc.status == 413 else None
        raise ApiError(exc.status, exc.message, param=exc.param, code=code) from None
    return parse_chat_request(raw)


def _check_limits(body: ChatRequest, state: ServerState, history: History, place: Place) -> None:
    """The request's limits, over what its thread does not hold yet (before any work)."""
    try:
        check_request(
            body.messages,
            body.model_extra or {},
            state.settings.server,
            held=history.held_from(place.held),
            known_media=history.media_until(place.held),
        )
    except LimitExceeded as exc:
        code = "request_too_large" if exc.status == 413 else "limit_exceeded"
        raise ApiError(exc.status, exc.message, param=exc.param, code=code) from None


async def _thread(place: Place, caller: Caller, state: ServerState, header: str | None) -> str:
    """The turn's thread: the one a header names (x-tmo-thread-id: the caller's or 404; the
    configured header: the caller's, started when new), else the one the request's history
    repeats, or a fork of it from that turn (an edit, a regenerate), else a new one."""
    if place.thread_id is None:
        return await thread_of(None, caller, state.owners)
    if place.named:
        if header is None:
            return await thread_of(place.thread_id, caller, state.owners)
        await claim_header_thread(place.thread_id, caller.user, state.owners, header)
        return place.thread_id
    if place.link is None:  # neither named nor found: a new thread (locate never gives this)
        return await thread_of(None, caller, state.owners)
    turns = place.link.turn + 1
    if await state.runner.turns_done(place.thread_id) <= turns:
        return place.thread_id
    fork = await thread_of(None, caller, state.owners)
    await state.runner.fork(place.thread_id, turns, fork, caller.user)
    return fork


def _recorder(
    state: ServerState, scope: str, history: History, thread_id: str, chain: bool
) -> AfterTurn:
    """After the turn: count it (and a crashed one it completed first) in the metrics and,
    when ``chain``, record the dialogue as the client will resend it as the thread's."""

    async def record(finished: Finished) -> None:
        turn = finished.done.record
        if state.metrics is not None:
            for done in (finished.done.resumed, turn):
                if done is not None:
                    state.metrics.turn(done)
        if chain:
            await state.chains.add(
                scope,
                history.answered(turn["answer"], turn.get("tool_calls")),
                thread_id,
                turn["turn"],
            )

    return record


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    request: Request, caller: Authenticated, state: AppState
) -> JSONResponse | StreamingResponse:
    body = await _read_request(request, state)
    end_user_header = state.settings.server.end_user_header
    end_user = request.headers.get(end_user_header) if end_user_header else None
    caller = named_caller(
        caller, body.user, request.headers.get("x-tmo-user"), end_user, end_user_header
    )
    policy, threshold = parse_model(body.model)
    check_policy(caller, policy, body.model, state.settings)
    chore = chore_of(body, request.headers, state.settings.server)
    if chore is not None:  # a front-end's chore: the device answers; no thread, no cloud
        return await answer_chore(chore, body, state.local)
    if body.n not in (None, 1):
        raise bad("n must be 1: a turn has one answer", "n")
    tools = check_tools(body.tools, body.tool_choice)  # routed by the graph's tools rule
    named = thread_header(request.headers.get("x-tmo-thread-id"))  # malformed: 400 here
    header = state.settings.server.thread_header if named is None else None
    chat_thread = (
        None if header is None else header_thread(request.headers.get(header), caller.user, header)
    )
    scope = scope_of(caller.user, chat_thread)
    # Hashing and decoding inline images and clips is CPU work: off the event loop.
    history = await asyncio.to_thread(history_of, body.messages)
    place = await locate(history, scope, state.chains, named, chat_thread, state.runner.turns_done)
    _check_limits(body, state, history, place)
    chat = await asyncio.to_thread(Chat, body.messages, place.thread_id is None)
    thread_id = await _thread(place, caller, state, header)
    done = 0 if place.thread_id is None else await state.runner.turns_done(thread_id)
    stored = [] if place.thread_id is None else await state.runner.stored(thread_id)
    messages = await asyncio.to_thread(chat.new_messages, stored)
    after = _recorder(state, scope, history, thread_id, complete(place, done))
    context = caller_context(
        state.settings, caller, policy, threshold, max_answer_tokens=body.answer_tokens()
    )
    inputs: dict[str, Any] = {"messages": messages}
    if tools:
        inputs.update(tools=tools, tool_choice=body.tool_choice)
    queue = state.runner.start(inputs, thread_id, context, after)
    if body.stream:
        # The role chunk goes out at once; a failure of the turn comes as an error event.
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        keepalive_s = state.settings.server.keepalive_s
        return StreamingResponse(
            sse(queue, body.model, thread_id, include_usage, keepalive_s),
            media_type="text/event-stream",
            headers={"x-tmo-thread-id": thread_id, "cache-control": "no-cache"},
        )
    event: Event = await queue.get()
    while not isinstance(event, Finished):
        if isinstance(event, BaseException):
            raise api_error(event)
        event = await queue.get()
    reply = completion(body.model, event, thread_id)
    return JSONResponse(reply, headers=tmo_headers(reply["tmo"]))
