"""`tmo-graph train` and `tmo-graph bench`: routing policies in the M4A1 simulator.

The simulator (numpy, gymnasium, stable-baselines3) is imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tmo_graph.cli.common import (
    DataOption,
    DeviceOption,
    NetworkOption,
    fail,
    m4a1_file,
    one_of,
    write_json,
)
from tmo_graph.costs import profiles
from tmo_graph.errors import TmoGraphError
from tmo_graph.sim.methods import ALGORITHMS, DEFAULT_METHODS, METHOD_NAMES, OPT_IN

ALL_METHODS = ",".join(METHOD_NAMES)
DEFAULT_METHOD_LIST = ",".join(DEFAULT_METHODS)


def network_profile(name: str) -> str:
    """``4g`` -> ``4G``: a network profile's name, matched without regard to case."""
    by_lower = {n.lower(): n for n in profiles.NETWORKS}
    if name.lower() not in by_lower:
        raise TmoGraphError(
            f"unknown network profile {name!r}", f"use one of: {', '.join(profiles.NETWORKS)}"
        )
    return by_lower[name.lower()]


def train(
    data: DataOption = None,
    algo: Annotated[str, typer.Option(help=one_of(ALGORITHMS))] = "ppo",
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
    from tmo_graph.sim.train import spec_path, train_policy

    try:
        if algo not in ALGORITHMS:
            raise TmoGraphError(f"unknown --algo {algo!r}", f"use one of: {', '.join(ALGORITHMS)}")
        dataset = load_m4a1(m4a1_file(data))
        settings = SimSettings(device=device, network=network_profile(network))
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
        fail(error)
    typer.echo(f"wrote {output} and {spec_path(output).name}")


bench_app = typer.Typer(help="Benchmarks of routing policies.", no_args_is_help=True)


@bench_app.command("m4a1")
def bench_m4a1(
    data: DataOption = None,
    seeds: Annotated[str, typer.Option(help="a count (3: the reference seeds) or a list")] = "3",
    methods: Annotated[
        str,
        typer.Option(
            help=f"comma-separated, any of: {ALL_METHODS} (default: all but "
            f"{', '.join(OPT_IN)}; own-sim is the own planner given the simulator's response "
            "model, as the RL policies are trained on it)"
        ),
    ] = DEFAULT_METHOD_LIST,
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
            network=network_profile(network),
            latency_budget_s=latency_budget,
            usage_budget_usd=usage_budget,
            audio_clip_s=audio_seconds,
        )
        # the options first: a typo fails before the data set is read
        seed_list, method_list = parse_seeds(seeds), parse_methods(methods)
        result = run_benchmark(
            load_m4a1(m4a1_file(data)),
            seed_list,
            method_list,
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
        fail(error)
    typer.echo(format_judges_table(result) if protocol == "judges" else format_table(result))
    if json_out:
        write_json(json_out, result)
    if plot:
        plot_reward_usage(result, plot)
        typer.echo(f"wrote {plot}")


@bench_app.command("generate")
def bench_generate(
    out: Annotated[Path, typer.Option(help="the generated M4A1-format JSON file to write")],
    data: DataOption = None,
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
        source = m4a1_file(data)
        episodes = generate_dialogues(load_m4a1(source), dialogues, views, audio, seed)
        write_dialogues(out, episodes, source=source)
    except TmoGraphError as error:
        fail(error)
    turns = sum(len(e["interactions"]) for e in episodes)
    names = ", ".join(m["name"] for m in episodes[0]["modalities"])
    typer.echo(f"wrote {out}: {len(episodes)} dialogues, {turns} turns, modalities {names}")
