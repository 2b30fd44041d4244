"""The package imports without its optional extras: PostgreSQL (threads, pgvector memory)
is only needed when the config names it. Run in a subprocess that hides those modules, as
an install without the extra would."""

from __future__ import annotations

import subprocess
import sys

HIDDEN = ("langgraph.store.postgres", "langgraph.checkpoint.postgres", "psycopg", "psycopg_pool")


def test_the_graph_and_the_cli_import_without_the_postgres_extra() -> None:
    hide = "; ".join(f"sys.modules[{name!r}] = None" for name in HIDDEN)
    code = f"import sys; {hide}; import tmo_graph.graph, tmo_graph.services, tmo_graph.cli.app"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
