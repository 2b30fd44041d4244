"""The endpoints: ``GET /health``, ``GET /v1/models`` and ``POST /v1/chat/completions``
(plain and streamed). Every ``/v1`` route depends on :func:`tmo_graph.server.auth.authenticate`."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tmo_graph.context import Context
from tmo_graph.server.auth import (
    Caller,
    allowed_policies,
    authenticate,
    check_policy,
    named_caller,
    thread_header,
    thread_of,
)
from tmo_graph.server.chores import answer_chore, chore_of
from tmo_graph.server.errors import ApiError, api_error, bad
from tmo_graph.server.limits import LimitExceeded, check_request, read_body
from tmo_graph.server.messages import Chat, check_tools
from tmo_graph.server.responses import completion, sse, tmo_headers
from tmo_graph.server.runtime import ServerState, server_state
from tmo_graph.server.schemas import ChatRequest, model_id, parse_chat_request, parse_model
from tmo_graph.server.turns import Event, Finished

router = APIRouter()

AppState = Annotated[ServerState, Depends(server_state)]
Authenticated = Annotated[Caller, Depends(authenticate)]


@router.get("/health")
async def health(state: AppState) -> dict[str, Any]:
    return {
        "status": "ok",
        "active_turns": state.runner.active,
        "max_concurrent_turns": state.runner.max_concurrent_turns,
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
    """The body, within its size limits, as a chat request (400 naming what is wrong)."""
    limits = state.settings.server
    try:
        raw = await read_body(
            request.stream(), request.headers.get("content-length"), limits.max_body_bytes
        )
    except LimitExceeded as exc:
        code = "request_too_large" if exc.status == 413 else None
        raise ApiError(exc.status, exc.message, param=exc.param, code=code) from None
    body = parse_chat_request(raw)
    try:
        check_request(body.messages, body.model_extra or {}, limits)
    except LimitExceeded as exc:
        code = "request_too_large" if exc.status == 413 else "limit_exceeded"
        raise ApiError(exc.status, exc.message, param=exc.param, code=code) from None
    return body


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
    # Decoding inline images and clips is CPU work: off the event loop.
    chat = await asyncio.to_thread(Chat, body.messages, named is None)
    thread_id = await thread_of(named, caller, state.owners)
    stored = [] if named is None else await state.runner.stored(thread_id)
    messages = await asyncio.to_thread(chat.new_messages, stored)
    key = caller.key
    context = Context.from_settings(
        state.settings,
        user_id=caller.user,
        policy=policy,
        confidence_threshold=threshold,
        daily_cost_cap_usd=key.daily_cost_cap_usd if key else None,
        max_answer_tokens=body.answer_tokens(),
        api_key_id=key.id if key else None,
    )
    inputs: dict[str, Any] = {"messages": messages}
    if tools:
        inputs.update(tools=tools, tool_choice=body.tool_choice)
    queue = state.runner.start(inputs, thread_id, context)
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
    done = completion(body.model, event, thread_id)
    return JSONResponse(done, headers=tmo_headers(done["tmo"]))
