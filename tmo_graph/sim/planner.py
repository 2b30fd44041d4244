"""The own planner, re-exported: it lives in :mod:`tmo_graph.policy.planner`."""

from __future__ import annotations

from tmo_graph.policy.planner import DialogueModel, LookaheadPlanner

__all__ = ["DialogueModel", "LookaheadPlanner"]
