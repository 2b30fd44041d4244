"""A process killed mid-turn loses nothing: the next turn on the thread first completes the
cut-short one (answered and recorded once), then answers the new question."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

from tests.unit_tests.fakes import FakeLocal, fake_services
from tmo_graph.context import Context
from tmo_graph.conversation import Done, stream_turn
from tmo_graph.graph import build_graph

pytestmark = pytest.mark.integration
WORKER = Path(__file__).with_name("crash_worker.py")


def test_a_turn_killed_mid_answer_is_completed_once_on_resume(tmp_path: Path) -> None:
    db, marker = tmp_path / "threads.sqlite", tmp_path / "started"
    worker = subprocess.Popen([sys.executable, str(WORKER), str(db), str(marker), "First?"])
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert worker.poll() is None, "the worker ended before generating"
        assert time.monotonic() < deadline, "the worker never started generating"
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)  # mid-turn: the question is stored, no answer yet
    assert worker.wait(timeout=30) == -signal.SIGKILL

    local = FakeLocal(["first answer", "second answer"], logprob=-0.05)
    with SqliteSaver.from_conn_string(str(db)) as saver:
        graph = build_graph(fake_services(tmp_path, local, None), checkpointer=saver)
        config = {"configurable": {"thread_id": "t"}}
        assert graph.get_state(config).next, "the killed turn left nodes to run"
        events = list(
            stream_turn(graph, {"messages": [("user", "Second?")]}, "t", Context(policy="cascade"))
        )
        done = events[-1]
        assert isinstance(done, Done) and done.resumed is not None
        assert done.resumed["turn"] == 0 and done.resumed["answer"] == "first answer"
        assert done.record["turn"] == 1 and done.record["answer"] == "second answer"
        values = graph.get_state(config).values
    assert [r["turn"] for r in values["turns"]] == [0, 1]
    assert [(m.type, m.content) for m in values["messages"]] == [
        ("human", "First?"),
        ("ai", "first answer"),
        ("human", "Second?"),
        ("ai", "second answer"),
    ]
    # Each question reached the model once, and never together with the other one unanswered.
    assert [seen[-1]["content"] for seen in local.seen] == ["First?", "Second?"]
    assert [m["content"] for m in local.seen[1]][1:] == ["First?", "first answer", "Second?"]


def test_the_chat_command_answers_a_cut_short_turn_first(tmp_path: Path) -> None:
    db, marker = tmp_path / "threads.sqlite", tmp_path / "started"
    worker = subprocess.Popen([sys.executable, str(WORKER), str(db), str(marker), "First?"])
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert worker.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)

    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TMO_CLOUD__MODE": "off",  # the real SmolLM2 answers both turns on the device
        "TMO_MEMORY__PERSIST_DIR": str(tmp_path / "memory"),
    }
    cmd = [sys.executable, "-m", "tmo_graph.cli.app", "chat", "--thread", "t", "--db", str(db)]
    done = subprocess.run(
        [*cmd, "--policy", "always-local"],
        input="Second?\n/quit\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "the last turn was cut short; it is answered first" in done.stdout
    with SqliteSaver.from_conn_string(str(db)) as saver:  # the dialogue, as the graph reads it
        graph = build_graph(fake_services(tmp_path), checkpointer=saver)
        values = graph.get_state({"configurable": {"thread_id": "t"}}).values
    assert [r["turn"] for r in values["turns"]] == [0, 1]
    assert [m.type for m in values["messages"]] == ["human", "ai", "human", "ai"]
    assert [m.content for m in values["messages"] if m.type == "human"] == ["First?", "Second?"]
