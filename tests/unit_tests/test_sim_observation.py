"""The one observation builder and the action <-> view-subset mapping."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.observation import (
    ObservationSpec,
    TurnFeatures,
    action_views,
    build_observation,
    n_actions,
    view_subsets,
    views_action,
)


def test_three_views_give_the_papers_nine_actions() -> None:
    assert n_actions(3) == 9
    assert [action_views(a, 3) for a in range(9)] == [
        (), (), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)
    ]  # fmt: skip


@pytest.mark.parametrize("n_views", [0, 1, 2, 4, 5])
def test_subsets_by_size_then_lexicographic_for_any_number_of_views(n_views: int) -> None:
    expected = [c for k in range(n_views + 1) for c in combinations(range(n_views), k)]
    assert view_subsets(n_views) == expected
    assert n_actions(n_views) == 1 + 2**n_views
    for action in range(1, n_actions(n_views)):
        assert views_action(action_views(action, n_views), n_views) == action
    assert views_action((), n_views) == 1  # cloud, text only


def test_views_action_takes_any_order_and_rejects_non_sets() -> None:
    assert views_action([2, 0], 3) == views_action([0, 2], 3) == 6
    for bad in ([3], [0, 0], [-1]):
        with pytest.raises(TmoGraphError, match="not a set of view ids for 3 views"):
            views_action(bad, 3)
    with pytest.raises(TmoGraphError, match="out of range"):
        action_views(9, 3)
    with pytest.raises(TmoGraphError, match="out of range"):
        action_views(-1, 3)


def test_turn_features_from_actions() -> None:
    assert TurnFeatures.from_action(0, 3) == TurnFeatures(0, ())
    assert TurnFeatures.from_action(1, 3) == TurnFeatures(1, ())
    assert TurnFeatures.from_action(7, 3) == TurnFeatures(1, (1, 2))
    with pytest.raises(ValueError):
        TurnFeatures(0, (1,))  # a local turn uploads nothing
    with pytest.raises(ValueError):
        TurnFeatures(-1)  # "no previous turn" is the window's padding, not a turn


def test_the_first_turn_is_marked_by_a_minus_one_previous_action() -> None:
    spec = ObservationSpec(n_views=3, task_names=("a", "b", "c"), time_span=2)
    obs = build_observation(spec, [], [2])
    # As the published preprocessing: padding rows are all -1; the first turn's own row says
    # "no previous action" with zero view flags, then its task.
    assert obs.tolist() == [-1, -1, -1, -1, -1, -1, 0, 0, 0, 2]
    assert obs.dtype == np.float32 and obs.shape == (spec.size,)


def test_window_rows_hold_the_previous_turns_action_and_views_and_this_turns_task() -> None:
    spec = ObservationSpec(n_views=4, task_names=tuple("abcde"), time_span=3)
    history = [TurnFeatures(1, (3, 0)), TurnFeatures(1, ()), TurnFeatures(0), TurnFeatures(1, (2,))]
    tasks = [4, 0, 1, 3, 2]
    obs = build_observation(spec, history, tasks).tolist()
    assert obs == [
        *[1, 0, 0, 0, 0, 1],  # turn 2: turn 1 was cloud text-only; task 1
        *[0, 0, 0, 0, 0, 3],  # turn 3: turn 2 was local; task 3
        *[1, 0, 0, 1, 0, 2],  # turn 4: turn 3 uploaded view 2; task 2
    ]
    # A longer window reaches back to the padding.
    wide = ObservationSpec(n_views=4, task_names=tuple("abcde"), time_span=7)
    rows = build_observation(wide, history, tasks).tolist()
    assert rows[:12] == [-1] * 12  # turns -2 and -1
    assert rows[12:24] == [-1, 0, 0, 0, 0, 4, 1, 1, 0, 0, 1, 0]  # turns 0 and 1


def test_budgets_are_appended_for_budget_aware_policies() -> None:
    spec = ObservationSpec(n_views=3, task_names=("a",), time_span=5, with_budgets=True)
    obs = build_observation(spec, [TurnFeatures(0)], [0, 0], budget_left=(29.5, 0.049))
    assert obs.shape == (spec.size,) == (27,)
    assert obs[-2:].tolist() == pytest.approx([29.5, 0.049])
    with pytest.raises(ValueError, match="budget left"):
        build_observation(spec, [], [0])
    plain = ObservationSpec(n_views=3, task_names=("a",))
    assert build_observation(plain, [], [0], budget_left=(1.0, 1.0)).shape == (25,)


def test_the_history_and_the_task_list_must_agree() -> None:
    spec = ObservationSpec(n_views=2, task_names=("a", "b"))
    with pytest.raises(ValueError, match="need 2 task ids"):
        build_observation(spec, [TurnFeatures(0)], [0])


def test_spec_round_trip_and_checks() -> None:
    spec = ObservationSpec(n_views=4, task_names=("x", "y", "z"), time_span=3, with_budgets=True)
    assert ObservationSpec.from_dict(spec.to_dict()) == spec
    assert spec.n_tasks == 3 and spec.per_step == 6 and spec.size == 20
    assert spec.task_id("y") == 1
    with pytest.raises(TmoGraphError, match="task 'w' is not one the policy knows.*x, y, z"):
        spec.task_id("w")
    with pytest.raises(TmoGraphError, match="observation spec .* is unreadable"):
        ObservationSpec.from_dict({"n_views": 3})
    with pytest.raises(TmoGraphError, match="bad observation spec"):
        ObservationSpec(n_views=3, task_names=("a",), time_span=0)
    with pytest.raises(TmoGraphError, match="bad observation spec"):
        ObservationSpec(n_views=3, task_names=())
