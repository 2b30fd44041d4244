"""`tmo-graph chat` with the real SmolLM2 in a pseudo-terminal: the answer's words are on the
screen while the device is still writing it, long before the turn's row."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.unit_tests.test_chat_terminal import Terminal

pytestmark = pytest.mark.integration
QUESTION = "Explain how a bicycle works."


def _answer(screen: str) -> str:
    """The text under the question, above the status line or the turn's row."""
    below = screen.split(QUESTION, 1)[1] if QUESTION in screen else ""
    lines = []
    for line in below.splitlines():
        if "answering on the device" in line or line.startswith("turn "):
            break
        lines.append(line)
    return " ".join(" ".join(lines).split())


def test_the_real_device_model_streams_into_the_terminal(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "tmo_graph.cli.app", "chat", "--policy", "always-local"]
    term = Terminal(
        [*argv, "--db", str(tmp_path / "threads.sqlite")],
        HF_HUB_OFFLINE="1",
        TMO_CLOUD__MODE="off",
        TMO_MEMORY__PERSIST_DIR=str(tmp_path / "memory"),
        TMO_AUDIT__PATH=str(tmp_path / "audit.jsonl"),
    )
    try:
        term.wait_for("you>", timeout=240)  # the models load first
        term.child.sendline(QUESTION)
        # Some words of the answer while the status line still says the device is writing.
        partial = term.wait_until(
            lambda screen: "answering on the device" in screen and len(_answer(screen)) > 0,
            timeout=120,
        )
        assert "latency s" not in partial  # the turn is not over
        final = term.wait_until(lambda screen: "latency s" in screen, timeout=120)
        first, whole = _answer(partial), _answer(final)
        assert len(whole) > len(first) and whole.startswith(first[: len(first) // 2])
        assert " local " in final.split("latency s")[1]
        assert "answering on the device" not in final
    finally:
        term.close()
