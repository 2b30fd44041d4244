"""API keys of the chatbot backend (`tmo-graph serve`): who may call it, as whom, for what.

A key is a random secret (``tmo-`` and 43 URL-safe characters, 256 bits) that its holder
sends as ``Authorization: Bearer <key>`` (the ``openai`` client's ``api_key``). The server
keeps only its SHA-256: a key file can be read without giving a key away. Each entry names
the key's id (what logs and the audit log show), its user (whose threads, memory and daily
cap the requests use) and, optionally, the policies it may use, its own daily cost cap, its
request rate and whether it is revoked::

    keys:
      - id: alice-laptop
        user: alice
        sha256: 5f1c...64 hex digits...
        policies: [cascade, always-local]   # default: every policy
        daily_cost_cap_usd: 0.50            # default: spending.daily_cost_cap_usd only
        rate: 30/minute                     # default: server.rate
        proxy: false                        # true: a trusted proxy (below)
        admin: false                        # true: the console shows every user's threads
        revoked: false

Keys come from a YAML or JSON file of that shape (``server.keys_file``, ``--keys FILE``) and
from the settings themselves (``server.keys``: the same list, e.g.
``TMO_SERVER__KEYS='[{"id": ..., "user": ..., "sha256": ...}]'``). ``tmo-graph keys add``
makes a key, prints it once and writes only its hash. The file is read again whenever it
changes, so revoking a key takes effect on the next request; a file that no longer parses
refuses every key until it is fixed (a broken edit must not keep a revoked key alive).

A trusted proxy's key (``proxy: true``, e.g. the one Open WebUI holds for all its users) may
name the end user each request is for; that end user then acts as ``<user>/<end user>``
(:func:`tmo_graph.server.auth.named_caller`). No other key's user may lie in that namespace.

An admin key (``admin: true``, ``tmo-graph keys add --admin``) sees every user's threads and
the overview in the console (``/console``, :mod:`tmo_graph.server.console`); in ``/v1`` it
is an ordinary key of its user (its own threads only).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tmo_graph.errors import TmoGraphError
from tmo_graph.sections import ApiKey

log = logging.getLogger("tmo_graph.server.keys")

KEY_PREFIX = "tmo-"


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[ApiKey] = Field(default_factory=list)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh secret key (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _problem(exc: ValidationError, where: str, raw: Any) -> str:
    """The first pydantic error as 'FILE: key N (id X): field: message'."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    entry = ""
    if len(loc) >= 2 and loc[0] == "keys" and loc[1].isdigit():
        index = int(loc[1])
        key_id = None
        if isinstance(raw, dict) and isinstance(raw.get("keys"), list):
            item = raw["keys"][index] if index < len(raw["keys"]) else None
            key_id = item.get("id") if isinstance(item, dict) else None
        entry = f"key {index}" + (f" (id {key_id!r:.70})" if isinstance(key_id, str) else "")
        loc = loc[2:]
    field = ".".join(loc)
    message = str(err["msg"]).removeprefix("Value error, ")
    parts = [p for p in (entry, f"`{field}`" if field else "") if p]
    return f"{where}: {' '.join(parts)}: {message}" if parts else f"{where}: {message}"


def read_key_file(path: str | Path) -> list[ApiKey]:
    """The keys in a YAML or JSON key file, each entry checked; a bad entry is named by its
    position and id."""
    path = Path(path)
    fix = "see the key file format in `tmo-graph keys --help`; `tmo-graph keys add` writes one"
    if not path.is_file():
        raise TmoGraphError(f"key file {path} does not exist", f"create it: {fix}")
    try:
        raw: Any = yaml.safe_load(path.read_text()) or {}  # JSON is YAML too
    except (OSError, UnicodeDecodeError) as exc:
        raise TmoGraphError(f"key file {path} cannot be read ({exc})", fix) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TmoGraphError(f"key file {path} is not valid YAML or JSON{at}", fix) from None
    try:
        keys = KeyFile.model_validate(raw).keys
    except ValidationError as exc:
        raise TmoGraphError(_problem(exc, f"key file {path}", raw), fix) from None
    _check_unique(keys, f"key file {path}")
    return keys


def _check_unique(keys: Sequence[ApiKey], where: str) -> None:
    """Every id and hash once; no user inside a trusted proxy's end-user namespace (such a
    key would act as one of the proxy's end users)."""
    for proxy in (k for k in keys if k.proxy):
        for key in keys:
            if key.user.startswith(f"{proxy.user}/"):
                raise TmoGraphError(
                    f"{where}: the user {key.user!r} of key {key.id!r} lies in the end-user "
                    f"namespace of trusted proxy key {proxy.id!r} ({proxy.user}/...)",
                    "give that key a user without the proxy's user and a '/' in front",
                )
    for attr in ("id", "sha256"):
        seen: set[str] = set()
        for key in keys:
            value = getattr(key, attr)
            if value in seen:
                what = f"id {key.id!r}" if attr == "id" else f"hash of key {key.id!r}"
                raise TmoGraphError(
                    f"{where}: the {what} appears twice", "give every key its own id and secret"
                )
            seen.add(value)


