"""Refit from a generated deployment's own traffic: the proof on a known truth.

1. 10,000 turns of :mod:`tmo_graph.sim.traffic` (mostly Recommendation and Message Editing,
   an iPhone 15 Pro on 4G) through the live graph under the shipped default policy
   (``rules``, confidence threshold 0.5), with SQLite checkpoints and the truth judge's
   labels beside them (``bench/traffic_graph.py``).
2. ``tmo-graph fit`` on that thread file, timed (the whole command, reading included).
3. The refit (fit on the first 7,000 turns) runs the last 3,000 turns' dialogues again
   through the live graph (``policy: learned`` with the fit file); both runs are scored by
   the truth with the paper's reward (:class:`tmo_graph.policy.refit.RewardTerms`).
4. The learning curve: fit on the first N turns, score the refit's decisions on the same
   last 3,000 turns by the truth (the route and escalation the live policy takes from the
   same model), for N from 100 to 7,000.

Writes bench/results/learning-curve.json and docs/img/learning-curve.png.
Run: ``.venv/bin/python bench/learning_curve.py [--turns 10000]`` (``make bench`` runs it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from traffic_graph import Outcome, deployment_settings, run_traffic  # bench/traffic_graph.py

from tmo_graph.cli.fit_records import read_examples
from tmo_graph.policy.refit import RefitModel, RewardTerms, time_split
from tmo_graph.sim import traffic

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "learning-curve.json"
PLOT = ROOT / "docs" / "img" / "learning-curve.png"
TERMS = RewardTerms(traffic.DEVICE, traffic.NETWORK)


def summary(outcomes: list[Outcome]) -> dict[str, float]:
    """Mean reward, paper-table seconds and USD per turn, cloud share, over-budget turns."""
    costs = [TERMS.cost(o.route, o.escalated) for o in outcomes]
    return {
        "turns": len(outcomes),
        "reward": float(np.mean([TERMS.reward(o.quality, o.route, o.escalated) for o in outcomes])),
        "seconds": float(np.mean([c[0] for c in costs])),
        "usd": float(np.mean([c[1] for c in costs])),
        "cloud_share": float(np.mean([o.route == "cloud" for o in outcomes])),
        "escalated_share": float(np.mean([o.escalated for o in outcomes])),
        "over_budget": int(sum(o.over_budget for o in outcomes)),
    }


def decided(model: RefitModel, truth: list[Outcome]) -> list[Outcome]:
    """The outcomes of the refit's decisions on these turns, by the truth."""
    out = []
    for o in truth:
        route = model.route(o.task, o.turn)
        conf = round(traffic_confidence[(o.thread_id, o.turn)], 4)
        escalated = route == "local" and conf < model.escalation_threshold(o.task, o.turn)
        out.append(
            Outcome(
                o.thread_id,
                o.turn,
                o.task,
                "cloud" if route == "cloud" or escalated else "local",
                escalated,
                None if route == "cloud" else conf,
                o.gap,
                False,
            )
        )
    return out


traffic_confidence: dict[tuple[str, int], float] = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10_000)
    parser.add_argument("--holdout", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dialogues = traffic.generate(args.turns, seed=args.seed)
    for d in dialogues:
        for t, turn in enumerate(d.turns):
            traffic_confidence[(d.thread_id, t)] = turn.confidence
    work = Path(tempfile.mkdtemp(prefix="tmo-learning-"))
    db = work / "threads.sqlite"
    default = run_traffic(dialogues, db, "rules", tmp=work)
    print(f"default: {len(default.outcomes)} turns through the graph in {default.seconds:.0f} s")

    config = work / "deployment.yaml"
    config.write_text(
        f"device:\n  profile: {traffic.DEVICE}\ncloud:\n  network: {traffic.NETWORK}\n"
    )
    policy = work / "policy.json"
    start = time.perf_counter()
    command = [sys.executable, "-m", "tmo_graph.cli.app", "fit", "--threads", str(db)]
    command += ["--out", str(policy), "--holdout", str(args.holdout), "-c", str(config)]
    printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    fit_wall = time.perf_counter() - start
    print(printed)
    print(f"tmo-graph fit on {args.turns} turns: {fit_wall:.1f} s (the whole command)")

    examples, _ = read_examples(deployment_settings(), db)
    train, test = time_split(examples, args.holdout)
    held = {(e.thread_id, e.turn) for e in test}
    truth = [o for o in default.outcomes if (o.thread_id, o.turn) in held]
    by_thread = {d.thread_id: d for d in dialogues}
    later = [by_thread[t] for t in dict.fromkeys(o.thread_id for o in truth)]
    refit_run = run_traffic(later, work / "refit.sqlite", "learned", policy, judge=False, tmp=work)
    live = [o for o in refit_run.outcomes if (o.thread_id, o.turn) in held]
    before, after = summary(truth), summary(live)
    print(f"hold-out, live graph: default {before}\n  refit {after}")

    curve = []
    for n in (50, 75, 100, 150, 200, 300, 400, 700, 1000, 2000, 4000, len(train)):
        model = RefitModel.fit(train[:n], TERMS)
        curve.append({"train_turns": n, "refit": summary(decided(model, truth))})
    full = RefitModel.fit(train, TERMS)
    replayed = summary(decided(full, truth))
    results = {
        "deployment": {
            "device": traffic.DEVICE,
            "network": traffic.NETWORK,
            "mix": traffic.MIX,
            "base_gap": traffic.BASE_GAP,
            "gap_slope": traffic.GAP_SLOPE,
            "confidence_bias": traffic.CONFIDENCE_BIAS,
        },
        "turns": len(default.outcomes),
        "train_turns": len(train),
        "holdout_turns": len(truth),
        "graph_seconds_default_run": round(default.seconds, 1),
        "fit_command_seconds": round(fit_wall, 2),
        "fit_printout": printed,
        "holdout_live": {"default": before, "refit": after},
        "holdout_replayed_refit": replayed,
        "margin": after["reward"] - before["reward"],
        "curve": curve,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")
    plot(results)


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [row["train_turns"] for row in results["curve"]]
    default = results["holdout_live"]["default"]
    fig, (ax, cost) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    ax.plot(ns, [row["refit"]["reward"] for row in results["curve"]], "o-", label="refit")
    ax.axhline(default["reward"], color="grey", ls="--", label="shipped default (rules)")
    ax.set_ylabel(f"mean reward / turn, last {results['holdout_turns']:,} turns")
    ax.set_title("Reward (the paper's), known truth")
    cost.plot(ns, [1e3 * row["refit"]["usd"] for row in results["curve"]], "o-", label="refit")
    cost.axhline(1e3 * default["usd"], color="grey", ls="--", label="shipped default (rules)")
    cost.set_ylabel("USD per 1,000 turns (paper tables)")
    cost.set_title("Cost")
    for axis in (ax, cost):
        axis.set_xscale("log")
        axis.set_xlabel("training turns (the deployment's first N)")
        axis.legend()
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=120)
    print(f"wrote {PLOT}")


if __name__ == "__main__":
    main()
