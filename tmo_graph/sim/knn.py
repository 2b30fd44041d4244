"""The simulator's judge: the response model of :mod:`tmo_graph.policy.knn`, re-exported."""

from __future__ import annotations

from tmo_graph.policy.knn import (
    RecordedDialogue,
    ResponseModel,
    ResponseScorer,
    SubsampleEnsemble,
    one_hot,
    recorded_features,
)

__all__ = [
    "RecordedDialogue",
    "ResponseModel",
    "ResponseScorer",
    "SubsampleEnsemble",
    "one_hot",
    "recorded_features",
]
