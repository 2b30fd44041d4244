"""One `tmo-graph chat` turn on the screen while it runs, and the warning of a spent budget.

On a terminal the answer streams as it is made: a local draft dimmed while the cloud may
still replace it, the final answer in its place once it comes, and under it a status line
that names what the graph is doing, from the node that started (``STATUS``). Off a terminal
(a pipe, a file, a test) only the final answer's text is written, as it comes, with no
escape codes. Both get their events from :func:`tmo_graph.conversation.watch_turn`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

from tmo_graph.conversation import Done, Step, Token
from tmo_graph.state import Budget

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.text import Text

# What each node of the graph is doing, for the status line (the graph's node names).
STATUS = {
    "detect_modality": "reading the question",
    "recall_memory": "recalling earlier turns",
    "route": "deciding where to answer",
    "answer_local": "answering on the device",
    "check_confidence": "checking the draft",
    "answer_cloud": "asking the cloud",
    "account": "counting the cost",
}
# detect_modality transcribes the message's voice notes and the dialogue's microphones.
READING_CLIPS = "reading the clips"


class PlainTurn:
    """A turn off a terminal: the final answer's text as it comes, nothing else."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.written = False

    def __enter__(self) -> PlainTurn:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.written:
            self.out.write("\n")
            self.out.flush()

    def show(self, event: Token | Step | Done) -> None:
        if isinstance(event, Token) and not event.draft and event.text:
            self.out.write(event.text if self.written else event.text.lstrip())
            self.out.flush()
            self.written = True


class LiveTurn:
    """A turn on a terminal (rich ``Live``): the draft dimmed, then the final answer in its
    place, and a status line with what the graph is doing until the turn is over."""

    def __init__(self, out: Console, has_clips: bool = False) -> None:
        self.out = out
        self.has_clips = has_clips
        self.draft = ""
        self.final = ""
        self.status = "starting"
        self.live: Live | None = None

    def __enter__(self) -> LiveTurn:
        from rich.live import Live

        self.live = Live(
            self._view(),
            console=self.out,
            refresh_per_second=12,
            transient=False,  # the answer stays on the screen, whole (rich's last refresh)
        )
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.live is not None
        self.status = ""  # the turn is over: the answer alone stays
        self.live.update(self._view(), refresh=True)
        self.live.__exit__(None, None, None)

    def show(self, event: Token | Step | Done) -> None:
        if isinstance(event, Step):
            if event.node == "detect_modality" and self.has_clips:
                self.status = READING_CLIPS
            else:
                self.status = STATUS.get(event.node, event.node)
        elif isinstance(event, Token) and event.draft:
            self.draft += event.text
        elif isinstance(event, Token):
            self.final += event.text  # the first final token replaces the draft
        else:  # the turn's record has the answer kept, whatever streamed before it
            self.final = event.record["answer"] or self.final
        assert self.live is not None
        self.live.update(self._view())

    def _view(self) -> RenderableType:
        from rich.console import Group
        from rich.spinner import Spinner
        from rich.text import Text

        # The final answer's first token replaces the draft; until then the draft is dim.
        answer = Text(self.final.strip()) if self.final else Text(self.draft.strip(), style="dim")
        if self.status:  # while it streams: the lines that fit above the status line
            answer = _tail(answer, self.out, self.out.size.height - 2)
        parts: list[Any] = [answer] if answer.plain else []
        if self.status:
            draft_note = " (the dimmed text is a draft)" if self.draft and not self.final else ""
            parts.append(Spinner("dots", Text(self.status + draft_note, style="cyan")))
        return Group(*parts)


def _tail(text: Text, out: Console, lines: int) -> Text:
    """The last ``lines`` lines of ``text`` as ``out`` wraps it: a live view taller than the
    terminal could not be redrawn in place (the whole answer is shown once it is over)."""
    from rich.text import Text

    wrapped = text.wrap(out, out.size.width)
    if len(wrapped) <= lines:
        return text
    return Text("\n").join(wrapped[-max(lines, 1) :])


def low_budget(left: Budget, latency_budget_s: float, cost_budget_usd: float, share: float) -> str:
    """A warning when less than ``share`` of the dialogue's latency or money budget is left
    (what happens next and how to get more), else ``""``."""
    low, flags, keys = [], [], []
    if left["latency_s"] < share * latency_budget_s:
        low.append(f"{max(left['latency_s'], 0.0):.1f} s of its {latency_budget_s:g} s latency")
        flags.append("--latency-budget SECONDS")
        keys.append("routing.latency_budget_s")
    if left["cost_usd"] < share * cost_budget_usd:
        low.append(f"{max(left['cost_usd'], 0.0):.5f} of its {cost_budget_usd:g} USD money")
        flags.append("--cost-budget USD")
        keys.append("routing.cost_budget_usd")
    if not low:
        return ""
    return (
        f"budget: this dialogue has {' and '.join(low)} budget left, so the next answers will "
        f"be cut short or made on the device. For more, start a new thread with "
        f"{' '.join(flags)} (config: {', '.join(keys)})"
    )
