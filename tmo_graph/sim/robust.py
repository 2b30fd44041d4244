"""Fitting the own planner for a judge it is told nothing about.

The planner (:meth:`tmo_graph.policy.planner.LookaheadPlanner.fit_robust`) plans against
an ensemble of response models of its training dialogues; two knobs, where an action's
expected score comes from (``centre``: every member's mean, or the members fit on all the
training dialogues) and how much a cloud call's uncertainty counts against it (``risk``),
are chosen here by cross-validation inside the training split only: the training
dialogues are cut into ``folds`` parts, the planner is fit on all parts but one, and its
choices on the held-out part are scored against always-local by the benchmark's default
judge battery fit on that part (:data:`tmo_graph.sim.judges.DEFAULT_BATTERY`). The rule is
the one the benchmark's own policy is held to, applied to the validation dialogues: among
the (centre, risk) pairs that trail always-local under no validation judge by more than one
paired standard error, the one with the highest mean lead over the judges (none such: the
most careful risk). Nothing of the test split is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.observation import ObservationSpec
from tmo_graph.policy.planner import LookaheadPlanner
from tmo_graph.policy.world import SimSettings, World
from tmo_graph.sim.data import Episode
from tmo_graph.sim.evaluate import EpisodeJudge, evaluate_judged, local_policy
from tmo_graph.sim.judges import DEFAULT_BATTERY, build_judge, paired_difference, parse_judges

RISKS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
CV_FOLDS = 5
# How the risk is chosen from its validation scores: "safe" (trail always-local under no
# judge by more than one paired SE, then the highest mean lead) or "mean" (the highest mean
# lead, caution only where it pays on average).
RULES = ("safe", "mean")
# Which members give an action's expected score (``RobustResponse``'s centre): "choose" lets
# the CV pick between "all" and "full" on the same folds and by the same rule; the others fix
# it. Tried and not kept: "full" alone, "stacked", and the "mean" rule.
CENTRE = "choose"
RULE = "safe"


def choose_risk(
    episodes: Sequence[Episode],
    spec: ObservationSpec,
    settings: SimSettings,
    risks: Sequence[float] = RISKS,
    folds: int = CV_FOLDS,
    seed: int = 0,
    centre: str = "all",
    rule: str = "safe",
) -> tuple[float, dict[str, Any]]:
    """The risk chosen by the rule above, and every risk's validation scores.

    ``spec``: the planner's observation spec (with budgets); ``seed`` draws the folds.
    """
    if rule not in RULES:
        raise TmoGraphError(f"unknown CV rule {rule!r}", f"use one of: {', '.join(RULES)}")
    if not risks:
        raise TmoGraphError("no risk to choose from", "give at least one risk, e.g. (0, 1)")
    if not 2 <= folds <= len(episodes) // 2:
        raise TmoGraphError(
            f"{folds} folds of {len(episodes)} training dialogues leave too few per fold",
            "use more dialogues or fewer folds (each fold needs at least 2 dialogues)",
        )
    knn_spec = ObservationSpec(spec.n_views, spec.task_names, spec.time_span, False)
    battery = parse_judges(DEFAULT_BATTERY)
    diffs: dict[float, dict[str, list[float]]] = {r: {j.text: [] for j in battery} for r in risks}
    parts = np.array_split(np.random.default_rng(seed).permutation(len(episodes)), folds)
    for part in parts:
        held = set(int(i) for i in part)
        fit = [e for i, e in enumerate(episodes) if i not in held]
        valid = [episodes[i] for i in sorted(held)]
        base = LookaheadPlanner.fit_robust(fit, spec, settings, risk=0.0, seed=seed, centre=centre)
        judges: dict[str, EpisodeJudge] = {
            j.text: build_judge(j, knn_spec, valid, seed) for j in battery
        }
        world = World(spec, settings, base.world.response)
        local = evaluate_judged(world, valid, local_policy(world), judges)
        for risk in risks:
            own = evaluate_judged(world, valid, base.with_risk(risk), judges)
            for name in judges:
                pairs = zip(
                    own[name]["dialogue_rewards"], local[name]["dialogue_rewards"], strict=True
                )
                diffs[risk][name] += [a - b for a, b in pairs]
    leads = {
        r: {name: paired_difference(d, [0.0] * len(d)) for name, d in diffs[r].items()}
        for r in risks
    }
    safe = [r for r in risks if all(x["mean"] >= -x["se"] for x in leads[r].values())]
    mean_lead = {r: float(np.mean([x["mean"] for x in leads[r].values()])) for r in risks}
    if rule == "mean":
        best = max(risks, key=lambda r: (mean_lead[r], r))
    else:
        best = max(safe, key=lambda r: (mean_lead[r], r)) if safe else max(risks)
    scores = {
        str(r): {"mean_lead": mean_lead[r], "safe": r in safe, "judges": leads[r]} for r in risks
    }
    return best, {"risk": best, "folds": folds, "rule": rule, "validation": scores}


def fit_own_planner(
    episodes: Sequence[Episode], spec: ObservationSpec, settings: SimSettings, seed: int = 0
) -> LookaheadPlanner:
    """The own planner, told nothing about its judge: its knobs by CV, then fit on every
    episode. ``CENTRE`` "choose": the centre too, by the same rule on the same folds."""
    centres = ("all", "full") if CENTRE == "choose" else (CENTRE,)
    picks = {
        c: choose_risk(episodes, spec, settings, seed=seed, centre=c, rule=RULE) for c in centres
    }

    def merit(centre: str) -> tuple[bool, float]:
        risk, report = picks[centre]
        chosen = report["validation"][str(risk)]
        return (RULE == "mean" or chosen["safe"], chosen["mean_lead"])

    centre = max(centres, key=merit)
    risk, report = picks[centre]
    planner = LookaheadPlanner.fit_robust(
        episodes, spec, settings, risk=risk, seed=seed, centre=centre
    )
    others = {c: picks[c][1] for c in centres if c != centre}
    planner.info = {
        **planner.info,
        "cv": report,
        **({"cv_other_centres": others} if others else {}),
    }
    return planner
