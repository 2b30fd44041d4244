"""A 200-turn thread in a real PostgreSQL grows linearly (issue 23, item 2), as in SQLite
(tests/unit_tests/test_thread_size.py): LangGraph's PostgresSaver reads and writes the
``DeltaChannel``\\ s ``messages`` and ``turns`` through its own history query."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.integration_tests.test_scale import postgres  # noqa: F401 (the fixture)
from tests.unit_tests.test_thread_size import check_growth, image_url, run_thread
from tmo_graph.sections import ThreadSettings
from tmo_graph.settings import Settings
from tmo_graph.threads.store import open_checkpointer

pytestmark = pytest.mark.integration

# What PostgresSaver stores: checkpoints with their metadata, value blobs and writes.
STORED = """
SELECT (SELECT COALESCE(SUM(pg_column_size(c.*)), 0) FROM checkpoints c)
     + (SELECT COALESCE(SUM(pg_column_size(b.*)), 0) FROM checkpoint_blobs b)
     + (SELECT COALESCE(SUM(pg_column_size(w.*)), 0) FROM checkpoint_writes w)
"""


def test_a_200_turn_thread_in_postgresql_grows_linearly(
    postgres: str,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    url = image_url()
    with (
        open_checkpointer(Settings(threads=ThreadSettings(url=postgres))) as saver,
        psycopg.connect(postgres, autocommit=True) as conn,
    ):

        def stored() -> int:
            row = conn.execute(STORED).fetchone()
            assert row is not None
            return int(row[0])

        per_turn, values = run_thread(saver, tmp_path, stored, url)
    check_growth(per_turn, values, url)
