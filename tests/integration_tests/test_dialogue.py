"""A real dialogue: SmolLM2 on the device, the loopback server as cloud, Chroma, SQLite.

The thread is resumed in a second process and recalls a fact from beyond the recent window;
another user asking the same question recalls nothing of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _worker(tmp: Path, user: str, thread: str, policy: str, *texts: str) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.integration_tests.dialogue_worker",
            str(tmp / "threads.sqlite"),
            str(tmp / "memory"),
            user,
            thread,
            policy,
            *texts,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_dialogue_resumes_in_a_second_process_and_recall_is_per_user(tmp_path: Path) -> None:
    first = _worker(
        tmp_path,
        "alice",
        "kitchen",
        "rules",
        "My locker code is 4711, please remember it.",
        "Is the pot on the stove boiling?",
        "Turn on the kitchen lights.",
    )
    assert [t["turn"] for t in first["turns"]] == [0, 1, 2]
    assert first["turns"][1]["route"] == "cloud" and first["turns"][1]["views_sent"] == ["overhead"]
    assert first["turns"][1]["cost_usd"] > 0  # priced from the server's reported usage
    assert all(t["latency_s"] > 0 and t["answer"] for t in first["turns"])

    # A new process: the thread continues where it stopped, with the budget it had left.
    second = _worker(tmp_path, "alice", "kitchen", "always-local", "What is my locker code?")
    turn = second["turns"][-1]
    assert turn["turn"] == 3
    assert turn["budget_left"]["cost_usd"] <= first["budget_left"]["cost_usd"]
    # recent_turns=2: turn 0 (the code) left the window (the state keeps every turn) and
    # came back through recall.
    assert second["n_messages"] == 2 * 4
    assert any("4711" in r["text"] for r in second["recalled"])

    # Bob asks the same in his own thread: nothing of Alice's comes back.
    bob = _worker(tmp_path, "bob", "bob-thread", "always-local", "What is my locker code?")
    assert bob["turns"][-1]["turn"] == 0
    assert all("4711" not in r["text"] for r in bob["recalled"])
