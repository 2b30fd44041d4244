"""The paper's benchmark: every method on the same seeds' splits, as one JSON-able table."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.observation import ObservationSpec
from tmo_graph.sim.data import Dataset, paper_split
from tmo_graph.sim.evaluate import BASELINES, aggregate, evaluate
from tmo_graph.sim.knn import ResponseModel
from tmo_graph.sim.world import SimSettings, World

REFERENCE_SEEDS = (9139, 1355, 7826)
METHOD_NAMES = {
    "local": "Local",
    "cloud": "Cloud",
    "random": "Random",
    "ppo": "PPO",
    "a2c": "A2C",
    "dqn": "DQN",
    "rc-ppo": "RC-PPO",
    "rc-a2c": "RC-A2C",
    "rc-dqn": "RC-DQN",
    "own": "own",
}
PROTOCOLS = ("paper", "heldout")


def parse_methods(text: str) -> list[str]:
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHOD_NAMES]
    if unknown or not names:
        raise TmoGraphError(
            f"unknown method(s) {unknown or text!r}", f"use any of: {','.join(METHOD_NAMES)}"
        )
    return names


def parse_seeds(text: str) -> list[int]:
    """``3`` means the first three reference seeds; ``9139,1355`` lists seeds."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise TmoGraphError(
            f"--seeds {text!r} is not a number or a list", "e.g. 3 or 9139,1355"
        ) from None
    if len(values) == 1 and "," not in text:
        count = values[0]
        if count < 1:
            raise TmoGraphError("--seeds must be >= 1", "e.g. --seeds 3")
        extra = [REFERENCE_SEEDS[-1] + 1000 * i for i in range(1, count - 2)]
        return [*REFERENCE_SEEDS, *extra][:count]
    return values


def run_benchmark(
    dataset: Dataset,
    seeds: Sequence[int],
    methods: Sequence[str],
    settings: SimSettings,
    steps: int = 30_000,
    protocol: str = "paper",
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Every method on every seed's split; learned methods train on its 80 % only.

    ``protocol``: "paper" judges with the response model fit on the training split (the one
    a planning policy also queries); "heldout" judges with one fit on the test split only.
    """
    if protocol not in PROTOCOLS:
        raise TmoGraphError(f"unknown protocol {protocol!r}", "use paper or heldout")
    spec = ObservationSpec(
        n_views=dataset.n_views, task_names=dataset.task_names, time_span=settings.time_span
    )
    budget_spec = replace(spec, with_budgets=True)
    per_method: dict[str, dict[str, Any]] = {METHOD_NAMES[m]: {} for m in methods}
    for seed in seeds:
        train, test = paper_split(dataset.episodes, seed)
        response = ResponseModel(spec, train)  # what learners may use
        judge = response if protocol == "paper" else ResponseModel(spec, test)
        for method in methods:
            name = METHOD_NAMES[method]
            start = time.perf_counter()
            # Each run re-seeds and re-splits, as each published run does.
            train, test = paper_split(dataset.episodes, seed)
            if name in BASELINES:
                world = World(spec, settings, judge)
                result = evaluate(world, test, BASELINES[name](world))
                train_s = 0.0
            else:
                from tmo_graph.sim.train import train_policy

                constrained = method.startswith("rc-") or method == "own"
                run_spec = budget_spec if constrained else spec
                # Under the held-out protocol, the planner knows only how many dialogues its
                # judge is fit on (never which), and plans for such a judge.
                policy = train_policy(
                    method.removeprefix("rc-"),
                    train,
                    run_spec,
                    settings,
                    steps,
                    seed,
                    response,
                    judge_dialogues=len(test) if protocol == "heldout" else None,
                )
                train_s = time.perf_counter() - start
                result = evaluate(World(run_spec, settings, judge), test, policy)
            result["train_seconds"] = round(train_s, 2)
            result["seconds"] = round(time.perf_counter() - start, 2)
            per_method[name][str(seed)] = result
            progress(
                f"{name:<8} seed {seed}: reward {result['reward']:.4f} ({result['seconds']} s)"
            )
    return {
        "settings": {
            **settings.to_dict(),
            "seeds": list(seeds),
            "protocol": protocol,
            "steps": steps,
            "n_views": dataset.n_views,
            "tasks": list(dataset.task_names),
        },
        "methods": {name: aggregate(runs) for name, runs in per_method.items()},
    }
