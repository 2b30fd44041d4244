"""One observation, two worlds: the features a learned policy sees, in the simulator and live.

Per turn ``t`` the paper's state is ``[previous action (-1 at start, 0 local, 1 cloud),
views used by the previous turn (X flags), task id of turn t]``. The observation stacks the
states of the last ``time_span`` turns (missing ones padded with -1) and, for budget-aware
policies, appends the latency and money left. A spec ``with_device`` also appends the
device's state (:data:`DEVICE_FEATURES`): the live graph reads it each turn, the simulator
gives its device profile's constants (:func:`profile_device_features`). Off by default, so
policies trained without it see exactly what they were trained on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any

import numpy as np

from tmo_graph.costs import profiles
from tmo_graph.errors import TmoGraphError

# What a modality can be. Audio clips are modalities like views: one flag each in
# the state, and every subset of images and clips is a cloud action (1 + 2**X actions).
MODALITY_KINDS = ("image", "audio")


def modality_names(kinds: Sequence[str]) -> list[str]:
    """Names of unnamed modalities (the simulator's): ``view{i}`` images, ``audio{i}`` clips,
    ``i`` the modality's index among all of them (M4A1's views stay view0 .. view2)."""
    unknown = sorted(set(kinds) - set(MODALITY_KINDS))
    if unknown:
        raise TmoGraphError(
            f"unknown modality kind(s) {unknown}", f"use one of: {', '.join(MODALITY_KINDS)}"
        )
    return [f"{'view' if kind == 'image' else 'audio'}{i}" for i, kind in enumerate(kinds)]


def n_actions(n_views: int) -> int:
    """Local, plus the cloud with each of the ``2**n_views`` view subsets."""
    return 1 + 2**n_views


def view_subsets(n_views: int) -> list[tuple[int, ...]]:
    """Every view subset in (size, lexicographic) order: (), (0,), (1,), ..., (0, 1), ..."""
    return [c for size in range(n_views + 1) for c in combinations(range(n_views), size)]


def action_views(action: int, n_views: int) -> tuple[int, ...]:
    """The views a cloud action uploads (empty for local and for cloud text-only)."""
    if not 0 <= action < n_actions(n_views):
        raise TmoGraphError(
            f"action {action} is out of range for {n_views} views",
            f"use 0..{n_actions(n_views) - 1}",
        )
    return () if action == 0 else view_subsets(n_views)[action - 1]


def views_action(views: Sequence[int], n_views: int) -> int:
    """The cloud action that uploads exactly ``views`` (any order; empty: text only)."""
    subset = tuple(sorted(set(views)))
    if len(subset) != len(views) or any(not 0 <= v < n_views for v in subset):
        raise TmoGraphError(
            f"views {list(views)} are not a set of view ids for {n_views} views",
            f"use distinct ids in 0..{n_views - 1}",
        )
    return 1 + view_subsets(n_views).index(subset)


@dataclass(frozen=True)
class TurnFeatures:
    """What a finished turn contributes to later observations."""

    action: int  # 0 local, 1 cloud
    views_used: tuple[int, ...] = ()  # indices of the uploaded views (cloud only)

    def __post_init__(self) -> None:
        if self.action not in (0, 1) or (self.action == 0 and self.views_used):
            raise ValueError(f"not a finished turn: action {self.action}, views {self.views_used}")

    @classmethod
    def from_action(cls, action: int, n_views: int) -> TurnFeatures:
        return cls(0, ()) if action == 0 else cls(1, action_views(action, n_views))


# The device features, in order: the share of the CPUs other processes keep busy (0..1),
# the free memory in GB, and the local model's answer speed in tokens/s.
DEVICE_FEATURES = ("cpu_load_others", "free_memory_gb", "local_tokens_per_s")
# What the simulator's device has free: the paper's profiles give no memory, and an idle
# device is what the published code assumes.
SIM_FREE_MEMORY_GB = 4.0


def device_features(reading: Mapping[str, Any]) -> tuple[float, float, float]:
    """The observation's device features from a live reading (``DeviceReading``); an
    unknown CPU load (the process's first reading) counts as idle."""
    try:
        cpu = reading.get("cpu_load_others")
        memory = reading.get("free_memory_mb")
        return (
            0.0 if cpu is None else float(cpu),
            SIM_FREE_MEMORY_GB if memory is None else float(memory) / 1024.0,
            float(reading["local_tokens_per_s"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TmoGraphError(
            f"the device reading {reading!r} lacks what the policy observes ({exc!r})",
            "pass tmo_graph.costs.device.LiveResources.reading() (a DeviceReading)",
        ) from None


def profile_device_features(profile: profiles.DeviceProfile) -> tuple[float, float, float]:
    """The simulator's device features: an idle device of the paper's ``profile``, whose
    answer speed is the paper's local workload (2048 tokens) over its local time."""
    if not isinstance(profile, profiles.DeviceProfile):
        raise TmoGraphError(
            f"expected a DeviceProfile, got {type(profile).__name__}",
            "pass tmo_graph.costs.profiles.device(name)",
        )
    return 0.0, SIM_FREE_MEMORY_GB, profiles.PAPER_TOTAL_TOKENS / profiles.local_time_s(profile)


@dataclass(frozen=True)
class ObservationSpec:
    """What a policy was trained to see; saved beside its weights and checked on load."""

    n_views: int
    task_names: tuple[str, ...]
    time_span: int = 5
    with_budgets: bool = False
    with_device: bool = False
    # The kind of each modality ("image" or "audio"), in the dataset's order; empty
    # means every modality is a camera view (the paper's, and every spec saved before audio).
    # ``n_views`` counts all modalities: an audio clip is one more flag and doubles the actions.
    modality_kinds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n_views < 0 or self.time_span < 1 or not self.task_names:
            raise TmoGraphError(
                f"bad observation spec: {self.n_views} views, window {self.time_span}, "
                f"tasks {list(self.task_names)}",
                "use n_views >= 0, time_span >= 1 and at least one task",
            )
        kinds = tuple(self.modality_kinds)
        if kinds and (len(kinds) != self.n_views or set(kinds) - set(MODALITY_KINDS)):
            raise TmoGraphError(
                f"bad observation spec: modality kinds {list(kinds)} for {self.n_views} modalities",
                f"give one kind per modality, each one of: {', '.join(MODALITY_KINDS)}",
            )
        # All images is the paper's case: stored as () so it equals specs saved before audio.
        object.__setattr__(self, "modality_kinds", () if set(kinds) <= {"image"} else kinds)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kind of every modality (all "image" when none was declared)."""
        return self.modality_kinds or ("image",) * self.n_views

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    @property
    def per_step(self) -> int:
        """``[previous action, X view flags, task id]``."""
        return self.n_views + 2

    @property
    def size(self) -> int:
        extra = (2 if self.with_budgets else 0) + (len(DEVICE_FEATURES) if self.with_device else 0)
        return self.per_step * self.time_span + extra

    def task_id(self, task: str) -> int:
        if task not in self.task_names:
            raise TmoGraphError(
                f"task {task!r} is not one the policy knows",
                f"use one of: {', '.join(self.task_names)}",
            )
        return self.task_names.index(task)

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        if not self.with_device:  # policy files without device features stay as they were
            del raw["with_device"]
        if not self.modality_kinds:  # images only: the spec file stays as before audio
            del raw["modality_kinds"]
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ObservationSpec:
        """The spec saved beside a policy's weights (what :meth:`to_dict` wrote)."""
        try:
            return cls(
                n_views=int(raw["n_views"]),
                task_names=tuple(str(name) for name in raw["task_names"]),
                time_span=int(raw["time_span"]),
                with_budgets=bool(raw["with_budgets"]),
                with_device=bool(raw.get("with_device", False)),
                modality_kinds=tuple(str(kind) for kind in raw.get("modality_kinds", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TmoGraphError(
                f"the policy's observation spec {raw!r} is unreadable ({exc!r})",
                "use a policy file written by `tmo-graph train`, or retrain it",
            ) from None


def step_state(previous: TurnFeatures | None, task_id: int, n_views: int) -> list[float]:
    """The paper's per-turn state."""
    if previous is None:
        return [-1.0, *([0.0] * n_views), float(task_id)]
    flags = [0.0] * n_views
    if previous.action == 1:
        for view in previous.views_used:
            flags[view] = 1.0
    return [float(previous.action), *flags, float(task_id)]


def window_state(
    spec: ObservationSpec, history: Sequence[TurnFeatures], task_ids: Sequence[int]
) -> list[float]:
    """States of the last ``time_span`` turns, oldest first, for the turn ``len(history)``.

    ``history``: the finished turns of the dialogue; ``task_ids``: the task of every turn up
    to and including the current one.
    """
    current = len(history)
    if len(task_ids) != current + 1:
        raise ValueError(f"need {current + 1} task ids for turn {current}, got {len(task_ids)}")
    rows: list[float] = []
    for turn in range(current - spec.time_span + 1, current + 1):
        if turn < 0:
            rows += [-1.0] * spec.per_step
        else:
            previous = history[turn - 1] if turn > 0 else None
            rows += step_state(previous, task_ids[turn], spec.n_views)
    return rows


def build_observation(
    spec: ObservationSpec,
    history: Sequence[TurnFeatures],
    task_ids: Sequence[int],
    budget_left: tuple[float, float] | None = None,
    device: Sequence[float] | None = None,
) -> np.ndarray:
    """The policy's input for the current turn (float32, length ``spec.size``); ``device``:
    the :data:`DEVICE_FEATURES` values, for a spec ``with_device``."""
    values = window_state(spec, history, task_ids)
    if spec.with_budgets:
        if budget_left is None:
            raise ValueError("this policy needs the budget left (latency s, cost USD)")
        values += [float(budget_left[0]), float(budget_left[1])]
    if spec.with_device:
        if device is None or len(device) != len(DEVICE_FEATURES):
            raise TmoGraphError(
                f"this policy observes the device ({', '.join(DEVICE_FEATURES)}), got {device!r}",
                "pass device_features(reading) live or profile_device_features(...) in the "
                "simulator",
            )
        values += [float(v) for v in device]
    return np.asarray(values, dtype=np.float32)
