"""``GET /v1/threads/{thread_id}/media/{sha256}``: a thread's stored image or clip, for the
thread's owner, so a chat UI can show the images of past messages.

A thread's messages name their media by this URL (:func:`tmo_graph.media.store.media_url`),
relative to the server that holds the thread: ``tmo-graph serve``, or ``langgraph dev`` with
these routes mounted (``graphs/openai_app.py``). The request carries the same API key as every
``/v1`` route (``Authorization: Bearer``; a browser UI fetches the image with it and shows the
result, since an ``<img>`` tag cannot send the header). The answer is the stored bytes with
their content type, only when all of these hold, else the same 404 (so ids and hashes cannot
be probed):

- the hash is 64 hex digits and its bytes are in the media folder (no other path is looked
  at: no traversal);
- the thread is the caller's: its owner in the server's thread store, or, on ``langgraph
  dev``, the ``owner`` the platform's auth stamped on it (``graphs/auth.py``);
- one of the thread's messages names that hash (a thread serves its own media only).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

from tmo_graph.media.store import MEDIA_TYPES, parse_media_url, stored_file
from tmo_graph.server.auth import Caller, authenticate, named_caller
from tmo_graph.server.errors import ApiError
from tmo_graph.server.runtime import ServerState, server_state

router = APIRouter()


def names_media(messages: Iterable[Any], sha256: str) -> bool:
    """Whether a message (LangChain's or its JSON form) holds a block naming ``sha256``."""
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else message.content
        if not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, dict):
                continue
            url = block.get("url")
            parsed = parse_media_url(url) if isinstance(url, str) else None
            if block.get("id") == sha256 or (parsed is not None and parsed[1] == sha256):
                return True
    return False


async def _own_thread(state: ServerState, thread_id: str, caller: Caller, sha256: str) -> bool:
    """The server's thread: owned by the caller and naming the media."""
    if await state.owners.owner(thread_id) != caller.user:
        return False
    return names_media(await state.runner.stored(thread_id), sha256)


async def _platform_thread(thread_id: str, caller: Caller, sha256: str) -> bool:
    """A thread of the LangGraph server this app is mounted on: the owner its auth stamped
    (a thread without one, made without keys, only for a caller without keys) and its
    messages, read through the platform's in-process client."""
    from langgraph_sdk import get_client
    from langgraph_sdk.errors import NotFoundError

    client = get_client()  # in-process: the platform's own API, past its auth
    try:
        thread = await client.threads.get(thread_id)
    except NotFoundError:
        return False
    owner = (thread.get("metadata") or {}).get("owner")
    if owner != caller.user and not (owner is None and caller.key is None):
        return False
    values = thread.get("values")
    messages = values.get("messages") if isinstance(values, dict) else None
    return names_media(messages or [], sha256)


def media_response(path: Path) -> FileResponse:
    """A stored image or clip as the answer to its URL (the API's route and the console's)."""
    return FileResponse(
        path,
        media_type=MEDIA_TYPES[path.suffix[1:]],
        headers={
            # Content-addressed: the bytes behind a URL never change; private to the caller.
            "cache-control": "private, max-age=86400, immutable",
            "x-content-type-options": "nosniff",
            "content-security-policy": "default-src 'none'; sandbox",
        },
    )


def _not_found(thread_id: str, sha256: str) -> ApiError:
    return ApiError(
        404,
        f"no media {sha256[:64]!r} in thread {thread_id[:128]!r} for this caller; the URLs "
        "come from the thread's own messages",
        "not_found_error",
        code="media_not_found",
    )


@router.get("/v1/threads/{thread_id}/media/{sha256}", response_model=None)
async def thread_media(
    thread_id: str,
    sha256: str,
    request: Request,
    caller: Annotated[Caller, Depends(authenticate)],
    state: Annotated[ServerState, Depends(server_state)],
) -> FileResponse:
    end_header = state.settings.server.end_user_header
    caller = named_caller(
        caller,
        None,
        request.headers.get("x-tmo-user"),
        request.headers.get(end_header) if end_header else None,
        end_header,
    )
    path = stored_file(state.media_dir, sha256)
    if path is None:
        raise _not_found(thread_id, sha256)
    held = await _own_thread(state, thread_id, caller, sha256)
    if not held and state.platform_threads:
        held = await _platform_thread(thread_id, caller, sha256)
    if not held:
        raise _not_found(thread_id, sha256)
    return media_response(path)
