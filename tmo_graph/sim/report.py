"""The benchmark as a paper-style table and a reward-vs-usage plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tmo_graph.plain_text import plain_text
from tmo_graph.sim.methods import METHOD_NOTES

COLUMNS = (
    ("reward", "reward", 4),
    ("response", "response", 4),
    ("association", "assoc.", 4),
    ("latency_s", "latency s", 3),
    ("usage_usd", "usage USD", 5),
    ("overshoot_latency_s", "over lat s", 3),
    ("overshoot_usage_usd", "over USD", 5),
    ("over_budget_share", "% over", 1),
)


def _modalities_line(settings: dict[str, Any]) -> str:
    """A second title line naming a file's declared modalities; "" for M4A1."""
    if not settings.get("modalities"):
        return ""
    shown = ", ".join(f"{m['name']} ({m['kind']})" for m in settings["modalities"])
    return f"\nmodalities: {shown}; audio clips of {settings['audio_clip_s']} s"


def _notes(names: Any) -> list[str]:
    """The notes of the methods in a table (what a row such as own-sim is given)."""
    return [METHOD_NOTES[n] for n in METHOD_NOTES if n in names]


def format_table(result: dict[str, Any]) -> str:
    """The benchmark as plain text: a title line, then one row per method.

    A rich table rendered without colour (the CLI prints it, docs/simulator.md quotes it).
    """
    from rich.table import Table

    s = result["settings"]
    title = (
        f"M4A1, seeds {s['seeds']}, {s['device']} / {s['network']}, budgets "
        f"{s['latency_budget_s']} s / {s['usage_budget_usd']} USD, protocol {s['protocol']} "
        "(mean +- std over seeds)"
    )
    title += _modalities_line(s)
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1))
    table.add_column("method", no_wrap=True)
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right", no_wrap=True)
    # With audio modalities, a fourth count, the cloud calls that sent a clip.
    audio = any("audio" in row["mean"]["actions"] for row in result["methods"].values())
    table.add_column(f"actions local/text/views{'/audio' if audio else ''}", no_wrap=True)
    for name, row in result["methods"].items():
        cells = []
        for key, _, digits in COLUMNS:
            mean, std = row["mean"][key], row["std"][key]
            if key == "over_budget_share":  # a share, shown in percent
                mean, std = 100 * mean, 100 * std
            cells.append(f"{mean:.{digits}f}+-{std:.{digits}f}")
        mix = row["mean"]["actions"]
        actions = f"{mix['local']:.0f}/{mix['cloud_text']:.0f}/{mix['cloud_views']:.0f}"
        if audio:
            actions += f"/{mix.get('audio', 0):.0f}"
        table.add_row(name, *cells, actions)
    # Wide enough never to wrap: the columns size to their content, whatever the terminal.
    return "\n".join([title, plain_text(table, width=1000), *_notes(result["methods"])])


def format_judges_table(result: dict[str, Any]) -> str:
    """The judge battery as plain text: per judge and method the mean reward over seeds,
    each seed's, the paired difference to always-local per dialogue with its standard error
    and the share of episodes over budget; then each method's mean over the battery."""
    from rich.table import Table

    s = result["settings"]
    title = (
        f"M4A1, seeds {s['seeds']}, {s['device']} / {s['network']}, budgets "
        f"{s['latency_budget_s']} s / {s['usage_budget_usd']} USD, protocol judges "
        "(every judge fit on the test split; '- Local': mean paired difference per "
        "dialogue +- its standard error)"
    ) + _modalities_line(s)
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1))
    table.add_column("judge", no_wrap=True)
    table.add_column("method", no_wrap=True)
    table.add_column("reward", justify="right", no_wrap=True)
    table.add_column("per seed", no_wrap=True)
    table.add_column("- Local", justify="right", no_wrap=True)
    table.add_column("% over", justify="right", no_wrap=True)
    for judge, block in result["judges"].items():
        for i, (name, row) in enumerate(block["methods"].items()):
            seeds = " ".join(f"{run['reward']:.4f}" for run in row["per_seed"].values())
            diff = row["vs_local"]
            table.add_row(
                judge if i == 0 else "",
                name,
                f"{row['mean']['reward']:.4f}",
                seeds,
                f"{diff['mean']:+.4f}+-{diff['se']:.4f}",
                f"{100 * row['mean']['over_budget_share']:.1f}",
            )
    for i, (name, reward) in enumerate(result["battery_mean"].items()):
        table.add_row("battery mean" if i == 0 else "", name, f"{reward:.4f}", "", "", "")
    notes = _notes(result["battery_mean"])
    return "\n".join([title, plain_text(table, width=1000), *notes])


def plot_reward_usage(result: dict[str, Any], path: Path) -> None:
    """Reward against usage per method (error bars over seeds), with the action mix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(result["methods"])
    for name in names:
        row = result["methods"][name]
        left.errorbar(
            row["mean"]["usage_usd"],
            row["mean"]["reward"],
            xerr=row["std"]["usage_usd"],
            yerr=row["std"]["reward"],
            fmt="o",
            capsize=3,
        )
        left.annotate(
            name,
            (row["mean"]["usage_usd"], row["mean"]["reward"]),
            textcoords="offset points",
            xytext=(5, 5),
        )
    left.set_xlabel("usage per dialogue (USD)")
    left.set_ylabel("reward")
    left.set_title("reward vs usage (mean +- std over seeds)")
    bottom = [0.0] * len(names)
    for key, color in (("local", "#4c72b0"), ("cloud_text", "#dd8452"), ("cloud_views", "#55a868")):
        values = [result["methods"][n]["mean"]["actions"][key] for n in names]
        right.bar(names, values, bottom=bottom, label=key.replace("_", " "), color=color)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    right.set_ylabel("actions on the test split")
    right.set_title("action mix")
    right.legend()
    right.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
