"""`tmo-graph serve` (the OpenAI-compatible API) and `tmo-graph keys` (the API keys it accepts).

The server's packages (uvicorn, FastAPI) are an extra: they are imported inside the commands,
so the rest of the CLI works without them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tmo_graph.cli.common import ConfigOption, DbOption, fail, show_model_preparation
from tmo_graph.errors import TmoGraphError
from tmo_graph.settings import Settings, load_settings

if TYPE_CHECKING:
    from tmo_graph.server.keys import KeyRing
    from tmo_graph.services import Services

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    config: ConfigOption = None,
    db: DbOption = None,
    keys: Annotated[
        Path | None,
        typer.Option(
            "--keys",
            help="API key file (YAML/JSON, hashes only; `tmo-graph keys add` writes it); "
            "default: server.keys_file / server.keys of the config",
        ),
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="serve without API keys, trusting the request's user field: only on 127.0.0.1",
        ),
    ] = False,
    max_concurrent_turns: Annotated[
        int, typer.Option(help="turns answered at once; more get 503")
    ] = 32,
    thread_wait_s: Annotated[
        float, typer.Option(help="seconds a turn waits for its thread's previous one (then 409)")
    ] = 30.0,
) -> None:
    """An OpenAI-compatible chat API (/v1/chat/completions, model tmo-<policy>) and /console.

    Each request needs an API key (Authorization: Bearer <key>)."""
    # Cold start: the models load on a thread of their own from the moment the settings are
    # read, while this thread imports and builds the app; the socket listens from then on,
    # so an early request waits in its queue instead of being refused.
    try:
        import uvicorn

        from tmo_graph.server.startup import BackgroundLoad, listen
    except ImportError as error:
        fail(TmoGraphError(f"{error.name} is not installed", "pip install 'tmo-graph[serve]'"))
    try:
        if no_auth and host not in LOOPBACK_HOSTS:
            raise TmoGraphError(
                f"--no-auth on --host {host}: anyone who reaches that address could act as "
                "any user and spend the cloud budget",
                "serve without keys only on --host 127.0.0.1, or drop --no-auth and pass "
                "--keys FILE (`tmo-graph keys add --user NAME --file FILE` makes a key)",
            )
        if no_auth and keys is not None:
            raise TmoGraphError("--keys and --no-auth were both given", "pass one of them")
        settings = load_settings(config)
        if keys is not None:
            settings = settings.model_copy(
                update={"server": settings.server.model_copy(update={"keys_file": keys})}
            )
        ring = None if no_auth else _key_ring(settings)  # before the models load
        sock = listen(host, port)
    except TmoGraphError as error:
        fail(error)
    typer.echo("loading models ...", err=True)
    loading = BackgroundLoad(lambda: _services(settings), name="tmo-load-services")
    try:
        from tmo_graph.server.app import create_app
    except ImportError as error:
        fail(TmoGraphError(f"{error.name} is not installed", "pip install 'tmo-graph[serve]'"))
    try:
        services = loading.result()  # a bad config or a failed load fails here, in one line
        server_app = create_app(
            settings=settings,
            services=services,
            db=db,
            max_concurrent_turns=max_concurrent_turns,
            thread_wait_s=thread_wait_s,
            keys=ring,
            no_auth=no_auth,
        )
    except TmoGraphError as error:
        sock.close()
        fail(error)
    access = f"{len(ring.keys())} API key(s)" if ring is not None else "NO API keys (--no-auth)"
    typer.echo(f"serving on http://{host}:{port}/v1 with {access} (GET /v1/models)", err=True)
    _server_log()
    show_model_preparation()
    # One worker: a thread's turns are kept in order by a per-process lock.
    config_ = uvicorn.Config(server_app, host=host, port=port, workers=1, log_level="info")
    uvicorn.Server(config_).run(sockets=[sock])


def _services(settings: Settings) -> Services:
    """The graph's services (imported on the loading thread, so that its imports overlap the
    app's)."""
    from tmo_graph.services import build_services

    return build_services(settings)


