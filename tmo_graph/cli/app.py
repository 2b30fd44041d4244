"""The `tmo-graph` command: the root Typer app, which registers every command module.

One module per command group; this one lists them all, in the order `--help` shows them
(commands first, then the groups). The modules never import this one back.
"""

from __future__ import annotations

import typer

from tmo_graph.cli import audit, fit, measure, serve, simulate, talk

app = typer.Typer(
    help="Route each dialogue turn to the on-device model or the cloud, within budgets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

app.command()(talk.run)
app.command()(talk.chat)
app.command()(serve.serve)
app.command()(simulate.train)
app.command()(measure.calibrate)
app.command()(fit.fit)
app.command()(audit.audit)
app.add_typer(serve.keys_app, name="keys")
app.add_typer(simulate.bench_app, name="bench")
app.add_typer(measure.eval_app, name="eval")


if __name__ == "__main__":
    app()
