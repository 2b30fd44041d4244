"""Per-run settings: who is talking, which policy decides, the budgets and thresholds.

Passed as ``graph.invoke(..., context=Context(...))``; LangGraph Studio shows these fields
as the run's configuration.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

from tmo_graph.errors import TmoGraphError
from tmo_graph.sections import POLICIES, PolicyName
from tmo_graph.settings import Settings

# Numeric fields: checked to be numbers (a JSON context may carry "lots") and finite (a NaN
# budget would block the cloud for ever and make the turn records invalid JSON).
FLOAT_FIELDS = (
    "confidence_threshold",
    "latency_budget_s",
    "cost_budget_usd",
    "min_recall_score",
    "min_view_score",
    "context_weight",
)
INT_FIELDS = ("recent_turns", "recall_k", "seed")
RANGED_FIELDS = ("confidence_threshold", "context_weight")  # in [0, 1]

# A neutral persona; a system message sent by the caller replaces it, and so does
# Context.system_prompt.
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and directly."


@dataclass(kw_only=True)
class Context:
    """What a single run of the graph may decide differently from another."""

    user_id: str = field(
        default="default",
        metadata={"description": "Owner of the dialogue; memory recall never crosses users."},
    )
    policy: PolicyName = field(
        default="rules",
        metadata={
            "description": "Who decides where a turn is answered: always-local, always-cloud, "
            "random, rules (relevant views to the cloud, the rest local with escalation), "
            "cascade (local first, escalate when unsure), learned (needs policy_file)."
        },
    )
    system_prompt: str = field(
        default=DEFAULT_SYSTEM_PROMPT,
        metadata={
            "description": "The assistant's persona and instructions, for both models. A "
            "system message in the conversation itself takes precedence."
        },
    )
    local_model: str | None = field(
        default=None,
        metadata={
            "description": "On-device model for this run: a pip package carrying a .gguf, a "
            ".gguf path or a Hugging Face folder; default: the config's local.source."
        },
    )
    cloud_model: str | None = field(
        default=None,
        metadata={
            "description": "Cloud model name sent to the endpoint for this run; default: the "
            "config's cloud.model (loopback: the served folder)."
        },
    )
    cloud_base_url: str | None = field(
        default=None,
        metadata={
            "description": "OpenAI-compatible endpoint for this run, e.g. "
            "http://127.0.0.1:8000/v1; default: the config's cloud endpoint."
        },
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
    recall_scope: Literal["thread", "user"] = field(
        default="thread",
        metadata={
            "description": "Where older turns are recalled from: this dialogue only (thread), "
            "or all of this user's dialogues (user). Never another user's."
        },
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
    daily_cost_cap_usd: float | None = field(
        default=None,
        metadata={
            "description": "USD this run's user may spend a UTC day across all dialogues; "
            "with the config's spending.daily_cost_cap_usd the lower one applies (the server "
            "sets it from the API key)."
        },
    )
    max_answer_tokens: int | None = field(
        default=None,
        metadata={
            "description": "The most tokens an answer may have, local or cloud; the config's "
            "local.max_new_tokens / cloud.max_tokens when lower (the server sets it from a "
            "request's max_tokens)."
        },
    )
    api_key_id: str | None = field(
        default=None,
        metadata={
            "description": "Id of the API key the server authenticated this run's request "
            "with; written to the audit log (never the key itself)."
        },
    )

    def __post_init__(self) -> None:
        self._check_numbers()
        if self.policy not in POLICIES:
            raise TmoGraphError(
                f"unknown policy {self.policy!r}", f"use one of: {', '.join(POLICIES)}"
            )
        if self.recall_scope not in ("thread", "user"):
            raise TmoGraphError(
                f"unknown recall_scope {self.recall_scope!r}",
                "use 'thread' (this dialogue) or 'user' (all of the user's dialogues)",
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
        if not self.system_prompt.strip():
            raise TmoGraphError("system_prompt is empty", "leave it out for the default persona")
        for name in ("local_model", "cloud_model", "cloud_base_url"):
            value = getattr(self, name)
            if value is not None and not str(value).strip():
                raise TmoGraphError(f"{name} is empty", f"leave {name} out for the config's")
        if self.cloud_base_url and not self.cloud_base_url.startswith(("http://", "https://")):
            raise TmoGraphError(
                f"cloud_base_url {self.cloud_base_url!r} is not an http(s) URL",
                "use e.g. http://127.0.0.1:8000/v1",
            )
        if not self.user_id:
            raise TmoGraphError("user_id is empty", "pass the id of the dialogue's owner")
        most = self.max_answer_tokens
        if most is not None and (isinstance(most, bool) or not isinstance(most, int) or most < 1):
            raise TmoGraphError(
                f"max_answer_tokens must be a whole number >= 1, got {most!r}",
                "write e.g. max_answer_tokens: 256, or leave it out for the config's limits",
            )
        cap = self.daily_cost_cap_usd
        if cap is not None and (
            isinstance(cap, bool)
            or not isinstance(cap, numbers.Real)
            or not math.isfinite(cap)
            or cap <= 0
        ):
            raise TmoGraphError(
                f"daily_cost_cap_usd must be a finite number > 0, got {cap!r}",
                "write e.g. daily_cost_cap_usd: 0.5, or leave it out for the config's cap",
            )

    def answer_tokens(self, configured: int) -> int:
        """The answer-token limit in force: the lower of the config's and this run's."""
        return (
            configured
            if self.max_answer_tokens is None
            else min(configured, self.max_answer_tokens)
        )

    def daily_cap(self, configured: float | None) -> float | None:
        """The daily cap in force: the lower of the config's and this run's (None: none)."""
        caps = [c for c in (configured, self.daily_cost_cap_usd) if c is not None]
        return min(caps) if caps else None

    def _check_numbers(self) -> None:
        defaults = {f.name: f.default for f in fields(self) if f.default is not MISSING}
        for name in (*FLOAT_FIELDS, *INT_FIELDS):
            value = getattr(self, name)
            whole = name in INT_FIELDS
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                bad = True
            else:
                bad = whole and not isinstance(value, numbers.Integral)
            if bad:
                raise TmoGraphError(
                    f"{name} must be {'a whole number' if whole else 'a number'}, got {value!r}",
                    f"write {'a whole number' if whole else 'a number'} without quotes, "
                    f"e.g. {name}: {defaults[name]}",
                )
            # (a threshold's or weight's range check below names its range, NaN included)
            if not math.isfinite(value) and name not in RANGED_FIELDS:
                raise TmoGraphError(
                    f"{name} must be a finite number, got {value!r}",
                    f"write a finite number, e.g. {name}: {defaults[name]}",
                )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Context:
        """Defaults from the config's ``routing:`` section, then explicit overrides."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in settings.routing.model_dump().items() if k in names}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
