"""API keys: the key file (checked entry by entry), `tmo-graph keys`, the key ring the server
reads (hash comparison, revocation, a broken edit), keys from the environment, and the
`serve` options that decide whether keys are needed."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tmo_graph.cli.app import app
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.server.keys import (
    KeyFileBroken,
    KeyRing,
    add_key,
    hash_key,
    read_key_file,
)
from tmo_graph.server.limits import RateLimiter
from tmo_graph.settings import load_settings

runner = CliRunner()
HASH = "a" * 64


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_new_key_is_shown_once_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    file = tmp_path / "keys.yaml"
    entry, secret = add_key(file, "alice", policies=["cascade"], daily_cost_cap_usd=0.5)
    text = file.read_text()
    assert secret.startswith("tmo-") and len(secret) > 40
    assert secret not in text and hash_key(secret) in text
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o600
    assert read_key_file(file) == [entry]
    assert entry.user == "alice" and entry.policies == ("cascade",)
    ring = KeyRing(file=file)
    assert ring.find(secret) == entry
    assert ring.find(secret + "x") is None and ring.find("") is None


def test_the_cli_prints_the_key_on_stdout_and_the_file_keeps_its_hash(tmp_path: Path) -> None:
    file = tmp_path / "keys.json"
    out = runner.invoke(app, ["keys", "add", "--user", "bob", "--file", str(file), "--id", "b1"])
    assert out.exit_code == 0, out.output
    secret = out.stdout.strip()
    assert secret.startswith("tmo-") and secret not in file.read_text()
    assert KeyRing(file=file).find(secret).id == "b1"  # type: ignore[union-attr]
    again = runner.invoke(app, ["keys", "add", "--user", "bob", "--file", str(file), "--id", "b1"])
    assert again.exit_code == 2 and "already has a key with id 'b1'" in again.output
    revoked = runner.invoke(app, ["keys", "revoke", "b1", "--file", str(file)])
    assert revoked.exit_code == 0 and read_key_file(file)[0].revoked
    listed = runner.invoke(app, ["keys", "list", "--file", str(file)])
    assert "b1\tbob\tall" in listed.output and "revoked" in listed.output
    assert secret not in listed.output


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            f"keys:\n  - {{id: ok, user: a, sha256: {HASH}}}\n"
            "  - {id: bob-key, user: bob, sha256: hunter2}\n",
            "key 1 (id 'bob-key') `sha256`: must be the key's SHA-256 as 64 lower-case hex "
            "digits, not the key itself",
        ),
        (
            f"keys:\n  - {{id: k, user: a, sha256: {HASH}, rate: lots}}\n",
            "key 0 (id 'k') `rate`: rate 'lots' is not N/unit; write e.g. 60/minute",
        ),
        (
            f"keys:\n  - {{id: k, user: a, sha256: {HASH}, policies: [fastest]}}\n",
            "key 0 (id 'k') `policies.0`: Input should be 'always-local'",
        ),
        (
            f"keys:\n  - {{id: k, user: a, sha256: {HASH}, owner: me}}\n",
            "key 0 (id 'k') `owner`: Extra inputs are not permitted",
        ),
        (f"keys:\n  - {{id: k, sha256: {HASH}}}\n", "key 0 (id 'k') `user`: Field required"),
        (
            f"keys:\n  - {{id: k, user: a, sha256: {HASH}}}\n"
            f"  - {{id: k, user: b, sha256: {'b' * 64}}}\n",
            "the id 'k' appears twice",
        ),
        ("keys: [unclosed\n", "is not valid YAML or JSON at line 2"),
        ("- just a list\n", "Input should be a valid dictionary"),
    ],
)
def test_a_bad_key_file_is_named_with_the_entry_and_the_fix(
    tmp_path: Path, text: str, words: str
) -> None:
    path = _write(tmp_path / "keys.yaml", text)
    with pytest.raises(TmoGraphError) as info:
        read_key_file(path)
    assert str(info.value).startswith(f"key file {path}")
    assert words in str(info.value)
    assert "Fix:" in str(info.value)


def test_a_key_file_broken_while_serving_refuses_every_key_until_fixed(tmp_path: Path) -> None:
    file = tmp_path / "keys.yaml"
    _, secret = add_key(file, "alice")
    ring = KeyRing(file=file)
    good = file.read_text()
    time.sleep(0.01)
    file.write_text(good + "- {id: x}\n")
    with pytest.raises(KeyFileBroken, match="`user`: Field required"):
        ring.find(secret)
    time.sleep(0.01)
    file.write_text(good)
    assert ring.find(secret) is not None


def test_a_ring_without_keys_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(TmoGraphError, match="holds no API key.*tmo-graph keys add"):
        KeyRing(file=_write(tmp_path / "k.yaml", "keys: []\n"))
    with pytest.raises(TmoGraphError, match="does not exist"):
        KeyRing(file=tmp_path / "missing.yaml")


def test_keys_come_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "tmo-from-the-environment"
    entry = f'{{"id": "env", "user": "ops", "sha256": "{hash_key(secret)}"}}'
    monkeypatch.setenv("TMO_SERVER__KEYS", f"[{entry}]")
    settings = load_settings()
    assert KeyRing(settings.server.keys).find(secret).user == "ops"  # type: ignore[union-attr]
    monkeypatch.setenv("TMO_SERVER__KEYS", '[{"id": "env", "user": "ops", "sha256": "x"}]')
    with pytest.raises(TmoGraphError, match="TMO_SERVER__KEYS: `server.keys.0.sha256`"):
        load_settings()


def test_serve_refuses_no_auth_off_loopback_and_a_start_without_keys(tmp_path: Path) -> None:
    open_host = runner.invoke(app, ["serve", "--no-auth", "--host", "0.0.0.0"])
    assert open_host.exit_code == 2
    assert "--no-auth on --host 0.0.0.0" in open_host.output
    assert "only on --host 127.0.0.1" in open_host.output
    no_keys = runner.invoke(app, ["serve"])
    assert no_keys.exit_code == 2 and "no API keys" in no_keys.output
    assert "tmo-graph keys add" in no_keys.output
    missing = runner.invoke(app, ["serve", "--keys", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "nope.yaml does not exist" in missing.output
    assert "loading models" not in missing.output  # refused before any model loads


def test_a_runs_daily_cap_and_answer_length_only_lower_the_configured_ones() -> None:
    assert Context(daily_cost_cap_usd=0.5).daily_cap(None) == 0.5
    assert Context(daily_cost_cap_usd=0.5).daily_cap(0.2) == 0.2
    assert Context().daily_cap(0.2) == 0.2 and Context().daily_cap(None) is None
    with pytest.raises(TmoGraphError, match="daily_cost_cap_usd must be a finite number > 0"):
        Context(daily_cost_cap_usd=float("nan"))
    assert Context(max_answer_tokens=7).answer_tokens(64) == 7
    assert Context(max_answer_tokens=700).answer_tokens(64) == 64
    with pytest.raises(TmoGraphError, match="max_answer_tokens must be a whole number >= 1"):
        Context(max_answer_tokens=0)


def test_the_rate_limiter_says_how_long_to_wait() -> None:
    limiter = RateLimiter()
    assert limiter.hit("k", "2/minute") is None and limiter.hit("k", "2/minute") is None
    wait = limiter.hit("k", "2/minute")
    assert wait is not None and 1 <= wait <= 60
    assert limiter.hit("other", "2/minute") is None  # per key
