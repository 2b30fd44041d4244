"""The `tmo-graph` command: chat, run scripted dialogues."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from tmo_graph.calibrate import M4A1_CLOUD_GOOD_SHARE
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.settings import Settings, default_cache_dir, load_settings

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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    typer.echo(f"wrote {path}")


def _fail(error: Exception) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(2)


@contextmanager
def _graph(settings: Settings, db: Path | None) -> Iterator[tuple[Any, Any]]:
    """The compiled graph (real services, SQLite checkpointer) and its services."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    from tmo_graph.graph import build_graph
    from tmo_graph.services import build_services

    db = db or default_cache_dir() / "threads.sqlite"
    db.parent.mkdir(parents=True, exist_ok=True)
    typer.echo("loading models ...", err=True)
    services = build_services(settings)  # fail before the dialogue, not in the middle of it
    with SqliteSaver.from_conn_string(str(db)) as saver:
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
    from tmo_graph.dialogues import dialogue_context, load_dialogues
    from tmo_graph.report import console, print_dialogue_banner, print_header, print_turn

    try:
        settings = load_settings(config)
        loaded = load_dialogues(dialogues)
        # all contexts first: a bad value fails before the models load
        contexts = [dialogue_context(settings, d, policy) for d in loaded]
        screen = console()
        results = []
        with _graph(settings, db) as (graph, services):
            for dialogue, context in zip(loaded, contexts, strict=True):
                config_ = {"configurable": {"thread_id": dialogue.id}}
                if not resume:  # a restarted dialogue starts with no state and no memory
                    graph.checkpointer.delete_thread(dialogue.id)
                    services.memory.forget_thread(user_id=dialogue.user_id, thread_id=dialogue.id)
                print_dialogue_banner(dialogue.id, dialogue.user_id, context.policy, screen)
                print_header(screen)
                records = []
                for state_in in dialogue.turn_inputs():
                    record = graph.invoke(state_in, config_, context=context)["turns"][-1]
                    records.append(record)
                    print_turn(record, screen)
                results.append({"id": dialogue.id, "turns": records})
    except TmoGraphError as error:
        _fail(error)
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
    view: Annotated[list[str], typer.Option(help="a camera view: NAME=IMAGE_PATH")] = [],  # noqa: B006
    caption: Annotated[list[str], typer.Option(help="a view's description: NAME=TEXT")] = [],  # noqa: B006
    config: ConfigOption = None,
    policy: PolicyOption = None,
    db: DbOption = None,
) -> None:
    """Talk to the graph; every answer shows where it was made and what it cost."""
    from tmo_graph.dialogues import cli_views
    from tmo_graph.report import print_turn

    try:
        settings = load_settings(config)
        context = Context.from_settings(settings, user_id=user, policy=policy)
        # paths stay references (checked now, absolute); no pixels in the thread's state
        views = cli_views(_pairs(view, "--view"), _pairs(caption, "--caption"))
        thread_id = thread or uuid.uuid4().hex[:8]
        with _graph(settings, db) as (graph, _):
            typer.echo(f"thread {thread_id} (resume with --thread {thread_id}); /quit to leave")
            first = True
            for line in sys.stdin if not sys.stdin.isatty() else iter(lambda: input("you> "), None):
                text = line.strip()
                if text in ("/quit", "/exit"):
                    break
                if not text:
                    typer.echo("(empty message: type a question, or /quit)")
                    continue
                state_in: dict[str, Any] = {"messages": [("user", text)]}
                if first and views:
                    state_in["views"] = views
                first = False
                out = graph.invoke(
                    state_in, {"configurable": {"thread_id": thread_id}}, context=context
                )
                print_turn(out["turns"][-1], answer_width=10_000, header=True)
    except (EOFError, KeyboardInterrupt):
        typer.echo("")
    except TmoGraphError as error:
        _fail(error)


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
    from tmo_graph.sim.data import load_m4a1, paper_split
    from tmo_graph.sim.train import ALGORITHMS, spec_path, train_policy
    from tmo_graph.sim.world import SimSettings

    try:
        if algo not in ALGORITHMS:
            raise TmoGraphError(f"unknown --algo {algo!r}", f"use one of: {', '.join(ALGORITHMS)}")
        dataset = load_m4a1(data)
        settings = SimSettings(device=device, network=network)
        spec = ObservationSpec(dataset.n_views, dataset.task_names, with_budgets=constrained)
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
        str, typer.Option(help="paper: judged by the training-split KNN; heldout: test-split KNN")
    ] = "paper",
    network: NetworkOption = "Wired",
    device: DeviceOption = "Jetson TX2",
    latency_budget: Annotated[float, typer.Option(help="seconds per dialogue")] = 30.0,
    usage_budget: Annotated[float, typer.Option(help="USD per dialogue")] = 0.05,
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
    from tmo_graph.sim.bench import parse_methods, parse_seeds, run_benchmark
    from tmo_graph.sim.data import load_m4a1
    from tmo_graph.sim.report import format_table, plot_reward_usage
    from tmo_graph.sim.world import SimSettings

    try:
        settings = SimSettings(
            device=device,
            network=network,
            latency_budget_s=latency_budget,
            usage_budget_usd=usage_budget,
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
        )
    except TmoGraphError as error:
        _fail(error)
    typer.echo(format_table(result))
    if json_out:
        _write_json(json_out, result)
    if plot:
        plot_reward_usage(result, plot)
        typer.echo(f"wrote {plot}")


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
        float, typer.Option(help="share of the cloud model's answers that are good, 0..1")
    ] = M4A1_CLOUD_GOOD_SHARE,
    report: Annotated[
        bool, typer.Option(help="print the cloud rate, cost and quality estimates on the set")
    ] = False,
) -> None:
    """Set the escalation threshold for a target cloud rate (or a target answer quality)."""
    import yaml

    from tmo_graph.calibrate import (
        cloud_rate,
        expected_quality,
        load_prompts,
        local_confidences,
        threshold_for_cloud_rate,
        threshold_for_quality,
    )
    from tmo_graph.models.local import get_local_model
    from tmo_graph.policy.base import Action
    from tmo_graph.policy.budget import expected_cost
    from tmo_graph.prompts import SYSTEM_PROMPT

    try:
        settings = load_settings(config)
        texts = load_prompts(prompts)
        local = get_local_model(
            settings.local.source, settings.local.max_new_tokens, settings.model_cache_dir()
        )
        values = local_confidences(
            texts, local, lambda done, total: typer.echo(f"{done}/{total}", err=True)
        )
        if target_quality is None:
            threshold = threshold_for_cloud_rate(values, target_cloud_rate)
        else:
            threshold = threshold_for_quality(values, target_quality, cloud_quality)
    except TmoGraphError as error:
        _fail(error)
    raw = settings.model_dump(mode="json")
    raw["routing"]["confidence_threshold"] = round(threshold, 4)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(yaml.safe_dump(raw, sort_keys=False))
    rate = cloud_rate(values, threshold)
    target = (
        f"target cloud rate {target_cloud_rate:.0%}"
        if target_quality is None
        else f"target quality {target_quality:.0%}"
    )
    typer.echo(
        f"confidence_threshold = {threshold:.4f}: escalates {rate:.0%} of these "
        f"{len(values)} prompts ({target}); wrote {output}"
    )
    if report:
        escalated = [t for t, v in zip(texts, values, strict=True) if v < threshold]
        usd = sum(
            expected_cost(Action("cloud"), len(SYSTEM_PROMPT) + len(t), settings).cost_usd
            for t in escalated
        )
        quality = expected_quality(values, threshold, cloud_quality)
        q = np.quantile(values, [0.1, 0.25, 0.5, 0.75, 0.9])
        typer.echo(
            f"cloud rate {rate:.1%} ({len(escalated)}/{len(values)}); cloud cost on the set "
            f"~${usd:.5f} (${usd / len(values):.6f} a prompt, text-only calls priced as "
            f"{settings.cloud.price_as}); expected good answers {quality:.1%} "
            f"(all local {expected_quality(values, 0.0, cloud_quality):.1%}, "
            f"cloud answers good {cloud_quality:.0%} of the time)"
        )
        typer.echo("confidence quantiles 10/25/50/75/90 %: " + " ".join(f"{v:.3f}" for v in q))


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
    from tmo_graph.models.local import get_local_model
    from tmo_graph.sim.confidence_eval import (
        add_sampling_agreement,
        evaluate_estimators,
        format_report,
        load_scored,
        save_scored,
        score_local_turns,
    )
    from tmo_graph.sim.data import load_m4a1

    try:
        if sampling < 0:  # before minutes of scoring, not after
            raise TmoGraphError(f"--sampling {sampling} is negative", "use 0 (off) or e.g. 3")
        settings = load_settings(config)
        cache = scored if scored is not None and scored.exists() else None
        needs_model = cache is None or sampling > 0
        dataset = load_m4a1(data) if needs_model else None
        local = (
            get_local_model(settings.local.source, cache_dir=settings.model_cache_dir())
            if needs_model
            else None
        )
        if cache is not None:
            turns = load_scored(cache)
        else:
            assert dataset is not None and local is not None

            def progress(done: int, total: int) -> None:
                if done % 20 == 0 or done == total:
                    typer.echo(f"scored {done}/{total} local answers", err=True)

            turns = score_local_turns(dataset, local, limit, progress)
            if scored is not None:
                save_scored(turns, scored)
        if sampling:
            from tmo_graph.models.embeddings import local_embeddings

            assert dataset is not None and local is not None
            turns = add_sampling_agreement(
                turns,
                dataset,
                local,
                local_embeddings(settings.embeddings.source),
                sampling,
                seed,
                lambda done, total: typer.echo(f"sampled {done}/{total} held-out turns", err=True),
            )
        result = evaluate_estimators(turns, seed)
    except TmoGraphError as error:
        _fail(error)
    typer.echo(format_report(result))
    if json_out:
        _write_json(json_out, result)
    if fit_out:
        _write_json(fit_out, result["refit"])


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
    from tmo_graph.models.embeddings import local_embeddings
    from tmo_graph.quality_gap import QualityGapPredictor, evaluate_gap_predictor, format_report
    from tmo_graph.sim.data import load_m4a1

    try:
        settings = load_settings(config)
        dataset = load_m4a1(data)
        source = settings.embeddings.source
        embeddings = local_embeddings(source)
        result = evaluate_gap_predictor(dataset, embeddings, seed, embedding=source)
        if output:
            predictor = QualityGapPredictor.fit_dataset(
                dataset.episodes, embeddings, embedding=source
            )
            try:
                predictor.save(output)
            except OSError as exc:
                raise TmoGraphError(
                    f"cannot write {output} ({exc.strerror})", "pass a writable path to -o"
                ) from None
    except TmoGraphError as error:
        _fail(error)
    typer.echo(format_report(result))
    if json_out:
        _write_json(json_out, result)
    if output:
        typer.echo(
            f"wrote {output} (fit on all {len(dataset.episodes)} dialogues; point "
            "embeddings.gap_predictor at it in a config)"
        )


if __name__ == "__main__":
    app()
