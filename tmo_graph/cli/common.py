"""What the command modules share: option types, the one-line error exit, JSON output.

Kept free of heavy imports: every command module imports it, and `tmo-graph --help` loads
every command module.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from tmo_graph.costs import profiles
from tmo_graph.errors import TmoGraphError
from tmo_graph.sections import POLICIES

# The M4A1 file of the benchmark, training and evaluation commands when --data is left out:
# the data set is not in the repository, so there is no sensible default path.
M4A1_ENV_VAR = "TMO_GRAPH_M4A1"


def one_of(names: Sequence[str]) -> str:
    """``a, b or c``: a help text's list of choices, built from the list the code checks."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config (default: built-in defaults)")
]
PolicyOption = Annotated[str | None, typer.Option(help=one_of(POLICIES))]
DataOption = Annotated[
    Path | None, typer.Option(envvar=M4A1_ENV_VAR, help="M4A1-format JSON", show_default=False)
]
NetworkOption = Annotated[
    str, typer.Option(help=f"paper network profile: {one_of(list(profiles.NETWORKS))}")
]
DeviceOption = Annotated[str, typer.Option(help="paper device profile, e.g. 'Jetson TX2'")]
DbOption = Annotated[
    Path | None, typer.Option("--db", help="SQLite file for dialogue threads (resumable)")
]


def m4a1_file(data: Path | None) -> Path:
    """The M4A1 file a command reads: --data, else $TMO_GRAPH_M4A1 (Typer reads both)."""
    if data is None:
        raise TmoGraphError(
            "no M4A1 data file given",
            f"pass --data PATH/TO/M4A1.json, or set {M4A1_ENV_VAR}=PATH/TO/M4A1.json",
        )
    return data


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON and say so."""
    # allow_nan=False: NaN / Infinity are not JSON; refuse them rather than write a broken file.
    text = json.dumps(data, indent=2, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    typer.echo(f"wrote {path}")


class _Stderr(logging.Handler):
    """Log lines on whatever ``sys.stderr`` is when they come (a test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 (logging's own convention: never raise from a handler)
            self.handleError(record)


def show_model_preparation() -> None:
    """The models' INFO lines on stderr: a GGUF converted, the decoding step compiled, the
    4-bit layers packed. Each happens once and takes seconds to half a minute; without a
    handler Python shows only warnings, and the command would sit silent."""
    logger = logging.getLogger("tmo_graph.models")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        logger.addHandler(_Stderr())
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


def fail(error: Exception) -> NoReturn:
    """One line on stderr and exit status 2: what a user got wrong, never a traceback."""
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(2)
