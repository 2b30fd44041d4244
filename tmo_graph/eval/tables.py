"""Report tables: rich tables rendered to plain text, so a pipe or a log reads them too."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tmo_graph.plain_text import plain_text

if TYPE_CHECKING:
    from rich.table import Table

# Wide enough for every report's longest row; fixed so the layout does not follow the TTY.
WIDTH = 120


def table(*columns: str, right: tuple[str, ...] = (), title: str | None = None) -> Table:
    """A borderless table; the columns named in ``right`` (numbers) are right-aligned."""
    from rich import box
    from rich.table import Table

    out = Table(
        title=title, box=box.SIMPLE_HEAD, show_edge=False, title_justify="left", pad_edge=False
    )
    for name in columns:
        out.add_column(name, justify="right" if name in right else "left", no_wrap=True)
    return out


def render(*items: Any) -> str:
    """Tables and lines as plain text (no colour, no markup), ``WIDTH`` columns wide."""
    return plain_text(*items, width=WIDTH)
