"""A policy refit from the graph's own traffic: turn records plus the labels of past turns.

``tmo-graph fit`` reads each finished turn (task, turn index, route, escalation, the local
draft's confidence) with its judge label (``shadow`` / ``escalation``: the device's answer
scored against the cloud's, in [0, 1]) and fits three small models of this deployment:

- **confidence calibration**: per task, the judged quality of a local draft as a linear
  function of the logit of the shipped confidence (the shipped combination is fit on M4A1;
  another device, other users and other tasks move it), shrunk towards the pooled fit;
- **quality-gap predictor**: per task, the mean judged quality of the local answer and its
  slope over the turn index (gap = 1 - quality: the cloud's answer is the judge's reference);
- **response model**: per action the expected quality (cloud 1, local from the two above),
  which the policy plans with under the paper's reward.

The policy (:class:`RefitPolicy`) answers in the cloud up front when the cloud's expected
reward beats that of a local draft that may be escalated, and escalates a draft when its
calibrated quality is worth less than the escalation's extra cost. The reward is the paper's
(:mod:`tmo_graph.policy.world`): ``alpha * quality - beta_latency * norm_s - beta_usage *
norm_usd``, the costs from the paper's tables for the deployment's device and network, each
min-max normalised over the deployment's actions (local, cloud with 0..views views; without
views local costs 0 and a cloud call 1); an escalation pays both calls. Feedback (1 / -1)
stands in for a judge on a local answer no judge scored. Fitting is closed-form least
squares: 10,000 turns fit in milliseconds.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tmo_graph.costs import profiles
from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.base import LOCAL, Action, RouteInput
from tmo_graph.policy.world import SimSettings

FORMAT = "tmo-refit/1"
# Labelled turns the fit needs at least (in the training part), and per task for a task's
# own calibration and gap (fewer: the pooled fit stands in for that task).
MIN_LABELLED = 40
MIN_PER_TASK = 8
_SHRINK = 20.0  # labels at which a task's own fit and the pooled one weigh alike


@dataclass(frozen=True)
class RewardTerms:
    """The paper's per-turn reward for one device and network; the defaults are the
    simulator's (:class:`~tmo_graph.policy.world.SimSettings`: M4A1's weights)."""

    device: str = SimSettings.device
    network: str = SimSettings.network
    alpha: float = SimSettings.alpha
    beta_latency: float = SimSettings.beta_latency
    beta_usage: float = SimSettings.beta_usage
    # Camera views of the deployment: the costs are normalised over its actions (local,
    # cloud with 0..views views), as the paper's world does over a data set's.
    views: int = 0

    def __post_init__(self) -> None:
        profiles.device(self.device)  # unknown names fail with the list of known ones
        profiles.network(self.network)
        if self.views < 0:
            raise TmoGraphError(f"views must be >= 0, got {self.views}", "count the views")

    def _actions(self) -> tuple[list[float], list[float]]:
        dev, net = profiles.device(self.device), profiles.network(self.network)
        seconds = [profiles.local_time_s(dev)]
        seconds += [profiles.cloud_time_s(net, k) for k in range(self.views + 1)]
        usd = [profiles.local_cost_usd(dev)]
        usd += [profiles.cloud_cost_usd(k) for k in range(self.views + 1)]
        return seconds, usd

    def cost(self, route: str, escalated: bool) -> tuple[float, float]:
        """(seconds, USD) of a turn by the paper's tables: local, cloud text, or both."""
        seconds, usd = self._actions()
        if route == "local":
            return seconds[0], usd[0]
        if escalated:
            return seconds[0] + seconds[1], usd[0] + usd[1]
        return seconds[1], usd[1]

    def reward(self, quality: float, route: str, escalated: bool) -> float:
        """The paper's reward of a turn whose kept answer judged ``quality`` (no views sent:
        the association term is 0)."""
        seconds, usd = self._actions()
        s, d = self.cost(route, escalated)
        norm_s = (s - min(seconds)) / (max(seconds) - min(seconds))
        norm_usd = (d - min(usd)) / (max(usd) - min(usd))
        return self.alpha * quality - self.beta_latency * norm_s - self.beta_usage * norm_usd


@dataclass(frozen=True)
class Example:
    """One finished turn as the fit reads it."""

    thread_id: str
    turn: int
    task: str
    route: Literal["local", "cloud"]
    escalated: bool
    confidence: float | None  # the local draft's, when there was one
    quality: float | None  # judged quality of the local draft (1: as good as the cloud's)
    when: float = 0.0  # seconds since the epoch: the dialogue's time, for the time order


