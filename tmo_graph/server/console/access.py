"""Who is looking at the console: the API key, from the console's cookie (set by the login
form) or an ``Authorization: Bearer`` header (scripts, tests), checked as every ``/v1`` request
is (:func:`tmo_graph.server.auth.check_key`: valid, not revoked, within its rate).

The cookie holds the key itself, ``HttpOnly`` (page scripts cannot read it), ``SameSite=Strict``
(another site's page cannot make the browser send it), ``Path=/console`` and ``Secure`` on
https; a key never goes into a URL, so it never reaches an access log. A request that changes
something (the chat box) must also carry ``x-tmo-console: 1``, which a cross-site form cannot.

What a caller sees: its user's threads (a trusted proxy's key: also its end users',
``<user>/<end user>``); an admin key (``admin: true``) every user's threads and the overview;
without keys (``--no-auth``, 127.0.0.1 only) the operator at the machine, as an admin.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from tmo_graph.server.auth import Caller, check_key
from tmo_graph.server.errors import ApiError
from tmo_graph.server.runtime import ServerState

COOKIE = "tmo_console"
CSRF_HEADER = "x-tmo-console"


@dataclass(frozen=True)
class Viewer:
    """The console's caller: who, and whether an admin."""

    caller: Caller

    @property
    def user(self) -> str:
        return self.caller.user

    @property
    def admin(self) -> bool:
        key = self.caller.key
        return key is None or key.admin  # no key: the keyless loopback server's operator

    def sees(self, owner: str | None) -> bool:
        """Whether this viewer may open a thread of ``owner`` (None: no one's)."""
        if owner is None:
            return False
        if self.admin or owner == self.user:
            return True
        key = self.caller.key
        return key is not None and key.proxy and owner.startswith(f"{self.user}/")

    def owns(self, owner: str | None) -> bool:
        """Whether the thread is this viewer's own (the chat box continues only those)."""
        return owner is not None and owner == self.user


def key_of(request: Request) -> str | None:
    """The key the request carries: the Bearer header, else x-api-key, else the cookie."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""
    api_key = request.headers.get("x-api-key")
    if api_key is not None:
        return api_key.strip()
    return request.cookies.get(COOKIE)


def viewer_of(request: Request, state: ServerState) -> Viewer:
    """The viewer (401 / 403 / 429 as for ``/v1``)."""
    return Viewer(check_key(key_of(request), request, state))


def require_admin(viewer: Viewer) -> None:
    """The overview is an admin's; others get the 404 of a page that does not exist."""
    if not viewer.admin:
        raise ApiError(
            404,
            "no such console page for this key; the overview needs an admin key "
            "(`tmo-graph keys add --admin`)",
            "not_found_error",
            code="not_found",
        )


def require_csrf(request: Request) -> None:
    """A changing request must come from the console's own script (400 otherwise)."""
    if request.headers.get(CSRF_HEADER) != "1":
        raise ApiError(
            400,
            f"send the {CSRF_HEADER}: 1 header (the console's page does); a cross-site form cannot",
            param=CSRF_HEADER,
            code="missing_console_header",
        )
