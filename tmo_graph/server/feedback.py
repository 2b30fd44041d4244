"""``POST /v1/feedback``: a user's score of one turn of their thread.

The body is ``{"thread_id": ..., "turn": ..., "score": ..., "comment": ...}``: ``turn`` as the
answer's ``tmo`` field reports it, ``score`` a number (1 / -1 for thumbs up / down),
``comment`` optional text. Only the thread's owner may score it (another user's thread, or an
unknown one, is the same 404 as the chat API's); the answer is ``201`` with the stored label.
The label goes to the labels table beside the threads, and a line to the audit log that keeps
the comment's length, never its words (:func:`tmo_graph.learning.feedback.record_feedback`).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tmo_graph.errors import TmoGraphError
from tmo_graph.learning.feedback import check_turn, record_feedback
from tmo_graph.server.auth import THREAD_ID, Caller, authenticate, named_caller
from tmo_graph.server.errors import ApiError, bad, invalid
from tmo_graph.server.limits import LimitExceeded, read_body
from tmo_graph.server.runtime import ServerState, server_state
from tmo_graph.threads.labels import MAX_COMMENT_CHARS

router = APIRouter()

MAX_FEEDBACK_BYTES = 64 * 1024
EXAMPLE = '{"thread_id": "<the x-tmo-thread-id of the answer>", "turn": 0, "score": 1}'


class FeedbackRequest(BaseModel):
    """The body; unknown fields are refused (a misspelt ``coment`` would be lost)."""

    model_config = ConfigDict(extra="forbid")

    thread_id: str = Field(pattern=THREAD_ID.pattern)
    turn: int = Field(ge=0, strict=True)
    score: float
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS)

    @field_validator("score", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, e.g. 1 or -1 (got {value!r:.40})")
        if not math.isfinite(value):
            raise ValueError("must be a finite number, e.g. 1 or -1")
        return value


def parse_feedback(raw: bytes) -> FeedbackRequest:
    """The body as a feedback request; a 400 naming what is wrong and showing the shape."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise bad(f"the body is not JSON; send {EXAMPLE}") from None
    if not isinstance(body, dict):
        raise bad(f"the body must be a JSON object: {EXAMPLE}")
    try:
        return FeedbackRequest.model_validate(body)
    except ValidationError as exc:
        error = invalid(exc.errors())
        error.message += f"; send {EXAMPLE} (comment optional)"
        first = exc.errors()[0]["loc"]
        error.param = str(first[0]) if first else None
        raise error from None


def _no_thread(thread_id: str) -> ApiError:
    # As the chat API: the same answer for an unknown thread and another user's.
    return ApiError(
        404,
        f"no thread {thread_id!r} for this caller; send the thread id an answer came with "
        "(its x-tmo-thread-id header)",
        "not_found_error",
        param="thread_id",
        code="thread_not_found",
    )


@router.post("/v1/feedback", status_code=201)
async def feedback(
    request: Request,
    caller: Annotated[Caller, Depends(authenticate)],
    state: Annotated[ServerState, Depends(server_state)],
) -> JSONResponse:
    try:
        raw = await read_body(
            request.stream(), request.headers.get("content-length"), MAX_FEEDBACK_BYTES
        )
    except LimitExceeded as exc:
        raise ApiError(exc.status, exc.message, param=exc.param) from None
    body = parse_feedback(raw)
    end_user_header = state.settings.server.end_user_header
    end_user = request.headers.get(end_user_header) if end_user_header else None
    caller = named_caller(
        caller, None, request.headers.get("x-tmo-user"), end_user, end_user_header
    )
    owner = await state.owners.owner(body.thread_id)
    done = await state.runner.turns_done(body.thread_id)
    # Without keys (loopback only) the caller is trusted with a thread no one owns yet, as
    # the chat API is; feedback never claims it.
    trusted = owner is None and caller.key is None and done > 0
    if owner != caller.user and not trusted:
        raise _no_thread(body.thread_id)
    try:
        check_turn(body.turn, done)
    except TmoGraphError as exc:
        raise ApiError(404, str(exc), "not_found_error", "turn", "turn_not_found") from None
    label = await record_feedback(
        state.labels,
        thread_id=body.thread_id,
        turn=body.turn,
        score=body.score,
        user_id=caller.user,
        comment=body.comment,
        audit=state.audit,
        key_id=caller.key.id if caller.key else None,
    )
    return JSONResponse(
        {
            "object": "feedback",
            "thread_id": label.thread_id,
            "turn": label.turn,
            "user": label.user_id,
            "source": label.source,
            "score": label.score,
            "comment": label.comment,
            "created": label.created,
        },
        status_code=201,
    )