def _logit(c: float) -> float:
    c = min(max(c, 0.01), 0.99)
    return math.log(c / (1 - c))


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares y = a + b x (b = 0 when x has no spread)."""
    if len(x) < 2 or float(np.ptp(x)) == 0.0:
        return float(np.mean(y)) if len(y) else 0.5, 0.0
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b)


def _shrunk(own: tuple[float, float], pooled: tuple[float, float], n: int) -> list[float]:
    w = n / (n + _SHRINK)
    return [w * o + (1 - w) * p for o, p in zip(own, pooled, strict=True)]


@dataclass
class RefitModel:
    """The three fitted models and the reward they are planned with (JSON-serialisable)."""

    terms: RewardTerms
    calibration: dict[str, list[float]]  # task -> [a, b]: quality = a + b * logit(conf)
    gap: dict[str, list[float]]  # task -> [quality mean, slope per turn, mean turn]
    confidences: dict[str, list[float]]  # task -> quantiles of logit(conf) of its drafts
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, examples: Sequence[Example], terms: RewardTerms) -> RefitModel:
        """Fit on ``examples`` (the training part); at least :data:`MIN_LABELLED` labelled."""
        labelled = [e for e in examples if e.quality is not None]
        if len(labelled) < MIN_LABELLED:
            raise TmoGraphError(
                f"too few labelled turns to fit: {len(labelled)} in the training part of "
                f"{len(examples)} turns; at least {MIN_LABELLED} are needed",
                "collect more labels (learning.shadow_rate, POST /v1/feedback) or fit on more "
                "turns (an earlier --since, a smaller --holdout)",
            )
        drafts = [e for e in labelled if e.confidence is not None]
        pooled_cal = _line(
            np.array([_logit(e.confidence or 0.5) for e in drafts]),
            np.array([e.quality for e in drafts], dtype=float),
        )
        pooled_gap = _line(
            np.array([e.turn for e in labelled], dtype=float),
            np.array([e.quality for e in labelled], dtype=float),
        )
        by_task: dict[str, list[Example]] = defaultdict(list)
        for e in labelled:
            by_task[e.task].append(e)
        calibration, gap, confidences = {"*": list(pooled_cal)}, {}, {}
        mean_turn = float(np.mean([e.turn for e in labelled]))
        gap["*"] = [pooled_gap[0] + pooled_gap[1] * mean_turn, pooled_gap[1], mean_turn]
        for task, rows in sorted(by_task.items()):
            turns = np.array([e.turn for e in rows], dtype=float)
            quality = np.array([e.quality for e in rows], dtype=float)
            centre = float(turns.mean())
            mean, slope = float(quality.mean()), _line(turns - centre, quality)[1]
            w = len(rows) / (len(rows) + _SHRINK)
            pooled_mean = pooled_gap[0] + pooled_gap[1] * centre
            gap[task] = [w * mean + (1 - w) * pooled_mean, w * slope + (1 - w) * pooled_gap[1]]
            gap[task].append(centre)
            with_conf = [e for e in rows if e.confidence is not None]
            if len(with_conf) >= MIN_PER_TASK:
                x = np.array([_logit(e.confidence or 0.5) for e in with_conf])
                own = _line(x, np.array([e.quality for e in with_conf], dtype=float))
                calibration[task] = _shrunk(own, pooled_cal, len(with_conf))
                confidences[task] = np.quantile(x, np.linspace(0.025, 0.975, 20)).tolist()
        every = [_logit(e.confidence) for e in examples if e.confidence is not None]
        confidences["*"] = (
            np.quantile(every, np.linspace(0.025, 0.975, 20)).tolist() if every else [0.0]
        )
        info = {"turns": len(examples), "labelled": len(labelled), "drafts": len(drafts)}
        return cls(terms, calibration, gap, confidences, info)

    # ---- what the models predict ----

    def quality_at(self, task: str, turn: int) -> float:
        """Expected judged quality of a local answer (1 - the predicted quality gap)."""
        mean, slope, centre = self.gap.get(task, self.gap["*"])
        return float(np.clip(mean + slope * (turn - centre), 0.0, 1.0))

    def draft_quality(self, task: str, turn: int, confidence: float) -> float:
        """Calibrated quality of a local draft of this confidence, at this turn."""
        a, b = self.calibration.get(task, self.calibration["*"])
        shift = self.quality_at(task, turn) - self.gap.get(task, self.gap["*"])[0]
        return float(np.clip(a + b * _logit(confidence) + shift, 0.0, 1.0))

    def escalation_threshold(self, task: str, turn: int) -> float:
        """The confidence below which a draft is worth escalating (its calibrated quality
        is worth less than the escalation's extra cost, in the reward's units)."""
        t = self.terms
        extra = t.reward(1.0, "local", False) - t.reward(1.0, "cloud", True)  # the cost, > 0
        target = 1.0 - extra / t.alpha  # escalate when the draft is worse than this
        a, b = self.calibration.get(task, self.calibration["*"])
        shift = self.quality_at(task, turn) - self.gap.get(task, self.gap["*"])[0]
        if b <= 1e-9:  # confidence says nothing here: escalate all or none by the mean
            return 1.0 if self.quality_at(task, turn) < target else 0.0
        x = (target - shift - a) / b
        return 1.0 / (1.0 + math.exp(-min(max(x, -60.0), 60.0)))

    def values(self, task: str, turn: int) -> tuple[float, float]:
        """Expected reward of (a local draft, escalated when unsure; the cloud up front)."""
        t = self.terms
        threshold = self.escalation_threshold(task, turn)
        escalate = t.reward(1.0, "cloud", True)
        outcomes = []
        for x in self.confidences.get(task, self.confidences["*"]):
            c = 1.0 / (1.0 + math.exp(-x))
            if c < threshold:
                outcomes.append(escalate)
            else:
                outcomes.append(t.reward(self.draft_quality(task, turn, c), "local", False))
        return float(np.mean(outcomes)), t.reward(1.0, "cloud", False)

    def route(self, task: str, turn: int) -> Literal["local", "cloud"]:
        local, cloud = self.values(task, turn)
        return "cloud" if cloud > local else "local"

    # ---- the policy file ----

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "terms": asdict(self.terms),
            "calibration": self.calibration,
            "gap": self.gap,
            "confidences": self.confidences,
            "info": self.info,
        }

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)  # atomic: a serving process never reads half a file

    @classmethod
    def load(cls, path: Path) -> RefitModel:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TmoGraphError(
                f"cannot read the refit policy {path} ({exc})",
                "write it with `tmo-graph fit --threads DB --out FILE`",
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TmoGraphError(
                f"{path} is not a refit policy (format {FORMAT!r})",
                "write it with `tmo-graph fit`, or name a `tmo-graph train` file",
            )
        return cls(
            RewardTerms(**data["terms"]),
            data["calibration"],
            data["gap"],
            data["confidences"],
            data.get("info", {}),
        )


def is_refit_file(path: Path) -> bool:
    """Whether ``path`` is a policy file `tmo-graph fit` wrote (JSON with its format)."""
    path = Path(path)
    if path.suffix != ".json" or not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


@dataclass
class RefitPolicy:
    """The live policy of a refit model: cloud up front where it pays, else a local draft
    escalated below the task's calibrated threshold."""

    model: RefitModel
    name: str = "refit"
    escalates: bool = True

    def decide(self, observation: RouteInput) -> Action:
        text_only = Action("cloud")
        route = self.model.route(observation.task, observation.turn)
        if route == "cloud" and text_only in observation.allowed:
            return text_only
        return LOCAL

    def escalation_threshold(self, task: str, turn: int) -> float:
        return self.model.escalation_threshold(task, turn)


