"""What `tmo-graph serve` does before the app exists, so a cold start costs the model load and
little else: the listening socket, bound at launch, and the services, loaded on a thread of
their own while the main thread imports and builds the app.

A request that arrives while the models load waits in the socket's queue and is answered
once the app is up, so ``GET /health`` still answers only when the models are loaded. Nothing
here imports FastAPI or the models.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from tmo_graph.errors import TmoGraphError

T = TypeVar("T")

# Connections the kernel queues before the app accepts them (uvicorn's own default).
BACKLOG = 2048


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening: clients may connect from now on, and a
    port in use fails at once rather than after the models have loaded."""
    if not 0 <= port <= 65535:
        raise TmoGraphError(f"port {port} is not a TCP port", "pass --port between 1 and 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise TmoGraphError(
            f"--host {host} is not an address of this machine ({error.strerror})",
            "pass an address such as 127.0.0.1, ::1 or 0.0.0.0",
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as error:
        sock.close()
        raise TmoGraphError(
            f"cannot listen on {host}:{port}: {error.strerror}",
            "pick a free port (--port), or stop the process that holds this one",
        ) from None
    sock.set_inheritable(True)
    return sock


class BackgroundLoad(Generic[T]):
    """``load()`` run on a daemon thread from construction on; :meth:`result` waits for it and
    gives its value, or raises its exception in the caller's thread (so a failed load reads as
    if it had been called there).

    The thread stays alive (parked) after the load, until the process ends: once the thread
    that loaded the local model and ran its first answer had exited, torch answered on every
    other thread 5 to 10 times slower (16 tokens: 3-7 s against 0.5-0.8 s, measured here with
    its OpenMP threads), so the server's first requests would have paid for the overlap.
    """

    def __init__(self, load: Callable[[], T], name: str = "tmo-load") -> None:
        self._load = load
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._load()
        except BaseException as error:  # handed to the waiting thread, never swallowed
            self._error = error
        finally:
            self._done.set()
        threading.Event().wait()  # parked for good: see the class docstring

    def done(self) -> bool:
        """Whether the load has finished (well or not)."""
        return self._done.is_set()

    def result(self, timeout_s: float | None = None) -> T:
        """The loaded value; the load's own exception if it failed."""
        if not self._done.wait(timeout_s):
            raise TmoGraphError(
                f"the background load did not finish within {timeout_s:g} s",
                "wait longer, or look at the server log for what it is stuck on",
            )
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set when no error
