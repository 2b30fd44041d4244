"""Trusted proxy keys: `keys add --proxy` writes one; the end users' namespace is theirs."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tmo_graph.cli.app import app
from tmo_graph.errors import TmoGraphError
from tmo_graph.sections import ApiKey
from tmo_graph.server.auth import Caller, named_caller
from tmo_graph.server.errors import ApiError
from tmo_graph.server.keys import add_key, read_key_file

runner = CliRunner()
SHA = "0" * 64


def test_keys_add_proxy_marks_the_key_and_list_shows_it(tmp_path: Path) -> None:
    file = tmp_path / "keys.yaml"
    args = ["keys", "add", "--user", "owui", "--file", str(file), "--id", "webui", "--proxy"]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "trusted proxy" in out.stderr
    assert read_key_file(file)[0].proxy is True
    plain = runner.invoke(app, ["keys", "add", "--user", "bob", "--file", str(file)])
    assert plain.exit_code == 0 and read_key_file(file)[1].proxy is False
    listed = runner.invoke(app, ["keys", "list", "--file", str(file)]).output
    assert "webui\towui\tall\t-\tdefault rate\tactive proxy" in listed


def test_no_key_may_act_inside_a_proxys_end_user_namespace(tmp_path: Path) -> None:
    file = tmp_path / "keys.yaml"
    add_key(file, "owui", "webui", proxy=True)
    with pytest.raises(TmoGraphError, match="end-user namespace of trusted proxy key 'webui'"):
        add_key(file, "owui/alice", "sneaky")
    assert [k.id for k in read_key_file(file)] == ["webui"]  # nothing written


def test_named_caller_by_kind_of_key() -> None:
    proxy = ApiKey(id="webui", user="owui", sha256=SHA, proxy=True)
    plain = ApiKey(id="bob-key", user="bob", sha256=SHA)
    header = "X-OpenWebUI-User-Id"
    assert named_caller(Caller("owui", proxy), None, None, "alice", header).user == "owui/alice"
    assert named_caller(Caller("owui", proxy), " alice ", None, "alice", header).user == (
        "owui/alice"
    )
    assert named_caller(Caller("owui", proxy), None, None, None, header).user == "owui"
    assert named_caller(Caller("bob", plain), "bob", None, "bob", header).user == "bob"
    with pytest.raises(ApiError) as info:
        named_caller(Caller("bob", plain), None, None, "alice", header)
    assert info.value.status == 403 and info.value.param == header
    # Without keys the forwarded user is trusted like the user field.
    assert named_caller(Caller("anonymous", None), None, None, "alice", header).user == "alice"
    with pytest.raises(ApiError) as info:
        named_caller(Caller("owui", proxy), "alice\x00", None, None, header)
    assert info.value.status == 400