# ---- before and after on the hold-out ----


@dataclass(frozen=True)
class Score:
    """Mean reward, seconds and USD per turn (paper tables) over ``turns`` turns."""

    reward: float
    seconds: float
    usd: float
    turns: int
    cloud_share: float


def score(outcomes: Iterable[tuple[float, str, bool]], terms: RewardTerms) -> Score:
    """The mean of (quality, route, escalated) outcomes under ``terms``."""
    rows = list(outcomes)
    if not rows:
        return Score(0.0, 0.0, 0.0, 0, 0.0)
    costs = [terms.cost(route, esc) for _, route, esc in rows]
    return Score(
        float(np.mean([terms.reward(q, r, e) for q, r, e in rows])),
        float(np.mean([c[0] for c in costs])),
        float(np.mean([c[1] for c in costs])),
        len(rows),
        float(np.mean([r == "cloud" for _, r, _ in rows])),
    )


def replay(
    model: RefitModel, examples: Sequence[Example]
) -> tuple[list[tuple[float, str, bool]], list[tuple[float, str, bool]]]:
    """(logged, refit) outcomes on the turns whose outcome under both is known from the
    records: the cloud's answer is the judge's reference (quality 1), a draft's quality is
    its label, and the refit's escalation reads the draft's recorded confidence. Turns sent
    to the cloud up front that the refit would answer locally have no judged draft: their
    local quality is the gap predictor's (counted in ``info['estimated']`` by the caller)."""
    logged: list[tuple[float, str, bool]] = []
    refit: list[tuple[float, str, bool]] = []
    for e in examples:
        if e.route == "local" and e.quality is None:
            continue  # a draft nobody judged: its quality is unknown
        if e.escalated:
            logged.append((1.0, "cloud", True))
        elif e.route == "local":
            logged.append((e.quality if e.quality is not None else 0.0, "local", False))
        else:
            logged.append((1.0, "cloud", False))
        if model.route(e.task, e.turn) == "cloud":
            refit.append((1.0, "cloud", False))
        elif e.confidence is None or e.quality is None:
            refit.append((model.quality_at(e.task, e.turn), "local", False))
        elif e.confidence < model.escalation_threshold(e.task, e.turn):
            refit.append((1.0, "cloud", True))
        else:
            refit.append((e.quality, "local", False))
    return logged, refit


def time_split(examples: Sequence[Example], holdout: float) -> tuple[list[Example], list[Example]]:
    """(earlier, later) turns in time order (dialogue time, then turn): the later
    ``holdout`` share is held out."""
    if not 0.0 < holdout < 1.0:
        raise TmoGraphError(f"holdout must be in (0, 1), got {holdout}", "e.g. --holdout 0.3")
    ordered = sorted(examples, key=lambda e: (e.when, e.thread_id, e.turn))
    cut = int(round(len(ordered) * (1.0 - holdout)))
    return ordered[:cut], ordered[cut:]


def timed(fn: Callable[[], RefitModel]) -> tuple[RefitModel, float]:
    """``fn()`` and the seconds it took."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
