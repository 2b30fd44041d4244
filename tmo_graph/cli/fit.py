"""`tmo-graph fit`: refit the router from its own turn records and labels.

Reads the threads (and the labels beside them), fits on the earlier turns, prints before
(the policy that ran) and after (the refit) on the later turns with the paper's reward, and
writes the policy file (`routing.policy: learned`, `routing.policy_file: FILE`; a running
`tmo-graph serve` picks it up without a restart).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from tmo_graph.cli.common import ConfigOption, fail
from tmo_graph.errors import TmoGraphError
from tmo_graph.settings import load_settings


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise TmoGraphError(
            f"--since {value!r} is not a date", "write e.g. 2026-12-01 or 2026-12-01T08:00"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def fit(
    threads: Annotated[
        Path | None,
        typer.Option(
            "--threads",
            help="SQLite thread file (serve --db); default: threads.url of the config, else "
            "<cache>/threads.sqlite",
            show_default=False,
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="only dialogues active at or after this date (ISO)")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="policy file to write")] = Path(
        "policy.refit.json"
    ),
    holdout: Annotated[
        float, typer.Option(help="share of the latest turns held out for before/after")
    ] = 0.3,
    config: ConfigOption = None,
) -> None:
    """Refit confidence calibration, quality gap and response model from the threads."""
    from rich.console import Console
    from rich.table import Table

    from tmo_graph.cli.fit_records import read_examples
    from tmo_graph.policy.refit import RefitModel, RewardTerms, replay, score, time_split, timed

    try:
        settings = load_settings(config)
        started = time.perf_counter()
        examples, over = read_examples(settings, threads, _since(since))
        reading = time.perf_counter() - started
        if not examples:
            raise TmoGraphError(
                f"no finished turns in {threads or 'the thread store'}"
                + (f" since {since}" if since else ""),
                "serve some dialogues first (tmo-graph serve --db FILE), or an earlier --since",
            )
        train, test = time_split(examples, holdout)
        terms = RewardTerms(settings.device.profile, settings.cloud.network)
        model, seconds = timed(lambda: RefitModel.fit(train, terms))
    except TmoGraphError as error:
        fail(error)
    logged, refit = replay(model, test)
    before, after = score(logged, terms), score(refit, terms)
    model.info.update(
        fit_at=datetime.now(UTC).isoformat(timespec="seconds"),
        threads=str(threads) if threads else "threads.url / <cache>/threads.sqlite",
        since=since,
        fit_seconds=round(seconds, 4),
        read_seconds=round(reading, 2),
        holdout={"turns": len(test), "before": vars(before), "after": vars(after)},
    )
    model.save(out)
    console = Console()
    labelled = sum(e.quality is not None for e in examples)
    console.print(
        f"{len(examples)} turns ({labelled} labelled, {over} over budget) read in "
        f"{reading:.1f} s; fit on the first {len(train)} in {seconds:.3f} s; {before.turns} "
        f"of the last {len(test)} are replayable"
    )
    table = Table(title=f"hold-out: the latest {holdout:.0%} ({terms.device}, {terms.network})")
    for column in ("policy", "reward / turn", "s / turn", "USD / turn", "cloud share"):
        table.add_column(column, justify="right" if column != "policy" else "left")
    for name, row in (("before (as served)", before), ("after (refit)", after)):
        table.add_row(
            name,
            f"{row.reward:.4f}",
            f"{row.seconds:.3f}",
            f"{row.usd:.5f}",
            f"{row.cloud_share:.0%}",
        )
    console.print(table)
    console.print(
        f"wrote {out}: set routing.policy: learned and routing.policy_file: {out} "
        "(a running serve reloads it)"
    )
