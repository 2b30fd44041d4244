"""`tmo-graph run` and `tmo-graph chat`: dialogues with the compiled graph and its real models.

`run` replays scripted dialogues (JSONL, :mod:`tmo_graph.cli.dialogues`) and `chat` reads
messages from the terminal; both print a row per turn (:mod:`tmo_graph.cli.turn_table`).
`chat` streams each answer as it is made (:mod:`tmo_graph.cli.terminal`) and says before
the next turn when little of the dialogue's budget is left; `run` shows a spinner while a
turn runs, on a terminal.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tmo_graph.cli.common import (
    ConfigOption,
    DbOption,
    PolicyOption,
    fail,
    show_model_preparation,
    write_json,
)
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.settings import Settings, load_settings

if TYPE_CHECKING:  # the state types load LangGraph: `tmo-graph --help` need not
    from tmo_graph.state import TurnRecord


@contextmanager
def _graph(settings: Settings, db: Path | None) -> Iterator[tuple[Any, Any]]:
    """The compiled graph (real services; threads in SQLite, or PostgreSQL at threads.url)."""
    from tmo_graph.graph import build_graph
    from tmo_graph.services import build_services
    from tmo_graph.threads.store import open_checkpointer

    # The thread store first: an unreachable PostgreSQL fails in a second, not after the models.
    with open_checkpointer(settings, db) as saver:
        typer.echo("loading models ...", err=True)
        show_model_preparation()
        services = build_services(settings)  # fail before the dialogue, not in the middle of it
        yield build_graph(services, checkpointer=saver), services


def run(
    dialogues: Annotated[Path, typer.Argument(help="JSONL file, one dialogue per line")],
    config: ConfigOption = None,
    policy: PolicyOption = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write turn records here")] = None,
    db: DbOption = None,
    resume: Annotated[
        bool, typer.Option(help="continue threads instead of restarting them")
    ] = False,
) -> None:
    """Run scripted dialogues and print a row per turn: route, confidence, latency, cost."""
    from tmo_graph.cli.dialogues import dialogue_context, load_dialogues
    from tmo_graph.cli.turn_table import console, print_dialogue_banner, print_header, print_turn
    from tmo_graph.conversation import finish_interrupted
    from tmo_graph.memory.recall import forget_thread

    results: list[dict[str, Any]] = []  # the dialogues that finished
    try:
        settings = load_settings(config)
        loaded = load_dialogues(dialogues)
        # all contexts first: a bad value fails before the models load
        contexts = [dialogue_context(settings, d, policy) for d in loaded]
        screen = console()
        with _graph(settings, db) as (graph, services):
            for dialogue, context in zip(loaded, contexts, strict=True):
                config_ = {"configurable": {"thread_id": dialogue.id}}
                if not resume:  # a restarted dialogue starts with no state and no memory
                    graph.checkpointer.delete_thread(dialogue.id)
                    forget_thread(services.memory, user_id=dialogue.user_id, thread_id=dialogue.id)
                print_dialogue_banner(dialogue.id, dialogue.user_id, context.policy, screen)
                print_header(screen)
                records = []
                # A resumed thread whose last turn a crash cut short: complete that one first.
                if resume and (record := finish_interrupted(graph, config_, context)):
                    records.append(record)
                    print_turn(record, screen)
                for number, state_in in enumerate(dialogue.turn_inputs()):
                    try:
                        with _progress(screen, f"dialogue {dialogue.id}, turn {number}"):
                            out = graph.invoke(
                                state_in, config_, context=context, durability="sync"
                            )
                    except TmoGraphError as error:
                        where = f"dialogue {dialogue.id}, turn {number}"
                        raise TmoGraphError(f"{where}: {error.problem}", error.fix) from None
                    records.append(out["turns"][-1])
                    print_turn(records[-1], screen)
                results.append({"id": dialogue.id, "turns": records})
    except TmoGraphError as error:
        if json_out and results:  # what finished is kept, and the error line says where
            write_json(json_out, results)
            error = TmoGraphError(
                f"{error.problem} (the {len(results)} dialogue(s) that finished were "
                f"written to {json_out})",
                error.fix,
            )
        fail(error)
    except BaseException:
        if json_out and results:  # an unexpected failure: keep what finished all the same
            write_json(json_out, results)
        raise
    if json_out:
        write_json(json_out, results)


def _progress(screen: Any, what: str) -> AbstractContextManager[Any]:
    """A spinner while a turn runs, on a terminal only (a turn can take many seconds)."""
    if not screen.is_terminal:
        return nullcontext()
    return screen.status(f"{what}: answering ...")


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise TmoGraphError(f"{flag} {value!r} is not NAME=VALUE", f"write {flag} overhead=...")
        out[name] = rest
    return out


def chat(
    thread: Annotated[str | None, typer.Option(help="thread id to start or resume")] = None,
    user: Annotated[
        str, typer.Option(help="owner of the dialogue (memory is per user)")
    ] = "default",
    view: Annotated[
        list[str],
        typer.Option(help="a camera view or microphone: NAME=IMAGE_PATH or NAME=CLIP.wav"),
    ] = [],  # noqa: B006
    caption: Annotated[list[str], typer.Option(help="a view's description: NAME=TEXT")] = [],  # noqa: B006
    config: ConfigOption = None,
    policy: PolicyOption = None,
    latency_budget: Annotated[
        float | None,
        typer.Option(
            help="seconds the whole dialogue may take (a new thread; default: "
            "routing.latency_budget_s)",
            show_default=False,
        ),
    ] = None,
    cost_budget: Annotated[
        float | None,
        typer.Option(
            help="USD the whole dialogue may cost (a new thread; default: routing.cost_budget_usd)",
            show_default=False,
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Talk to the graph: each answer streams, then where it was made and what it cost."""
    from tmo_graph.cli.dialogues import cli_views

    try:
        settings = load_settings(config)
        context = Context.from_settings(
            settings,
            user_id=user,
            policy=policy,
            latency_budget_s=latency_budget,
            cost_budget_usd=cost_budget,
        )
        # paths stay references (checked now, absolute); no pixels in the thread's state
        views = cli_views(_pairs(view, "--view"), _pairs(caption, "--caption"))
        thread_id = thread or uuid.uuid4().hex[:8]
        with _graph(settings, db) as (graph, _):
            _chat(graph, settings, context, views, thread_id)
    except (EOFError, KeyboardInterrupt):
        typer.echo("")
    except TmoGraphError as error:
        fail(error)