def _server_log() -> None:
    """The server's own INFO lines (a policy file or key file read again, a refused key)
    on stderr beside uvicorn's: without a handler Python shows only warnings."""
    logger = logging.getLogger("tmo_graph.server")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _key_ring(settings: Settings) -> KeyRing:
    """The server's keys, read before anything loads (a bad key file fails at once)."""
    from tmo_graph.server.keys import KeyRing

    server = settings.server
    if not server.keys and server.keys_file is None:
        raise TmoGraphError(
            "no API keys: the server would refuse every request",
            "make one with `tmo-graph keys add --user NAME --file keys.yaml` and pass "
            "--keys keys.yaml (or set server.keys_file / TMO_SERVER__KEYS), or serve on "
            "127.0.0.1 with --no-auth",
        )
    return KeyRing(server.keys, server.keys_file)


keys_app = typer.Typer(
    help="API keys of `tmo-graph serve`. A key file (YAML, or JSON for a .json name) holds "
    "`keys:`, a list of {id, user, sha256, policies?, daily_cost_cap_usd?, rate?, proxy?, "
    "admin?, revoked?}: "
    "the SHA-256 of each key, never the key.",
    no_args_is_help=True,
)
KeyFileOption = Annotated[Path, typer.Option("--file", "-f", help="the key file")]


@keys_app.command("add")
def keys_add(
    user: Annotated[str, typer.Option(help="the user the key acts as")],
    file: KeyFileOption,
    key_id: Annotated[
        str | None, typer.Option("--id", help="the key's id in logs (default: USER-random)")
    ] = None,
    policy: Annotated[
        list[str], typer.Option(help="a policy the key may use (repeat); default: all")
    ] = [],  # noqa: B006
    daily_cap: Annotated[
        float | None, typer.Option(help="USD the user may spend a UTC day with this key's rules")
    ] = None,
    rate: Annotated[
        str | None, typer.Option(help="requests allowed, e.g. 60/minute (default: server.rate)")
    ] = None,
    proxy: Annotated[
        bool,
        typer.Option(
            "--proxy",
            help="a trusted proxy's key (e.g. Open WebUI's): its requests name their end user "
            "(user field or server.end_user_header), who acts as USER/<end user>",
        ),
    ] = False,
    admin: Annotated[
        bool,
        typer.Option(
            "--admin",
            help="the console (/console) shows this key every user's threads and the overview; "
            "in /v1 it is an ordinary key",
        ),
    ] = False,
) -> None:
    """Make a key: prints it once (it is stored nowhere) and writes its hash to the file."""
    from tmo_graph.server.keys import add_key

    try:
        entry, secret = add_key(file, user, key_id, policy or None, daily_cap, rate, proxy, admin)
    except TmoGraphError as error:
        fail(error)
    role = " (trusted proxy: end users act as USER/<end user>)" if entry.proxy else ""
    role += " (admin: the console shows every user's threads)" if entry.admin else ""
    typer.echo(f"key {entry.id} for user {entry.user}{role} written to {file}", err=True)
    typer.echo("the key (shown only now; give it to its user):", err=True)
    typer.echo(secret)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="the id of the key to revoke")],
    file: KeyFileOption,
) -> None:
    """Mark a key revoked; a running server refuses it from its next request on."""
    from tmo_graph.server.keys import revoke_key

    try:
        entry = revoke_key(file, key_id)
    except TmoGraphError as error:
        fail(error)
    typer.echo(f"key {entry.id} (user {entry.user}) revoked in {file}")


@keys_app.command("list")
def keys_list(file: KeyFileOption) -> None:
    """The keys in a file: id, user, policies, cap, rate, revoked (never a key)."""
    from tmo_graph.server.keys import read_key_file

    try:
        entries = read_key_file(file)
    except TmoGraphError as error:
        fail(error)
    for e in entries:
        policies = ",".join(e.policies) if e.policies else "all"
        cap = "-" if e.daily_cost_cap_usd is None else f"{e.daily_cost_cap_usd:g} USD/day"
        state = (
            ("revoked" if e.revoked else "active")
            + (" proxy" if e.proxy else "")
            + (" admin" if e.admin else "")
        )
        typer.echo(f"{e.id}\t{e.user}\t{policies}\t{cap}\t{e.rate or 'default rate'}\t{state}")
