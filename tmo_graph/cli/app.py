"""The `tmo-graph` command: chat, run scripted dialogues."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from tmo_graph.context import Context
from tmo_graph.costs import profiles
from tmo_graph.errors import TmoGraphError
from tmo_graph.settings import Settings, load_settings

# The benchmark's method names (kept here so `--help` needs no simulator import).
ALL_METHODS = "local,cloud,random,ppo,a2c,dqn,rc-ppo,rc-a2c,rc-dqn,own,rules,cascade"

app = typer.Typer(
    help="Route each dialogue turn to the on-device model or the cloud, within budgets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config (default: built-in defaults)")
]
PolicyOption = Annotated[
    str | None, typer.Option(help="always-local, always-cloud, random, rules or cascade")
]
DataOption = Annotated[Path, typer.Option(help="M4A1-format JSON")]
DEFAULT_DATA = Path("../shared/data/M4A1.json")
NetworkOption = Annotated[str, typer.Option(help="paper network profile: Wired, WiFi, 5G or 4G")]
DeviceOption = Annotated[str, typer.Option(help="paper device profile, e.g. 'Jetson TX2'")]
DbOption = Annotated[
    Path | None, typer.Option("--db", help="SQLite file for dialogue threads (resumable)")
]


def _write_json(path: Path, data: Any) -> None:
    # allow_nan=False: NaN / Infinity are not JSON; refuse them rather than write a broken file.
    text = json.dumps(data, indent=2, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    typer.echo(f"wrote {path}")


def _fail(error: Exception) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(2)


@contextmanager
def _graph(settings: Settings, db: Path | None) -> Iterator[tuple[Any, Any]]:
    """The compiled graph (real services; threads in SQLite, or PostgreSQL at threads.url)."""
    from tmo_graph.graph import build_graph
    from tmo_graph.services import build_services
    from tmo_graph.threads.store import open_checkpointer

    # The thread store first: an unreachable PostgreSQL fails in a second, not after the models.
    with open_checkpointer(settings, db) as saver:
        typer.echo("loading models ...", err=True)
        services = build_services(settings)  # fail before the dialogue, not in the middle of it
        yield build_graph(services, checkpointer=saver), services


@app.command()
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
                    services.memory.forget_thread(user_id=dialogue.user_id, thread_id=dialogue.id)
                print_dialogue_banner(dialogue.id, dialogue.user_id, context.policy, screen)
                print_header(screen)
                records = []
                # A resumed thread whose last turn a crash cut short: complete that one first.
                if resume and (record := finish_interrupted(graph, config_, context)):
                    records.append(record)
                    print_turn(record, screen)
                for number, state_in in enumerate(dialogue.turn_inputs()):
                    try:
                        out = graph.invoke(state_in, config_, context=context, durability="sync")
                    except TmoGraphError as error:
                        where = f"dialogue {dialogue.id}, turn {number}"
                        raise TmoGraphError(f"{where}: {error.problem}", error.fix) from None
                    records.append(out["turns"][-1])
                    print_turn(records[-1], screen)
                results.append({"id": dialogue.id, "turns": records})
    except TmoGraphError as error:
        if json_out and results:  # what finished is kept, and the error line says where
            _write_json(json_out, results)
            error = TmoGraphError(
                f"{error.problem} (the {len(results)} dialogue(s) that finished were "
                f"written to {json_out})",
                error.fix,
            )
        _fail(error)
    except BaseException:
        if json_out and results:  # an unexpected failure: keep what finished all the same
            _write_json(json_out, results)
        raise
    if json_out:
        _write_json(json_out, results)


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise TmoGraphError(f"{flag} {value!r} is not NAME=VALUE", f"write {flag} overhead=...")
        out[name] = rest
    return out


@app.command()
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
    db: DbOption = None,
) -> None:
    """Talk to the graph; every answer shows where it was made and what it cost."""
    from langchain_core.messages import HumanMessage

    from tmo_graph.cli.dialogues import chat_message, cli_views
    from tmo_graph.cli.turn_table import print_turn
    from tmo_graph.conversation import finish_interrupted

    try:
        settings = load_settings(config)
        context = Context.from_settings(settings, user_id=user, policy=policy)
        # paths stay references (checked now, absolute); no pixels in the thread's state
        views = cli_views(_pairs(view, "--view"), _pairs(caption, "--caption"))
        thread_id = thread or uuid.uuid4().hex[:8]
        with _graph(settings, db) as (graph, _):
            typer.echo(
                f"thread {thread_id} (resume with --thread {thread_id}); /image PATH question "
                "or /audio PATH [question] attaches a file; /quit to leave"
            )
            run_config = {"configurable": {"thread_id": thread_id}}
            if record := finish_interrupted(graph, run_config, context):
                typer.echo("(the last turn was cut short; it is answered first)")
                print_turn(record, answer_width=10_000, header=True)
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
                message = HumanMessage(content=content)  # type: ignore[arg-type]
                state_in: dict[str, Any] = {"messages": [message]}
                if first and views:
                    state_in["views"] = views
                first = False
                out = graph.invoke(state_in, run_config, context=context, durability="sync")
                print_turn(out["turns"][-1], answer_width=10_000, header=True)
    except (EOFError, KeyboardInterrupt):
        typer.echo("")
    except TmoGraphError as error:
        _fail(error)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@app.command()
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
    """An OpenAI-compatible chat API: POST /v1/chat/completions with model tmo-<policy>,
    each request with an API key (Authorization: Bearer <key>)."""
    try:
        import uvicorn

        from tmo_graph.server.app import create_app
        from tmo_graph.server.keys import KeyRing
        from tmo_graph.services import build_services
    except ImportError as error:
        _fail(TmoGraphError(f"{error.name} is not installed", "pip install 'tmo-graph[serve]'"))
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
        ring = None if no_auth else _key_ring(settings, KeyRing)  # before the models load
        typer.echo("loading models ...", err=True)
        services = build_services(settings)  # a bad config fails here, in one line
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
        _fail(error)
    access = f"{len(ring.keys())} API key(s)" if ring is not None else "NO API keys (--no-auth)"
    typer.echo(f"serving on http://{host}:{port}/v1 with {access} (GET /v1/models)", err=True)
    # One worker: a thread's turns are kept in order by a per-process lock.
    uvicorn.run(server_app, host=host, port=port, workers=1, log_level="info")


def _key_ring(settings: Settings, ring_type: Any) -> Any:
    """The server's keys (``ring_type``: KeyRing, imported with the server's extras)."""
    server = settings.server
    if not server.keys and server.keys_file is None:
        raise TmoGraphError(
            "no API keys: the server would refuse every request",
            "make one with `tmo-graph keys add --user NAME --file keys.yaml` and pass "
            "--keys keys.yaml (or set server.keys_file / TMO_SERVER__KEYS), or serve on "
            "127.0.0.1 with --no-auth",
        )
    return ring_type(server.keys, server.keys_file)


keys_app = typer.Typer(
    help="API keys of `tmo-graph serve`. A key file (YAML, or JSON for a .json name) holds "
    "`keys:`, a list of {id, user, sha256, policies?, daily_cost_cap_usd?, rate?, revoked?}: "
    "the SHA-256 of each key, never the key.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
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
) -> None:
    """Make a key: prints it once (it is stored nowhere) and writes its hash to the file."""
    from tmo_graph.server.keys import add_key

    try:
        entry, secret = add_key(file, user, key_id, policy or None, daily_cap, rate)
    except TmoGraphError as error:
        _fail(error)
    typer.echo(f"key {entry.id} for user {entry.user} written to {file}", err=True)
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
        _fail(error)
    typer.echo(f"key {entry.id} (user {entry.user}) revoked in {file}")


@keys_app.command("list")
def keys_list(file: KeyFileOption) -> None:
    """The keys in a file: id, user, policies, cap, rate, revoked (never a key)."""
    from tmo_graph.server.keys import read_key_file

    try:
        entries = read_key_file(file)
    except TmoGraphError as error:
        _fail(error)
    for e in entries:
        policies = ",".join(e.policies) if e.policies else "all"
        cap = "-" if e.daily_cost_cap_usd is None else f"{e.daily_cost_cap_usd:g} USD/day"
        state = "revoked" if e.revoked else "active"
        typer.echo(f"{e.id}\t{e.user}\t{policies}\t{cap}\t{e.rate or 'default rate'}\t{state}")


@app.command()
def train(
    data: DataOption = DEFAULT_DATA,
    algo: Annotated[str, typer.Option(help="ppo, a2c or dqn")] = "ppo",
    constrained: Annotated[bool, typer.Option(help="budgets in the observation")] = False,
    network: NetworkOption = "Wired",
    device: DeviceOption = "Jetson TX2",
    steps: Annotated[int, typer.Option(help="training steps")] = 30_000,
    seed: Annotated[int, typer.Option(help="seed of the split and the learner")] = 9139,
    output: Annotated[Path, typer.Option("--output", "-o", help="policy file to write")] = Path(
        "policy.zip"
    ),
) -> None:
    """Train an RL routing policy in the M4A1 simulator (on the seed's 80 % split)."""
    from tmo_graph.policy.observation import ObservationSpec
    from tmo_graph.policy.world import SimSettings
    from tmo_graph.sim.data import load_m4a1, paper_split
    from tmo_graph.sim.train import ALGORITHMS, spec_path, train_policy

    try:
        if algo not in ALGORITHMS:
            raise TmoGraphError(f"unknown --algo {algo!r}", f"use one of: {', '.join(ALGORITHMS)}")
        dataset = load_m4a1(data)
        settings = SimSettings(device=device, network=network)
        spec = ObservationSpec(
            dataset.n_views,
            dataset.task_names,
            with_budgets=constrained,
            modality_kinds=dataset.kinds,
        )
        train_split, _ = paper_split(dataset.episodes, seed)
        policy = train_policy(algo, train_split, spec, settings, steps, seed, progress_bar=True)
        policy.save(output)
    except TmoGraphError as error:
        _fail(error)
    typer.echo(f"wrote {output} and {spec_path(output).name}")


bench_app = typer.Typer(help="Benchmarks of routing policies.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("m4a1")
def bench_m4a1(
    data: DataOption = DEFAULT_DATA,
    seeds: Annotated[str, typer.Option(help="a count (3: the reference seeds) or a list")] = "3",
    methods: Annotated[
        str,
        typer.Option(help=f"comma-separated, any of: {ALL_METHODS}"),
    ] = ALL_METHODS,
    steps: Annotated[int, typer.Option(help="training steps per RL policy")] = 30_000,
    protocol: Annotated[
        str,
        typer.Option(
            help="paper: judged by the training-split KNN; heldout: test-split KNN; "
            "judges: a battery of test-split judges (see --judge)"
        ),
    ] = "paper",
    judge: Annotated[
        list[str] | None,
        typer.Option(
            help="--protocol judges: a judge spec, repeatable: knn:k=K[,weights=uniform], "
            "cross:folds=F,repeats=R, loo, sklearn:MODULE.CLASS (default: knn:k=3, knn:k=5, "
            "knn:k=10, cross:folds=2,repeats=10, loo)"
        ),
    ] = None,
    network: NetworkOption = "Wired",
    device: DeviceOption = "Jetson TX2",
    latency_budget: Annotated[float, typer.Option(help="seconds per dialogue")] = 30.0,
    usage_budget: Annotated[float, typer.Option(help="USD per dialogue")] = 0.05,
    audio_seconds: Annotated[
        float, typer.Option(help="length of each audio clip sent (files with audio modalities)")
    ] = profiles.AUDIO_CLIP_S,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the table here")] = None,
    plot: Annotated[Path | None, typer.Option(help="write reward vs usage plot (PNG)")] = None,
    scored: Annotated[
        Path | None,
        typer.Option(
            help="rules/cascade: confidence from token scores cached by "
            "`tmo-graph eval confidence --scored FILE` (default: the answers' text signals)"
        ),
    ] = None,
    confidence_threshold: Annotated[
        float | None, typer.Option(help="rules/cascade: escalate below this (default: config's)")
    ] = None,
    min_view_score: Annotated[
        float | None,
        typer.Option(help="rules/cascade: views worth sending (default: train-split median)"),
    ] = None,
) -> None:
    """The paper's M4A1 table: every method on the same seeded 80/20 splits."""
    from tmo_graph.policy.world import SimSettings
    from tmo_graph.sim.bench import parse_methods, parse_seeds, run_benchmark
    from tmo_graph.sim.data import load_m4a1
    from tmo_graph.sim.report import format_judges_table, format_table, plot_reward_usage

    try:
        if plot and protocol == "judges":
            raise TmoGraphError(
                "--plot draws one judge's table, --protocol judges has several",
                "drop --plot, or plot a --protocol paper or heldout run",
            )
        settings = SimSettings(
            device=device,
            network=network,
            latency_budget_s=latency_budget,
            usage_budget_usd=usage_budget,
            audio_clip_s=audio_seconds,
        )
        result = run_benchmark(
            load_m4a1(data),
            parse_seeds(seeds),
            parse_methods(methods),
            settings,
            steps=steps,
            protocol=protocol,
            progress=lambda line: typer.echo(line, err=True),
            scored=scored,
            confidence_threshold=confidence_threshold,
            min_view_score=min_view_score,
            judges=judge,
        )
    except TmoGraphError as error:
        _fail(error)
    typer.echo(format_judges_table(result) if protocol == "judges" else format_table(result))
    if json_out:
        _write_json(json_out, result)
    if plot:
        plot_reward_usage(result, plot)
        typer.echo(f"wrote {plot}")


@bench_app.command("generate")
def bench_generate(
    out: Annotated[Path, typer.Option(help="the generated M4A1-format JSON file to write")],
    data: DataOption = DEFAULT_DATA,
    dialogues: Annotated[int, typer.Option(help="dialogues to generate")] = 100,
    views: Annotated[
        int | None, typer.Option(help="camera views kept from the source (default: all)")
    ] = None,
    audio: Annotated[int, typer.Option(help="audio clip modalities to add (mic, mic2, ...)")] = 1,
    seed: Annotated[int, typer.Option(help="seed of the draws")] = 0,
) -> None:
    """M4A1-shaped dialogues with audio clips, from the source's turns (run them with
    `tmo-graph bench m4a1 --data OUT`; the model is in tmo_graph/sim/generate.py)."""
    from tmo_graph.sim.data import load_m4a1
    from tmo_graph.sim.generate import generate_dialogues, write_dialogues

    try:
        episodes = generate_dialogues(load_m4a1(data), dialogues, views, audio, seed)
        write_dialogues(out, episodes, source=data)
    except TmoGraphError as error:
        _fail(error)
    turns = sum(len(e["interactions"]) for e in episodes)
    names = ", ".join(m["name"] for m in episodes[0]["modalities"])
    typer.echo(f"wrote {out}: {len(episodes)} dialogues, {turns} turns, modalities {names}")


@app.command()
def calibrate(
    prompts: Annotated[Path, typer.Option(help="prompts like yours: text (one a line) or JSONL")],
    target_cloud_rate: Annotated[
        float, typer.Option(help="share of answers to escalate to the cloud, 0..1")
    ] = 0.3,
    config: ConfigOption = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="config to write, with the threshold set")
    ] = Path("configs/calibrated.yaml"),
    target_quality: Annotated[
        float | None,
        typer.Option(help="instead of a cloud rate: expected share of good answers to reach, 0..1"),
    ] = None,
    cloud_quality: Annotated[
        float | None,
        typer.Option(
            help="share of the cloud model's answers that are good, 0..1 "
            "(default: the share of M4A1's cloud answers beating the median local one)"
        ),
    ] = None,
    report: Annotated[
        bool, typer.Option(help="print the cloud rate, cost and quality estimates on the set")
    ] = False,
) -> None:
    """Set the escalation threshold for a target cloud rate (or a target answer quality)."""
    from tmo_graph.eval import calibrate as calibration

    try:
        settings = load_settings(config)
        result = calibration.calibrate(
            prompts,
            settings,
            target_cloud_rate,
            target_quality,
            calibration.M4A1_CLOUD_GOOD_SHARE if cloud_quality is None else cloud_quality,
            lambda done, total: typer.echo(f"{done}/{total}", err=True),
        )
        calibration.write_config(settings, result.threshold, output)
    except TmoGraphError as error:
        _fail(error)
    typer.echo(calibration.summary(result, output))
    if report:
        typer.echo(calibration.report(result, settings))


