"""rich tables as plain text: what the CLI, the simulator and the evaluation print or return
when the output is not a terminal (a pipe, a file, a test, a notebook cell)."""

from __future__ import annotations

import io
from typing import Any


def plain_text(*items: Any, width: int) -> str:
    """``items`` (rich tables, strings) rendered ``width`` columns wide, without colour,
    markup or trailing blanks. Never rendered as HTML, even inside Jupyter."""
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        no_color=True,
        markup=False,
        highlight=False,
        emoji=False,
        soft_wrap=False,
        force_jupyter=False,  # else a notebook gets HTML and the buffer stays empty
    )
    for item in items:
        console.print(item)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()).strip("\n")
