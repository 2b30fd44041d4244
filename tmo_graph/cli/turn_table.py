"""Turn records as the terminal table `tmo-graph run` and `chat` print.

One rich table row per turn, printed as the turn finishes (a turn can take seconds), with
the answer (and an escalated local draft, a fallback reason) on the lines below it. Every
column has a fixed width, so the rows of separate prints line up under one header. Off a
terminal (a pipe, a file, a test) the output is plain text without colour codes.
"""

from __future__ import annotations

import io
import textwrap
from typing import TYPE_CHECKING, Literal

from tmo_graph.state import TurnRecord

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

# (header, justify, width): wide enough for every value the graph produces.
COLUMNS: tuple[tuple[str, Literal["left", "right"], int], ...] = (
    ("turn", "right", 4),
    ("task", "left", 17),
    ("route", "left", 30),
    ("conf", "right", 5),
    ("esc", "right", 3),
    ("latency s", "right", 9),
    ("cost USD", "right", 10),
    ("left s", "right", 7),
    ("left USD", "right", 9),
)
INDENT = " " * 6  # answer lines sit under the task column
TABLE_WIDTH = sum(width for _, _, width in COLUMNS) + 2 * (len(COLUMNS) - 1)


def route_label(record: TurnRecord) -> str:
    if record["route"] == "local":
        return "local" + (" (cloud failed)" if record["fallback"] else "")
    views = record["views_sent"]
    return "cloud+" + ",".join(views) if views else "cloud text"


def _cells(record: TurnRecord) -> list[str]:
    conf = "-" if record["confidence"] is None else f"{record['confidence']:.2f}"
    left = record["budget_left"]
    return [
        str(record["turn"]),
        record["task"],
        route_label(record),
        conf,
        "yes" if record["escalated"] else "no",
        f"{record['latency_s']:.2f}",
        f"{record['cost_usd']:.6f}",
        f"{left['latency_s']:.1f}",
        f"{left['cost_usd']:.5f}",
    ]


def _table(records: list[TurnRecord], header: bool) -> Table:
    from rich.table import Table

    table = Table(
        box=None,  # plain columns: the docs (docs/results.md) quote this table as text
        show_header=header,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        header_style="bold",
    )
    for title, justify, width in COLUMNS:
        # fold, never cut: a long list of views sent wraps inside its column
        table.add_column(title, justify=justify, width=width, no_wrap=False, overflow="fold")
    for record in records:
        table.add_row(*_cells(record))
    return table


def _notes(record: TurnRecord, answer_width: int, answer: bool = True) -> list[str]:
    """The lines under a row: what the voice notes said, the answer (unless it was already
    shown), a fallback reason, an escalated local draft, the turn's warnings."""
    text = " ".join(record["answer"].split()) or "(empty)"
    # What the device heard in the message's voice notes (the named sources' words are in
    # the record; repeated every turn they would drown the answers).
    lines = [
        f'{INDENT}heard in {name}: "{textwrap.shorten(words, width=answer_width)}"'
        for name, words in record.get("transcripts", {}).items()
        if name.startswith("voice_note_")
    ]
    if answer:
        short = textwrap.shorten(text, width=answer_width, placeholder=" ...")
        lines.append(f"{INDENT}> {short}")
    if record["fallback"]:
        lines.append(f"{INDENT}fallback: {record['fallback']}")
    if record.get("local_answer") is not None:
        draft = " ".join(str(record["local_answer"]).split()) or "(empty)"
        short = textwrap.shorten(draft, width=answer_width, placeholder=" ...")
        lines.append(f"{INDENT}escalated local draft: {short}")
    lines += [f"{INDENT}warning: {warning}" for warning in record.get("warnings", [])]
    return lines


def console() -> Console:
    """A console on stdout: styled on a terminal, plain text (and never narrower than the
    table) when piped or captured."""
    from rich.console import Console

    out = Console(highlight=False)
    if not out.is_terminal:
        out = Console(highlight=False, width=max(TABLE_WIDTH, 120), no_color=True)
    return out


def _emit(out: Console, table: Table) -> None:
    if out.is_terminal:
        out.print(table, crop=False)
        return
    with out.capture() as captured:
        out.print(table, crop=False)
    # rich pads every cell to its width: drop the trailing blanks plain text does not need
    out.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def print_header(out: Console | None = None) -> None:
    _emit(out or console(), _table([], header=True))  # an empty table prints its header only


def print_turn(
    record: TurnRecord,
    out: Console | None = None,
    answer_width: int = 100,
    header: bool = False,
    answer: bool = True,
) -> None:
    """One turn's row (under a header when ``header``), then its answer lines (without the
    answer itself when not ``answer``: `chat` has streamed it)."""
    out = out or console()
    _emit(out, _table([record], header=header))
    for line in _notes(record, answer_width, answer):
        out.out(line, highlight=False)  # as is: an answer may contain [brackets]


def print_dialogue_banner(
    dialogue_id: str, user_id: str, policy: str, out: Console | None = None
) -> None:
    out = out or console()
    out.out(f"\n== dialogue {dialogue_id} (user {user_id}, policy {policy}) ==", highlight=False)


def format_turn(record: TurnRecord, answer_width: int = 100, header: bool = False) -> str:
    """The text :func:`print_turn` writes off a terminal."""
    from rich.console import Console

    buffer = io.StringIO()
    out = Console(
        file=buffer,
        width=max(TABLE_WIDTH, 120),
        no_color=True,
        highlight=False,
        force_jupyter=False,  # else a notebook gets HTML and the buffer stays empty
    )
    print_turn(record, out, answer_width=answer_width, header=header)
    return buffer.getvalue().rstrip("\n")
