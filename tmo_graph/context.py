"""Per-run settings: who is talking, which policy decides, the budgets and thresholds.

Passed as ``graph.invoke(..., context=Context(...))``; LangGraph Studio shows these fields
as the run's configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from tmo_graph.errors import TmoGraphError

if TYPE_CHECKING:
    from tmo_graph.settings import Settings

POLICIES = ("always-local", "always-cloud", "random", "rules", "cascade", "learned")


@dataclass(kw_only=True)
class Context:
    """What a single run of the graph may decide differently from another."""

    user_id: str = field(
        default="default",
        metadata={"description": "Owner of the dialogue; memory recall never crosses users."},
    )
    policy: str = field(
        default="rules",
        metadata={"description": f"Routing policy, one of: {', '.join(POLICIES)}."},
    )
    confidence_threshold: float = field(
        default=0.5,
        metadata={
            "description": "Escalate a local answer to the cloud when its confidence is "
            "below this. The confidence (0..1) is the estimated probability that the local "
            "answer is better than the median local answer (a logistic fit on M4A1 over "
            "token entropy and refusal markers). At 0.5 an answer escalates when it is more "
            "likely worse than a typical local answer than better; lower values escalate "
            "only the clearly doubtful ones."
        },
    )
    latency_budget_s: float = field(
        default=60.0, metadata={"description": "Seconds the whole dialogue may spend."}
    )
    cost_budget_usd: float = field(
        default=0.05, metadata={"description": "USD the whole dialogue may spend."}
    )
    recent_turns: int = field(
        default=4, metadata={"description": "Turns kept verbatim; older ones go to memory."}
    )
    recall_k: int = field(
        default=3, metadata={"description": "Older turns recalled into the prompt."}
    )
    min_recall_score: float = field(
        default=0.3,
        metadata={"description": "Recall only older turns at least this similar (cosine)."},
    )
    min_view_score: float = field(
        default=0.3,
        metadata={"description": "A view is worth sending when its association is at least this."},
    )
    context_weight: float = field(
        default=0.8,
        metadata={
            "description": "When a prompt refers back ('what about the one on the left?'), "
            "a view's association is at least this times its association with the previous "
            "user message (this squared for the one before); 0 ignores earlier turns."
        },
    )
    policy_file: str | None = field(
        default=None,
        metadata={"description": "Policy trained with `tmo-graph train`, for policy 'learned'."},
    )
    seed: int = field(default=0, metadata={"description": "Seed of the 'random' policy."})

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise TmoGraphError(
                f"unknown policy {self.policy!r}", f"use one of: {', '.join(POLICIES)}"
            )
        if self.policy == "learned" and not self.policy_file:
            raise TmoGraphError(
                "policy 'learned' needs policy_file", "train one with `tmo-graph train -o FILE`"
            )
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise TmoGraphError(
                f"confidence_threshold must be in [0, 1], got {self.confidence_threshold}",
                "pick e.g. 0.5, or calibrate one with `tmo-graph calibrate`",
            )
        if not 0.0 <= self.context_weight <= 1.0:  # also rejects NaN
            raise TmoGraphError(
                f"context_weight must be in [0, 1], got {self.context_weight}",
                "use e.g. 0.8 to let a follow-up reuse the previous question's views, "
                "or 0 to score every prompt on its own",
            )
        for name in ("latency_budget_s", "cost_budget_usd"):
            if getattr(self, name) <= 0:
                raise TmoGraphError(f"{name} must be > 0", f"set a positive {name}")
        if self.recent_turns < 1 or self.recall_k < 0:
            raise TmoGraphError("recent_turns must be >= 1 and recall_k >= 0", "fix those values")
        if not self.user_id:
            raise TmoGraphError("user_id is empty", "pass the id of the dialogue's owner")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Context:
        """Defaults from the config's ``routing:`` section, then explicit overrides."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in settings.routing.model_dump().items() if k in names}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
