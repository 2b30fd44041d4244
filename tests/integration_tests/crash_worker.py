"""Run one turn whose local model hangs, so the test can SIGKILL this process mid-turn.

python crash_worker.py DB MARKER QUESTION
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from langgraph.checkpoint.sqlite import SqliteSaver  # noqa: E402

from tests.unit_tests.fakes import FakeLocal, fake_services  # noqa: E402
from tmo_graph.context import Context  # noqa: E402
from tmo_graph.conversation import stream_turn  # noqa: E402
from tmo_graph.graph import build_graph  # noqa: E402


class HangingLocal(FakeLocal):
    """Says it has started (the marker file), then never finishes."""

    marker: Path = Path()

    def answer(
        self, messages: Any, max_new_tokens: Any = None, tags: Any = None, max_time_s: Any = None
    ) -> Any:
        self.marker.write_text("generating")
        time.sleep(600)
        raise AssertionError("should have been killed")


def main(db: str, marker: str, question: str) -> None:
    local = HangingLocal(["never"])
    local.marker = Path(marker)
    services = fake_services(Path(db).parent / "worker", local, None)
    with SqliteSaver.from_conn_string(db) as saver:
        graph = build_graph(services, checkpointer=saver)
        list(stream_turn(graph, {"messages": [("user", question)]}, "t", Context(policy="cascade")))


if __name__ == "__main__":
    main(*sys.argv[1:])
