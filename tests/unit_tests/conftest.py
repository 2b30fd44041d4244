import os
from collections.abc import Iterator

import pytest
from pytest_socket import disable_socket, enable_socket


@pytest.fixture(autouse=True)
def _no_network() -> Iterator[None]:
    """Unit tests never touch the network (unix sockets stay allowed for local IPC)."""
    disable_socket(allow_unix_socket=True)
    yield
    enable_socket()


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's TMO_* variables must not change the settings the tests build."""
    for name in os.environ:
        if name.startswith("TMO_") and "__" in name:
            monkeypatch.delenv(name)
