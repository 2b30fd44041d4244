"""Who is asking, and what they may do: the API key (:func:`authenticate`, a FastAPI
dependency of every ``/v1`` route), the user it proves, the models it may ask for and the
threads the user owns."""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from tmo_graph.context import Context
from tmo_graph.sections import POLICIES, USER, ApiKey
from tmo_graph.server.errors import ApiError, bad
from tmo_graph.server.keys import KeyFileBroken
from tmo_graph.server.runtime import ServerState, server_state
from tmo_graph.server.schemas import model_id
from tmo_graph.settings import Settings
from tmo_graph.threads.owners import ThreadOwners

log = logging.getLogger(__name__)

DEFAULT_USER = "anonymous"
THREAD_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True)
class Caller:
    """Who is asking: the user, and the API key that proved it (None without keys)."""

    user: str
    key: ApiKey | None


def _bearer(request: Request) -> str | None:
    """The key in ``Authorization: Bearer <key>`` ('' when the header is malformed), else in
    ``x-api-key`` (where langgraph_sdk and LangGraph's UIs send theirs)."""
    header = request.headers.get("authorization")
    if header is None:
        api_key = request.headers.get("x-api-key")
        return None if api_key is None else api_key.strip()
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _unauthorized(message: str, code: str) -> ApiError:
    return ApiError(
        401,
        message,
        param=None,
        code=code,
        headers={"www-authenticate": 'Bearer realm="tmo-graph"'},
    )


def _is_remote_peer(request: Request) -> bool:
    """Whether the peer is a known address other than loopback (a test client or a unix
    socket has no such address)."""
    host = request.client.host if request.client else None
    try:
        return host is not None and not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def authenticate(
    request: Request, state: Annotated[ServerState, Depends(server_state)]
) -> Caller:
    """The caller's key (401 without a valid one) within its rate (429); without keys, the
    anonymous caller of a loopback peer. Runs before the body is read: strangers cost nothing."""
    return check_key(_bearer(request), request, state)


def check_key(token: str | None, request: Request, state: ServerState) -> Caller:
    """:func:`authenticate` on a key found elsewhere (None: none sent), e.g. the console's
    cookie."""
    if state.keys is None:
        if _is_remote_peer(request):
            raise ApiError(
                403,
                "this server runs without API keys and answers only on 127.0.0.1",
                "permission_error",
                code="loopback_only",
            )
        return Caller(DEFAULT_USER, None)
    if token is None:
        raise _unauthorized(
            "no API key: send it as 'Authorization: Bearer <key>' (the openai client's "
            "api_key); `tmo-graph keys add` makes one",
            "missing_api_key",
        )
    try:
        key = state.keys.ring.find(token) if token else None
    except KeyFileBroken:
        raise ApiError(
            503,
            "the server cannot read its API key file; its operator must fix it "
            "(the server log says what is wrong)",
            "server_error",
            code="keys_unavailable",
        ) from None
    if key is None:
        log.info("refused a request with an unknown API key")
        raise _unauthorized(
            "the API key is not valid; check it, or ask the server's operator for one",
            "invalid_api_key",
        )
    if key.revoked:
        log.info("refused a request with revoked API key %s", key.id)
        raise _unauthorized(
            "the API key was revoked; ask the server's operator for a new one",
            "revoked_api_key",
        )
    rate = key.rate or state.settings.server.rate
    wait = state.keys.limiter.hit(key.id, rate)
    if wait is not None:
        raise ApiError(
            429,
            f"this API key is over its rate of {rate}; retry in {wait} s "
            "(the Retry-After header), or ask for a higher rate",
            "rate_limit_error",
            code="rate_limit_exceeded",
            headers={"retry-after": str(wait)},
        )
    return Caller(key.user, key)


