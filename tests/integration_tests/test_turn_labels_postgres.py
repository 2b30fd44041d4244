"""Labels of past turns in the PostgreSQL thread database that workers share."""

from __future__ import annotations

import asyncio

import pytest

from tests.pgvector import PgVector
from tests.unit_tests.test_turn_labels import exercise
from tmo_graph.settings import Settings
from tmo_graph.threads.labels import PostgresLabels
from tmo_graph.threads.store import open_async_labels

pytestmark = pytest.mark.integration


def test_labels_in_postgresql_are_kept_and_read_by_thread_and_date(pgvector: PgVector) -> None:
    url = pgvector.fresh().url
    settings = Settings.model_validate({"threads": {"url": url}})

    async def run() -> None:
        async with open_async_labels(settings) as labels:
            assert isinstance(labels, PostgresLabels)
            await exercise(labels)
        async with open_async_labels(settings) as again:  # another worker, later
            assert len(await again.since()) == 3

    asyncio.run(run())
