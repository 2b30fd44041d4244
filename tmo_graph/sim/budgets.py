"""The per-episode budgets the RL policies train under, drawn as the published code draws them.

The world model itself (costs, reward) lives in :mod:`tmo_graph.policy.world`, where the own
planner plans in it at run time; only training needs these draws.
"""

from __future__ import annotations

import numpy as np

from tmo_graph.policy.world import World


def sample_budgets(world: World) -> tuple[float, float]:
    """Training budgets per episode, from numpy's global RNG as the published code does."""
    (lat_lo, lat_hi), (use_lo, use_hi) = world.budget_range()

    def uniform(lo: float, hi: float) -> float:
        return float(np.random.uniform(lo, hi))

    def normal(lo: float, hi: float) -> float:
        value = np.random.normal(0.5 * (lo + hi), max((hi - lo) / 6.0, 1e-8))
        return float(np.clip(value, lo, hi))

    def edge(lo: float, hi: float) -> float:
        band = max(0.1 * (hi - lo), 1e-8)
        if np.random.rand() < 0.5:
            value = lo + np.random.exponential(scale=band)
        else:
            value = hi - np.random.exponential(scale=band)
        return float(np.clip(value, lo, hi))

    kind = world.settings.budget_distribution
    if kind == "normal":
        return normal(lat_lo, lat_hi), normal(use_lo, use_hi)
    if kind == "uniform":
        return uniform(lat_lo, lat_hi), uniform(use_lo, use_hi)
    r = np.random.rand()  # extreme-aware: mostly ordinary budgets, some near the edges
    if r < 0.5:
        return normal(lat_lo, lat_hi), normal(use_lo, use_hi)
    if r < 0.8:
        return uniform(lat_lo, lat_hi), uniform(use_lo, use_hi)
    if r < 0.9:
        if np.random.rand() < 0.5:
            return edge(lat_lo, lat_hi), uniform(use_lo, use_hi)
        usage = edge(use_lo, use_hi)  # drawn first, as in the published code
        return uniform(lat_lo, lat_hi), usage
    return edge(lat_lo, lat_hi), edge(use_lo, use_hi)
