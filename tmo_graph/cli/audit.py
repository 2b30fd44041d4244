"""`tmo-graph audit`: a summary of the audit log every cloud call writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tmo_graph.cli.common import fail
from tmo_graph.errors import TmoGraphError


def audit(
    log: Annotated[
        Path, typer.Argument(help="audit log (JSONL), e.g. ~/.cache/tmo-graph/audit.jsonl")
    ],
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Summarize the audit log: cloud requests by outcome and model, tokens, cost, views sent,
    personal data replaced."""
    from tmo_graph.guards.audit import format_summary, read_audit, summarize

    try:
        summary = summarize(read_audit(log), log)
    except TmoGraphError as error:
        fail(error)
    typer.echo(json.dumps(summary, indent=2) if json_out else format_summary(summary))
