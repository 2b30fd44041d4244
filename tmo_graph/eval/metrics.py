"""The one AUROC, Spearman and R^2 of the project: scikit-learn and SciPy, with NaN where
a figure is undefined (one class only, constant input) rather than a warning or an error."""

from __future__ import annotations

import math
from collections.abc import Sequence

from tmo_graph.errors import TmoGraphError


def _pair(a: Sequence[float], b: Sequence[float] | Sequence[bool], what: str) -> None:
    if len(a) != len(b):
        raise TmoGraphError(
            f"{what} needs one label per value (got {len(a)} values, {len(b)} labels)",
            "pass two sequences of equal length",
        )


def auroc(values: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve of ``values`` for ``positive``; NaN with only one class."""
    _pair(values, positive, "AUROC")
    if len(set(positive)) < 2:
        return math.nan
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([bool(p) for p in positive], values))


def spearman(values: Sequence[float], other: Sequence[float]) -> float:
    """Spearman rank correlation; NaN when either side is constant (SciPy would warn)."""
    _pair(values, other, "Spearman")
    if len(set(values)) < 2 or len(set(other)) < 2:
        return math.nan
    from scipy.stats import spearmanr

    return float(spearmanr(values, other).statistic)


def r2(predicted: Sequence[float], actual: Sequence[float]) -> float:
    """Coefficient of determination of ``predicted`` for ``actual``; NaN under two points."""
    _pair(predicted, actual, "R^2")
    if len(actual) < 2:
        return math.nan
    from sklearn.metrics import r2_score

    return float(r2_score(actual, predicted))