def add_key(
    path: str | Path,
    user: str,
    key_id: str | None = None,
    policies: Sequence[str] | None = None,
    daily_cost_cap_usd: float | None = None,
    rate: str | None = None,
    proxy: bool = False,
    admin: bool = False,
) -> tuple[ApiKey, str]:
    """Make a key for ``user`` (``proxy``: a trusted proxy's; ``admin``: the console shows it
    every user's threads), append its entry (hash only)
    to the key file at ``path`` (created if missing, mode 0600); the entry and the key,
    which is shown nowhere else."""
    path = Path(path)
    keys = read_key_file(path) if path.exists() else []
    key_id = key_id or f"{re.sub(r'[^A-Za-z0-9._-]', '-', user[:40])}-{secrets.token_hex(3)}"
    if any(k.id == key_id for k in keys):
        raise TmoGraphError(
            f"key file {path} already has a key with id {key_id!r}", "pick another --id"
        )
    secret = new_key()
    values: dict[str, Any] = {"id": key_id, "user": user, "sha256": hash_key(secret)}
    if policies:
        values["policies"] = list(policies)
    if daily_cost_cap_usd is not None:
        values["daily_cost_cap_usd"] = daily_cost_cap_usd
    if rate is not None:
        values["rate"] = rate
    if proxy:
        values["proxy"] = True
    if admin:
        values["admin"] = True
    try:
        entry = ApiKey.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        raise TmoGraphError(f"the new key's {field}: {message}", "correct that option") from None
    _check_unique([*keys, entry], f"key file {path} with the new key")
    _write_keys(path, [*keys, entry])
    return entry, secret


def revoke_key(path: str | Path, key_id: str) -> ApiKey:
    """Mark the key ``key_id`` revoked in the key file; a server reading it refuses the key
    from its next request on."""
    path = Path(path)
    keys = read_key_file(path)
    if not any(k.id == key_id for k in keys):
        known = ", ".join(k.id for k in keys) or "none"
        raise TmoGraphError(f"key file {path} has no key {key_id!r}", f"use one of: {known}")
    keys = [k.model_copy(update={"revoked": True}) if k.id == key_id else k for k in keys]
    _write_keys(path, keys)
    return next(k for k in keys if k.id == key_id)


def _write_keys(path: Path, keys: Sequence[ApiKey]) -> None:
    data = {"keys": [k.model_dump(mode="json", exclude_defaults=True) for k in keys]}
    text = (
        json.dumps(data, indent=2)
        if path.suffix == ".json"
        else yaml.safe_dump(data, sort_keys=False)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temporary, path)  # a server reading the file sees the old or the new one


class KeyFileBroken(Exception):
    """The key file changed and no longer parses: no key is accepted until it is fixed."""


class KeyRing:
    """The keys a server accepts: from the settings and, re-read when it changes, a file."""

    def __init__(self, keys: Sequence[ApiKey] = (), file: str | Path | None = None) -> None:
        self._static = list(keys)
        self.file = Path(file) if file is not None else None
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._from_file: list[ApiKey] = []
        self._broken: str | None = None
        if self.file is not None:
            self._from_file = read_key_file(self.file)  # at start a bad file fails loudly
            self._stamp = self._stat()
        _check_unique(self.keys(), "the API keys (settings and key file together)")
        if not self.keys():
            where = f"key file {self.file}" if self.file else "the settings"
            raise TmoGraphError(
                f"{where} holds no API key",
                "add one with `tmo-graph keys add --user NAME --file keys.yaml`",
            )

    def keys(self) -> list[ApiKey]:
        return [*self._static, *self._from_file]

    def _stat(self) -> tuple[int, int] | None:
        assert self.file is not None
        try:
            st = self.file.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _refresh(self) -> None:
        """Read the file again when it changed since the last look."""
        if self.file is None:
            return
        with self._lock:
            stamp = self._stat()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                keys = read_key_file(self.file)
                _check_unique([*self._static, *keys], f"key file {self.file}")
            except TmoGraphError as exc:
                self._broken = str(exc)
                log.error("API keys refused until the key file is fixed: %s", exc)
                return
            self._from_file, self._broken = keys, None
            log.info("key file %s read again: %d key(s)", self.file, len(keys))

    def find(self, secret: str) -> ApiKey | None:
        """The entry whose hash is the secret's (revoked or not), or None.

        Every entry is compared, each in constant time, so the time taken does not tell
        which entry, or how much of a hash, matched.
        """
        self._refresh()
        if self._broken is not None:
            raise KeyFileBroken(self._broken)
        digest = hash_key(secret)
        found = None
        for key in self.keys():
            if hmac.compare_digest(key.sha256, digest):
                found = key
        return found
