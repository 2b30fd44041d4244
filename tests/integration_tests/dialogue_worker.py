"""One process of the resume test: runs turns of a thread and prints what it saw as JSON.

python -m tests.integration_tests.dialogue_worker DB MEMORY_DIR USER THREAD POLICY TEXT [TEXT ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from langgraph.checkpoint.sqlite import SqliteSaver

from tmo_graph.context import Context
from tmo_graph.graph import build_graph
from tmo_graph.sections import MemorySettings
from tmo_graph.services import build_services
from tmo_graph.settings import Settings

VIEWS = {
    "overhead": {
        "image": "examples/images/overhead.png",
        "description": "overhead camera above the stove and the boiling pot",
    },
    "side": {
        "image": "examples/images/side.png",
        "description": "side camera facing the fridge door",
    },
}


def main(argv: list[str]) -> None:
    db, memory_dir, user, thread, policy, *texts = argv
    settings = Settings(memory=MemorySettings(persist_dir=Path(memory_dir)))
    services = build_services(settings)
    context = Context(policy=policy, user_id=user, recent_turns=2, recall_k=2)
    config = {"configurable": {"thread_id": thread}}
    out = {}
    with SqliteSaver.from_conn_string(db) as saver:
        graph = build_graph(services, checkpointer=saver)
        for i, text in enumerate(texts):
            state_in = {"messages": [("user", text)]}
            if i == 0:
                state_in["views"] = VIEWS
            out = graph.invoke(state_in, config, context=context)
        # What the last turn recalled: scratch, so read from that turn's checkpoints.
        recalled = next(
            (
                s.values["recalled"]
                for s in graph.get_state_history(config)
                if s.values.get("recalled")
            ),
            [],
        )
    print(
        json.dumps(
            {
                "turns": out["turns"],
                "recalled": recalled,
                "n_messages": len(out["messages"]),
                "budget_left": out["budget_left"],
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