eval_app = typer.Typer(help="Measurements of the router's parts.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("confidence")
def eval_confidence(
    data: DataOption = DEFAULT_DATA,
    config: ConfigOption = None,
    seed: Annotated[int, typer.Option(help="seed of the dialogue split")] = 9139,
    limit: Annotated[int | None, typer.Option(help="score only the first N local turns")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    scored: Annotated[
        Path | None,
        typer.Option(help="cache of the model's token scores: read if it exists, else written"),
    ] = None,
    fit_out: Annotated[
        Path | None, typer.Option(help="write the combination refit on the train part here")
    ] = None,
    sampling: Annotated[
        int, typer.Option(help="also measure sampling agreement with K samples (held-out part)")
    ] = 0,
) -> None:
    """AUROC / Spearman of each confidence estimator against M4A1's answer scores."""
    from tmo_graph.eval.estimators import format_report, run_confidence_eval

    try:
        result = run_confidence_eval(
            data,
            load_settings(config),
            seed,
            limit,
            scored,
            sampling,
            lambda line: typer.echo(line, err=True),
        )
    except TmoGraphError as error:
        _fail(error)
    typer.echo(format_report(result))
    if json_out:
        _write_json(json_out, result)
    if fit_out:
        _write_json(fit_out, result["refit"])


@eval_app.command("answers")
def eval_answers(
    data: DataOption = DEFAULT_DATA,
    config: ConfigOption = None,
    limit: Annotated[int | None, typer.Option(help="answer only the first N local turns")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    answers_out: Annotated[
        Path | None, typer.Option(help="write every generated answer here (JSON), to read them")
    ] = None,
) -> None:
    """Loops, length and confidence of the device model's own answers to M4A1's prompts."""
    from tmo_graph.eval.answers import format_report, run_answers_eval

    try:
        result = run_answers_eval(
            data,
            load_settings(config),
            limit,
            answers_out,
            lambda line: typer.echo(line, err=True),
        )
    except TmoGraphError as error:
        _fail(error)
    typer.echo(format_report(result))
    if json_out:
        _write_json(json_out, result)


@eval_app.command("gap")
def eval_gap(
    data: DataOption = DEFAULT_DATA,
    config: ConfigOption = None,
    seed: Annotated[int, typer.Option(help="seed of the dialogue split")] = 9139,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="write a predictor fit on every dialogue (embeddings.gap_predictor)",
        ),
    ] = None,
) -> None:
    """Quality-gap predictor (cloud minus local score, from the prompt): held-out figures."""
    from tmo_graph.eval.gap_fit import format_report, run_gap_eval

    try:
        result, _ = run_gap_eval(data, load_settings(config), seed, output)
    except TmoGraphError as error:
        _fail(error)
    typer.echo(format_report(result))
    if json_out:
        _write_json(json_out, result)
    if output:
        d = result["dialogues"]
        typer.echo(
            f"wrote {output} (fit on all {d['train'] + d['test']} dialogues; point "
            "embeddings.gap_predictor at it in a config)"
        )


@app.command()
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
        _fail(error)
    typer.echo(json.dumps(summary, indent=2) if json_out else format_summary(summary))


if __name__ == "__main__":
    app()
