"""The LangGraph server's auth (``langgraph.json`` ``"auth": {"path": "./graphs/auth.py:auth"}``)
on tmo-graph's API keys: ``langgraph dev`` and a LangGraph deployment accept the keys
``tmo-graph serve`` accepts, and keep each user's threads their own, as the server does.

- **Who**: the key in ``Authorization: Bearer <key>`` or ``x-api-key`` (where langgraph_sdk
  and agent-chat-ui send theirs), checked against the settings' keys (``server.keys_file``,
  ``server.keys``; read again when the file changes, as the server does). The key's user is
  the run's user (``langgraph_auth_user``; :func:`tmo_graph.graph._run_context` puts it over
  the Context's ``user_id``, with the key's id, daily cap and policies). A trusted proxy's
  key may name its end user in ``x-tmo-user`` (``<key user>/<end user>``). No key, an unknown
  key or a revoked one: 401.
- **Which threads**: a thread made by a user carries ``metadata.owner``; reading, searching,
  updating, deleting a thread and running on it are filtered to the caller's, so another
  user's thread is a 404 and never listed. Runs are stamped with their owner too.
  Assistants may be read (the graph's own), not made or changed; the store only under
  namespaces that name the caller; anything else (crons): 403.
- **No keys configured**: as ``tmo-graph serve --no-auth``: only peers on 127.0.0.1 are
  served, the Context's ``user_id`` stands and threads are not filtered.
- LangGraph Studio's developer (``StudioUser``, signed in through LangSmith) is let through
  unfiltered: the deployment's owner.

Not carried over: the per-key request rate (``server.rate``), since a LangGraph UI polls the
API many times per turn.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from langgraph_sdk import Auth

from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import KEYLESS_PERMISSION
from tmo_graph.sections import ApiKey
from tmo_graph.server.auth import Caller, named_caller
from tmo_graph.server.errors import ApiError
from tmo_graph.server.keys import KeyFileBroken, KeyRing
from tmo_graph.settings import Settings

log = logging.getLogger(__name__)

# The permission of a request served without keys (none configured, 127.0.0.1): the graph
# keeps the Context's user_id for it (tmo_graph.graph.platform_user), as `--no-auth` does.
KEYLESS = KEYLESS_PERMISSION


def _header(headers: dict[bytes, bytes], name: str) -> str | None:
    value = headers.get(name.lower().encode())
    return None if value is None else value.decode("latin-1")


def _token(headers: dict[bytes, bytes]) -> str | None:
    """The key in ``Authorization: Bearer`` or ``x-api-key`` (None: neither header)."""
    authorization = _header(headers, "authorization")
    if authorization is not None and authorization.strip():
        scheme, _, token = authorization.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""
    api_key = _header(headers, "x-api-key")
    return None if api_key is None else api_key.strip()


def _refused(status: int, detail: str) -> Auth.exceptions.HTTPException:
    return Auth.exceptions.HTTPException(status_code=status, detail=detail)


def _is_loopback(scope: dict[str, Any]) -> bool:
    client = scope.get("client")
    host = client[0] if client else None
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _key(ring: KeyRing, token: str | None) -> ApiKey:
    """The valid key ``token`` is, else the 401 (503: the key file is broken)."""
    if token is None:
        raise _refused(
            401,
            "no API key: send 'Authorization: Bearer <key>' (or x-api-key); "
            "`tmo-graph keys add` makes one",
        )
    try:
        key = ring.find(token) if token else None
    except KeyFileBroken:
        raise _refused(503, "the server cannot read its API key file; see its log") from None
    if key is None:
        log.info("refused a request with an unknown API key")
        raise _refused(401, "the API key is not valid; check it, or ask for one")
    if key.revoked:
        log.info("refused a request with revoked API key %s", key.id)
        raise _refused(401, "the API key was revoked; ask the server's operator for a new one")
    return key


def _caller(key: ApiKey, headers: dict[bytes, bytes], settings: Settings) -> Caller:
    """The key's user, or a trusted proxy's end user (``x-tmo-user``, the end-user header)."""
    end_header = settings.server.end_user_header
    try:
        return named_caller(
            Caller(key.user, key),
            None,
            _header(headers, "x-tmo-user"),
            _header(headers, end_header) if end_header else None,
            end_header,
        )
    except ApiError as exc:
        raise _refused(exc.status, exc.message) from None


def _unfiltered(ctx: Auth.types.AuthContext) -> bool:
    """Studio's developer, or a request served without keys: no owner filter."""
    return isinstance(ctx.user, Auth.types.StudioUser) or KEYLESS in ctx.permissions


def make_auth(settings: Settings) -> Auth:
    """The ``Auth`` of a LangGraph server on ``settings``' API keys (module docstring)."""
    has_keys = bool(settings.server.keys) or settings.server.keys_file is not None
    ring = KeyRing(settings.server.keys, settings.server.keys_file) if has_keys else None
    auth = Auth()

    @auth.authenticate
    async def authenticate(
        headers: dict[bytes, bytes], scope: dict[str, Any]
    ) -> Auth.types.MinimalUserDict:
        if ring is None:
            if not _is_loopback(scope):
                raise _refused(403, "this server has no API keys and answers only on 127.0.0.1")
            return {"identity": "anonymous", "permissions": [KEYLESS]}
        caller = _caller(_key(ring, _token(headers)), headers, settings)
        key = caller.key
        assert key is not None
        user: dict[str, Any] = {
            "identity": caller.user,
            "key_id": key.id,
            "daily_cost_cap_usd": key.daily_cost_cap_usd,
            "policies": list(key.policies) if key.policies is not None else None,
        }
        return user  # type: ignore[return-value]

    @auth.on.threads
    async def own_threads(
        ctx: Auth.types.AuthContext, value: dict[str, Any]
    ) -> Auth.types.FilterType | None:
        """Every thread action: a new thread (and a run) is stamped with its owner; reading,
        searching, updating, deleting and running are filtered to the caller's threads."""
        if _unfiltered(ctx):
            return None
        if ctx.action in ("create", "create_run"):
            if value.get("metadata") is None:
                value["metadata"] = {}
            value["metadata"]["owner"] = ctx.user.identity  # in place: the server reads it
        return {"owner": ctx.user.identity}

    @auth.on.assistants
    async def read_assistants(ctx: Auth.types.AuthContext, value: dict[str, Any]) -> None:
        """The graph's assistants may be read and searched; not made, changed or deleted."""
        if _unfiltered(ctx) or ctx.action in ("read", "search"):
            return None
        raise _refused(403, "assistants are the server's; run the graph's own ('tmo')")

    @auth.on.store()
    async def own_namespaces(ctx: Auth.types.AuthContext, value: dict[str, Any]) -> None:
        """The store only under namespaces that name the caller (memory is per user)."""
        if _unfiltered(ctx):
            return None
        namespace = tuple(value.get("namespace") or ())
        if ctx.user.identity not in namespace:
            raise _refused(403, "the store may be read only under a namespace naming you")
        return None

    @auth.on
    async def deny_the_rest(ctx: Auth.types.AuthContext, value: Any) -> bool:
        """Anything not above (crons, ...): only Studio's developer or a keyless loopback."""
        return _unfiltered(ctx)

    return auth


def platform_auth(settings: Settings) -> Auth:
    """:func:`make_auth`, with a bad key file named as the operator's error at start."""
    try:
        return make_auth(settings)
    except TmoGraphError as exc:
        log.error("the LangGraph server's auth cannot start: %s", exc)
        raise