def _chat(
    graph: Any, settings: Settings, context: Context, views: dict[str, Any], thread_id: str
) -> None:
    """The dialogue: read a line, stream its turn, print the turn's row and any warning of a
    spent budget; until /quit or the end of the input."""
    from langchain_core.messages import HumanMessage

    from tmo_graph.cli.dialogues import chat_message
    from tmo_graph.cli.turn_table import console, print_turn
    from tmo_graph.conversation import finish_interrupted

    screen = console()
    typer.echo(
        f"thread {thread_id} (resume with --thread {thread_id}); /image PATH question "
        "or /audio PATH [question] attaches a file; /quit to leave"
    )
    run_config = {"configurable": {"thread_id": thread_id}}
    if record := finish_interrupted(graph, run_config, context):
        typer.echo("(the last turn was cut short; it is answered first)")
        print_turn(record, screen, answer_width=10_000, header=True)
    _warn_low_budget(graph.get_state(run_config).values.get("budget_left"), settings, context)
    first = True
    for line in sys.stdin if not sys.stdin.isatty() else iter(lambda: input("you> "), None):
        text = line.strip()
        if text in ("/quit", "/exit"):
            break
        if not text:
            typer.echo("(empty message: type a question, or /quit)")
            continue
        try:
            content = chat_message(text, Path.cwd())
        except TmoGraphError as error:  # a typo in a command: say so, keep chatting
            typer.echo(f"({error})")
            continue
        state_in: dict[str, Any] = {"messages": [HumanMessage(content=content)]}  # type: ignore[arg-type]
        if first and views:
            state_in["views"] = views
        first = False
        clips = _has_clips(content, graph.get_state(run_config).values.get("views") or views)
        record = _turn(graph, state_in, thread_id, context, screen, clips)
        print_turn(record, screen, answer_width=10_000, header=True, answer=False)
        _warn_low_budget(record["budget_left"], settings, context)


def _turn(
    graph: Any, state_in: dict[str, Any], thread_id: str, context: Context, screen: Any, clips: bool
) -> TurnRecord:
    """One turn streamed to the screen; its record."""
    from tmo_graph.cli.terminal import LiveTurn, PlainTurn
    from tmo_graph.conversation import Done, watch_turn

    view = LiveTurn(screen, clips) if screen.is_terminal else PlainTurn()
    done = None
    with view:
        for event in watch_turn(graph, state_in, thread_id, context):
            view.show(event)
            if isinstance(event, Done):
                done = event
    assert done is not None  # watch_turn always ends with Done
    return done.record


def _has_clips(content: Any, views: dict[str, Any]) -> bool:
    """Whether the turn has audio to transcribe: a voice note or a microphone view."""
    notes = isinstance(content, list) and any(
        isinstance(part, dict) and part.get("type") == "audio" for part in content
    )
    return notes or any(v.get("audio") for v in views.values())


def _warn_low_budget(left: Any, settings: Settings, context: Context) -> None:
    """Before the next turn: say when little of the dialogue's budget is left."""
    from tmo_graph.cli.terminal import low_budget

    if not left:
        return
    share = 1.0 - settings.spending.warn_fraction  # the share left when account warns
    warning = low_budget(left, context.latency_budget_s, context.cost_budget_usd, share)
    if warning:
        typer.secho(warning, fg="yellow")
