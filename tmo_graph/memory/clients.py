"""Chroma clients, one per folder or server and process.

Chroma runs embedded (a PersistentClient on a folder of this machine) or as a server
(`chroma run`, reached with an HttpClient), so several workers can share one memory. Chroma
refuses a second client on the same folder with other settings, so every memory in the
process shares the one client of its folder or server.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tmo_graph.errors import TmoGraphError

_CLIENTS: dict[str, Any] = {}
_LOCK = threading.Lock()


def _chromadb() -> tuple[Any, Any]:
    try:
        import chromadb
        from chromadb.config import Settings as ChromaSettings
    except ImportError:
        raise TmoGraphError("chromadb is not installed", "pip install 'tmo-graph[local]'") from None
    return chromadb, ChromaSettings


def chroma_client(persist_dir: Path) -> Any:
    """One PersistentClient per folder and process (Chroma refuses two with other settings)."""
    chromadb, chroma_settings = _chromadb()
    key = str(Path(persist_dir).resolve())
    with _LOCK:
        if key not in _CLIENTS:
            Path(key).mkdir(parents=True, exist_ok=True)
            _CLIENTS[key] = chromadb.PersistentClient(
                path=key, settings=chroma_settings(anonymized_telemetry=False)
            )
        return _CLIENTS[key]


def parse_server_url(url: str) -> tuple[str, int, bool]:
    """(host, port, ssl) of a Chroma server URL such as ``http://127.0.0.1:8000``."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        raise TmoGraphError(
            f"memory.server_url {url!r} is not an http(s) URL with a host",
            "write it as http://HOST:PORT, e.g. http://127.0.0.1:8000 (the address `chroma run` "
            "listens on), or null for embedded Chroma",
        )
    ssl = parts.scheme == "https"
    return parts.hostname, port or (443 if ssl else 8000), ssl


def chroma_server_client(url: str) -> Any:
    """One HttpClient per server URL and process; fails at once if the server is not there."""
    host, port, ssl = parse_server_url(url)
    key = f"{'https' if ssl else 'http'}://{host}:{port}"
    chromadb, chroma_settings = _chromadb()
    with _LOCK:
        if key not in _CLIENTS:
            try:  # the constructor already asks the server for its tenant
                _CLIENTS[key] = chromadb.HttpClient(
                    host=host,
                    port=port,
                    ssl=ssl,
                    settings=chroma_settings(anonymized_telemetry=False),
                )
            except Exception as exc:  # ValueError, httpx errors: all mean "not reachable"
                raise TmoGraphError(
                    f"cannot reach the Chroma server at {key} (memory.server_url): "
                    f"{(str(exc).splitlines() or [type(exc).__name__])[0].rstrip('.?! ')}",
                    f"start it (`chroma run --path DIR --host {host} --port {port}`), "
                    "correct memory.server_url / TMO_MEMORY__SERVER_URL, "
                    "or set it to null for embedded Chroma",
                ) from None
        return _CLIENTS[key]


def is_connection_error(exc: BaseException) -> bool:
    """httpx's transport errors (refused, reset, timed out) without importing httpx here."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"TransportError", "ConnectError", "ConnectionError", "TimeoutException"})
