"""`tmo-graph chat` as a person sees it: driven in a pseudo-terminal (pexpect) on fake models
that write a word every quarter second (tests/unit_tests/chat_worker.py), the screen read
through a terminal emulator (pyte); and off a terminal, plain text.

The answer must show while it is being made, a draft dimmed and then replaced by the
cloud's answer, a status line naming what the graph does, and a warning before the next
turn when the dialogue's budget is nearly spent.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
import pyte
import pytest

from tests.unit_tests import chat_worker
from tmo_graph.cli.terminal import LiveTurn, PlainTurn, low_budget
from tmo_graph.conversation import Done, Step, Token
from tmo_graph.state import Budget

ROOT = Path(__file__).resolve().parents[2]
ROWS, COLUMNS = 40, 160
WORKER = [sys.executable, "-m", "tests.unit_tests.chat_worker"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMO_")}
    return {
        **env,
        "PYTHONPATH": str(ROOT),
        "TERM": "xterm-256color",
        "COLUMNS": str(COLUMNS),
        **extra,
    }


class Terminal:
    """A command in a pseudo-terminal, its output fed to an emulated screen."""

    def __init__(self, argv: list[str], rows: int = ROWS, **env: str) -> None:
        self.screen = pyte.HistoryScreen(COLUMNS, rows, history=1000)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        self.child = pexpect.spawn(
            argv[0],
            argv[1:],
            cwd=str(ROOT),
            env=_env(**env),
            dimensions=(rows, COLUMNS),
            timeout=60,
        )

    def read(self, seconds: float = 0.05) -> None:
        """Whatever the chat has written within ``seconds``, onto the screen."""
        try:
            data = self.child.read_nonblocking(65536, timeout=seconds)
        except pexpect.TIMEOUT:
            return
        except pexpect.EOF:
            return
        self.raw += data
        self.stream.feed(data)

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def scrollback(self) -> str:
        """The lines scrolled off the top, then the screen."""
        gone = [
            "".join(line[x].data for x in range(COLUMNS)).rstrip()
            for line in self.screen.history.top
        ]
        return "\n".join([*gone, self.text()])

    def wait_until(self, seen: Callable[[str], bool], timeout: float = 60.0) -> str:
        """Read until ``seen(screen text)`` holds; that screen."""
        deadline = time.monotonic() + timeout
        while not seen(self.text()):
            assert time.monotonic() < deadline, f"never seen:\n{self.text()}"
            assert self.child.isalive(), self.text()
            self.read()
        return self.text()

    def wait_for(self, what: str, timeout: float = 60.0) -> float:
        """Read until ``what`` is on the screen; the time it appeared."""
        deadline = time.monotonic() + timeout
        while what not in self.text():
            assert time.monotonic() < deadline, f"{what!r} never showed:\n{self.text()}"
            assert self.child.isalive() or what in self.text(), self.text()
            self.read()
        return time.monotonic()

    def style_of(self, word: str) -> pyte.screens.Char:
        """The screen cell where ``word`` begins (its colour and weight)."""
        for y, line in enumerate(self.screen.display):
            x = line.find(word)
            if x >= 0:
                return self.screen.buffer[y][x]
        raise AssertionError(f"{word!r} is not on the screen:\n{self.text()}")

    def close(self) -> None:
        self.child.sendline("/quit")
        self.child.expect(pexpect.EOF, timeout=30)
        self.child.close()


@pytest.fixture
def terminal() -> object:
    made: list[Terminal] = []

    def start(scenario: str, *args: str, command: str = "chat", rows: int = ROWS) -> Terminal:
        made.append(Terminal([*WORKER, scenario, command, *args], rows=rows))
        return made[-1]

    yield start
    for term in made:
        if term.child.isalive():
            term.child.terminate(force=True)


def test_the_answer_streams_before_the_turn_ends(terminal: object) -> None:
    term = terminal("sure", "--policy", "always-local")  # type: ignore[operator]
    term.wait_for("you>")
    term.child.sendline("Explain how induction hobs work.")
    first = term.wait_for("alpha")
    # The first word is on the screen while the model is still writing: not the last word,
    # and no row of the turn yet.
    assert "foxtrot" not in term.text() and "latency s" not in term.text()
    assert "answering on the device" in term.text()  # the status line names the node
    last = term.wait_for("foxtrot")
    assert last - first > 2 * chat_worker.DELAY_S  # it came word by word, not at once
    term.wait_for("latency s")  # then the turn's row
    screen = term.text()
    assert "alpha bravo charlie delta echo foxtrot" in screen
    assert " local " in screen.split("latency s")[1]  # the route summary
    assert "answering on the device" not in screen  # the status line is gone at the end
    assert "budget:" not in screen  # plenty left
    term.close()


def test_a_draft_is_dimmed_then_replaced_by_the_clouds_answer(terminal: object) -> None:
    term = terminal("unsure", "--policy", "cascade")  # type: ignore[operator]
    term.wait_for("you>")
    term.child.sendline("Explain how induction hobs work.")
    term.wait_for("draftone")
    assert term.style_of("draftone").fg == "default"
    assert b"\x1b[2m" in term.raw  # the draft is written dim (SGR 2)
    assert "cloudone" not in term.text()
    term.wait_for("asking the cloud")  # the check escalated; the draft is still shown
    term.wait_for("cloudone")
    term.wait_for("latency s")
    term.wait_for("escalated local draft: draftone")  # the last line the turn prints
    screen = term.text()
    answer_area = screen.split("Explain how induction hobs work.")[1].split("turn ")[0]
    assert "cloudone cloudtwo cloudthree cloudfour" in answer_area
    assert "draftone" not in answer_area  # replaced, not appended
    assert "cloud text" in screen and "escalated local draft: draftone" in screen
    term.close()


def test_an_answer_taller_than_the_terminal_is_shown_whole_once(terminal: object) -> None:
    term = terminal("long", "--policy", "always-local", rows=8)  # type: ignore[operator]
    term.wait_for("you>")
    term.child.sendline("Tell me everything.")
    term.wait_for("w300")
    # While it streams, the newest words and the status line fit on the screen.
    assert "answering on the device" in term.text() and "w001" not in term.text()
    term.wait_for("latency s")
    term.read(0.5)
    words = term.scrollback().split("Tell me everything.")[1].split("turn ")[0].split()
    assert words == [f"w{i:03d}" for i in range(1, chat_worker.LONG + 1)]
    term.close()


def test_a_nearly_spent_budget_is_announced_before_the_next_turn(terminal: object) -> None:
    # 1.5 s for the whole dialogue: the first answer (six words, a quarter second apart)
    # takes it all.
    term = terminal("sure", "--policy", "always-local", "--latency-budget", "1.5")  # type: ignore[operator]
    term.wait_for("you>")
    term.child.sendline("Explain how induction hobs work.")
    term.wait_for("latency s")
    term.wait_for("--latency-budget SECONDS")
    screen = term.text()
    warning = screen[screen.index("budget: this dialogue") :]
    assert "of its 1.5 s latency budget left" in " ".join(warning.split())
    assert "cut short or made on the device" in " ".join(warning.split())
    assert "routing.latency_budget_s" in warning
    assert screen.rstrip().endswith("you>")  # said before the next question
    term.close()


def test_run_shows_a_spinner_while_a_turn_runs(terminal: object, tmp_path: Path) -> None:
    dialogues = tmp_path / "d.jsonl"
    dialogues.write_text('{"id": "d1", "turns": ["Explain how induction hobs work."]}\n')
    term = terminal("sure", str(dialogues), "--policy", "always-local", command="run")  # type: ignore[operator]
    term.wait_for("dialogue d1, turn 0: answering ...")
    assert "latency s" in term.text() and " local " not in term.text()  # no row yet
    term.wait_for(" local ")
    term.child.expect(pexpect.EOF, timeout=30)
    term.read()
    assert "answering ..." not in term.text()  # the spinner is gone with the turn


def test_off_a_terminal_only_the_final_answer_is_written(tmp_path: Path) -> None:
    done = subprocess.run(
        [*WORKER, "unsure", "chat", "--policy", "cascade"],
        input="Explain how induction hobs work.\n/quit\n",
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "\x1b" not in out and "\r" not in out  # no escape codes, no carriage control
    lines = out.splitlines()
    assert "cloudone cloudtwo cloudthree cloudfour" in lines  # the answer on a line of its own
    assert not any(line.startswith("draftone") for line in lines)  # the draft was never shown
    assert "asking the cloud" not in out  # no status lines either
    assert any(line.split()[:1] == ["0"] and "cloud text" in line for line in lines)


def test_the_budget_warning_names_what_is_low_and_how_to_raise_it() -> None:
    plenty = Budget(latency_s=50.0, cost_usd=0.04)
    assert low_budget(plenty, 60.0, 0.05, 0.2) == ""
    both = low_budget(Budget(latency_s=5.0, cost_usd=0.001), 60.0, 0.05, 0.2)
    assert "5.0 s of its 60 s latency and 0.00100 of its 0.05 USD money budget left" in both
    assert "--latency-budget SECONDS --cost-budget USD" in both
    money = low_budget(Budget(latency_s=50.0, cost_usd=0.001), 60.0, 0.05, 0.2)
    assert "latency" not in money and "routing.cost_budget_usd" in money


def _done(answer: str) -> Done:
    return Done(record={"answer": answer}, state={})  # type: ignore[typeddict-item]


def test_the_live_view_ends_on_the_answer_the_turn_kept() -> None:
    # A cloud answer cut off mid-stream falls back to the draft: the screen must end on the
    # record's answer, not on the cloud's first words followed by the draft.
    from rich.console import Console

    buffer = io.StringIO()
    out = Console(file=buffer, force_terminal=True, width=80, height=20)
    with LiveTurn(out) as view:
        for event in [
            Step("answer_local"),
            Token("kept ", draft=True),
            Token("draft", draft=True),
            Step("answer_cloud"),
            Token("the cloud's first"),
            Token("kept "),
            Token("draft"),
            _done("kept draft"),
        ]:
            view.show(event)
        assert view.final == "kept draft" and view.status == "asking the cloud"
    screen = pyte.Screen(80, 20)
    pyte.ByteStream(screen).feed(buffer.getvalue().encode())
    shown = [line.rstrip() for line in screen.display if line.strip()]
    assert shown == ["kept draft"]


def test_the_plain_view_writes_only_the_final_answer() -> None:
    buffer = io.StringIO()
    with PlainTurn(buffer) as view:
        for event in [Step("route"), Token(" a draft", draft=True), Token(" final"), Token("!")]:
            view.show(event)
        view.show(_done("final!"))
    assert buffer.getvalue() == "final!\n"