def named_caller(
    caller: Caller,
    body_user: str | None,
    header_user: str | None,
    end_user: str | None = None,
    end_user_header: str | None = None,
) -> Caller:
    """The caller a request speaks for, from the user it names: the ``user`` field, the
    ``x-tmo-user`` header or ``end_user`` (the ``end_user_header`` a front-end forwards),
    which must agree (else 400).

    - An ordinary key: the key's user; a request naming another is a 403.
    - A trusted proxy's key (``proxy: true``): the end user named, as ``<key user>/<end
      user>``, so end users behind one key keep their own threads, memory, daily cap and
      audit identity; naming none, the key's user itself.
    - Without keys (``no_auth``) the request is trusted: the user it names, or ``anonymous``.
    """
    header = end_user_header or "the end-user header"
    given = [
        (value.strip(), where)
        for value, where in ((body_user, "user"), (header_user, "x-tmo-user"), (end_user, header))
        if value is not None and value.strip()
    ]
    if len({value for value, _ in given}) > 1:
        (first, one), (second, other) = given[0], next(g for g in given if g[0] != given[0][0])
        raise bad(
            f"{one} ({first!r:.80}) and {other} ({second!r:.80}) name different users; "
            "send one of them",
            one,
        )
    named, where = given[0] if given else (None, "user")
    key = caller.key
    if key is None:
        return Caller(named or DEFAULT_USER, None)
    if not key.proxy:
        if named is not None and named != caller.user:
            raise ApiError(
                403,
                f"{where} names another user than this API key's ({caller.user!r}); the key "
                "decides the user: leave it out (an operator can mark a front-end's key a "
                "trusted proxy, `tmo-graph keys add --proxy`, to let it name its end users)",
                "permission_error",
                param=where,
                code="user_mismatch",
            )
        return caller
    if named is None:
        return caller
    user = f"{key.user}/{named}"
    if len(user) > 128 or not USER.match(user):
        raise bad(
            f"{where} must name the end user in printable characters, at most "
            f"{127 - len(key.user)} of them with this key",
            where,
        )
    return Caller(user, key)


def allowed_policies(caller: Caller, settings: Settings) -> tuple[str, ...]:
    """The policies ``caller`` may ask for."""
    # 'learned' needs a trained policy file in the config; without one it cannot run.
    usable = [p for p in POLICIES if p != "learned" or settings.routing.policy_file]
    if caller.key is not None and caller.key.policies is not None:
        usable = [p for p in usable if p in caller.key.policies]
    return tuple(usable)


def check_policy(caller: Caller, policy: str, model: str, settings: Settings) -> None:
    """Refuse (403) a model the caller's key may not use."""
    key = caller.key
    if key is not None and key.policies is not None and policy not in key.policies:
        names = ", ".join(model_id(p) for p in allowed_policies(caller, settings))
        raise ApiError(
            403,
            f"this API key may not use the model {model!r:.80}; it may use: {names}",
            "permission_error",
            param="model",
            code="model_not_allowed",
        )


def caller_context(
    settings: Settings, caller: Caller, policy: str, threshold: float | None, **more: Any
) -> Context:
    """The graph's context for a turn of ``caller``'s: its user, the policy (and confidence
    threshold) its model id named, its key's daily cost cap and id; ``more``: other fields."""
    key = caller.key
    return Context.from_settings(
        settings,
        user_id=caller.user,
        policy=policy,
        confidence_threshold=threshold,
        daily_cost_cap_usd=key.daily_cost_cap_usd if key else None,
        api_key_id=key.id if key else None,
        **more,
    )


def thread_header(header: str | None) -> str | None:
    """The thread id a request names, checked; None when it starts a new thread."""
    if header is None or not header.strip():
        return None
    thread_id = header.strip()
    if not THREAD_ID.match(thread_id):
        raise bad(
            "the x-tmo-thread-id header must be 1-128 letters, digits or . _ : -; "
            "leave it out to start a new thread",
            "x-tmo-thread-id",
        )
    return thread_id


def new_thread_id() -> str:
    """A thread id no one can guess: 128 bits from the operating system's CSPRNG."""
    return secrets.token_hex(16)


def _no_thread(thread_id: str) -> ApiError:
    # The same answer for a thread that does not exist and one of another user: a caller
    # cannot tell them apart, so ids cannot be probed.
    return ApiError(
        404,
        f"no thread {thread_id!r} for this caller; leave the x-tmo-thread-id header out to "
        "start a new thread (its id comes back in that header)",
        "not_found_error",
        param="x-tmo-thread-id",
        code="thread_not_found",
    )


async def thread_of(thread_id: str | None, caller: Caller, owners: ThreadOwners) -> str:
    """The turn's thread (a new one, the caller's, when ``thread_id`` is None); 404 for a
    thread that is not the caller's."""
    if thread_id is None:
        thread_id = new_thread_id()
        await owners.claim(thread_id, caller.user)
        return thread_id
    owner = await owners.owner(thread_id)
    if owner is None and caller.key is None:
        # Without keys the caller is trusted (loopback): a thread no one owns yet, e.g.
        # one `tmo-graph chat` started, is taken by the first user who names it.
        owner = await owners.claim(thread_id, caller.user)
    if owner != caller.user:
        raise _no_thread(thread_id)
    return thread_id
