"""The LangGraph server's auth handler on its own: which requests it lets in, as whom, and
how it stamps and filters threads (end to end: tests/integration_tests/test_platform.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langgraph_sdk import Auth

from tmo_graph.graph import platform_user
from tmo_graph.server.keys import add_key, revoke_key
from tmo_graph.server.platform_auth import KEYLESS, make_auth
from tmo_graph.settings import Settings

LOOPBACK = {"client": ("127.0.0.1", 5000)}
REMOTE = {"client": ("203.0.113.9", 5000)}


def _who(auth: Auth, headers: dict[str, str], scope: dict[str, Any] = LOOPBACK) -> Any:
    handler = auth._authenticate_handler
    assert handler is not None
    raw = {k.lower().encode(): v.encode() for k, v in headers.items()}
    return asyncio.run(handler(headers=raw, scope=scope))  # type: ignore[call-arg]


def _status(auth: Auth, headers: dict[str, str], scope: dict[str, Any] = LOOPBACK) -> int:
    with pytest.raises(Auth.exceptions.HTTPException) as refused:
        _who(auth, headers, scope)
    return refused.value.status_code


@pytest.fixture
def keyed(tmp_path: Path) -> tuple[Auth, dict[str, str]]:
    file = tmp_path / "keys.yaml"
    secrets = {
        "alice": add_key(file, "alice", "alice-key", daily_cost_cap_usd=0.25)[1],
        "owui": add_key(file, "owui", "owui-key", proxy=True)[1],
        "carol": add_key(file, "carol", "carol-key")[1],
    }
    revoke_key(file, "carol-key")
    return make_auth(Settings(server={"keys_file": str(file)})), secrets


def test_a_key_in_either_header_is_its_user_with_its_id_and_cap(
    keyed: tuple[Auth, dict[str, str]],
) -> None:
    auth, secrets = keyed
    for headers in (
        {"authorization": f"Bearer {secrets['alice']}"},
        {"x-api-key": secrets["alice"]},
    ):
        user = _who(auth, headers, REMOTE)
        assert (user["identity"], user["key_id"], user["daily_cost_cap_usd"]) == (
            "alice",
            "alice-key",
            0.25,
        )
    # A trusted proxy names its end user; an ordinary key may not name another.
    assert _who(auth, {"x-api-key": secrets["owui"], "x-tmo-user": "u1"})["identity"] == "owui/u1"
    assert _status(auth, {"x-api-key": secrets["alice"], "x-tmo-user": "bob"}) == 403


def test_no_key_a_bad_one_or_a_revoked_one_is_a_401(keyed: tuple[Auth, dict[str, str]]) -> None:
    auth, secrets = keyed
    for headers in (
        {},
        {"authorization": "Bearer tmo-nope"},
        {"authorization": "Basic abc"},
        {"x-api-key": ""},
        {"x-api-key": secrets["carol"]},
    ):
        assert _status(auth, headers) == 401, headers


def test_without_keys_only_loopback_peers_are_served_unfiltered() -> None:
    auth = make_auth(Settings())
    user = _who(auth, {})
    assert user["identity"] == "anonymous" and KEYLESS in user["permissions"]
    assert _status(auth, {}, REMOTE) == 403
    assert _status(auth, {}, {}) == 403  # no peer address known: not loopback
    # The graph keeps the Context's user for such a request, and for Studio's developer.
    assert platform_user(user) is None
    assert platform_user({"identity": "langgraph-studio-user", "kind": "StudioUser"}) is None
    assert platform_user({"identity": "alice", "key_id": "k"}) == {
        "identity": "alice",
        "key_id": "k",
    }
    assert platform_user(None) is None


def _on(auth: Auth, resource: str, action: str, user: dict[str, Any], value: Any) -> Any:
    handler = auth._handlers.get((resource, action)) or auth._handlers.get((resource, "*"))
    fn = handler[-1] if handler else auth._global_handlers[-1]

    class User(dict[str, Any]):
        identity = user["identity"]

    ctx = Auth.types.AuthContext(
        permissions=list(user.get("permissions") or []),
        user=User(user),  # type: ignore[arg-type]
        resource=resource,  # type: ignore[arg-type]
        action=action,  # type: ignore[arg-type]
    )
    return asyncio.run(fn(ctx=ctx, value=value))


def test_threads_are_stamped_with_their_owner_and_filtered_to_it(
    keyed: tuple[Auth, dict[str, str]],
) -> None:
    auth, _ = keyed
    alice = {"identity": "alice"}
    metadata: dict[str, Any] = {"owner": "bob"}  # forged by the client
    value = {"metadata": metadata}
    assert _on(auth, "threads", "create", alice, value) == {"owner": "alice"}
    assert metadata == {"owner": "alice"}  # the platform's own dict, changed in place
    for action in ("read", "search", "update", "delete", "create_run"):
        assert _on(auth, "threads", action, alice, {"metadata": {}}) == {"owner": "alice"}
    keyless = {"identity": "anonymous", "permissions": [KEYLESS]}
    assert _on(auth, "threads", "search", keyless, {}) is None
    assert _on(auth, "assistants", "search", alice, {}) is None
    with pytest.raises(Auth.exceptions.HTTPException):
        _on(auth, "assistants", "create", alice, {})
    assert _on(auth, "store", "search", alice, {"namespace": ("memory", "alice")}) is None
    with pytest.raises(Auth.exceptions.HTTPException):
        _on(auth, "store", "search", alice, {"namespace": ("memory", "bob")})
    assert _on(auth, "crons", "create", alice, {}) is False
