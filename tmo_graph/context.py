"""Per-run settings: who is talking, which policy decides, the budgets and thresholds.

Passed as ``graph.invoke(..., context=Context(...))``; LangGraph Studio shows these fields
as the run's configuration. The fields the config's ``routing:`` section also sets take their
defaults and their ranges from :class:`tmo_graph.sections.RoutingDefaults`, so a range is
declared once and both the config and each run are checked against it.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from tmo_graph.errors import TmoGraphError
from tmo_graph.sections import POLICIES, PolicyName, RoutingDefaults
from tmo_graph.settings import Settings

# The defaults of the fields the config's ``routing:`` section also sets; their ranges are
# declared there too (see _NUMBERS below).
ROUTING = RoutingDefaults()

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
        default=ROUTING.policy,
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
        default=ROUTING.confidence_threshold,
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
        default=ROUTING.latency_budget_s,
        metadata={"description": "Seconds the whole dialogue may spend."},
    )
    cost_budget_usd: float = field(
        default=ROUTING.cost_budget_usd,
        metadata={"description": "USD the whole dialogue may spend."},
    )
    recent_turns: int = field(
        default=ROUTING.recent_turns,
        metadata={"description": "Turns kept verbatim; older ones go to memory."},
    )
    recall_k: int = field(
        default=ROUTING.recall_k, metadata={"description": "Older turns recalled into the prompt."}
    )
    min_recall_score: float = field(
        default=ROUTING.min_recall_score,
        metadata={"description": "Recall only older turns at least this similar (cosine)."},
    )
    recall_scope: Literal["thread", "user"] = field(
        default=ROUTING.recall_scope,
        metadata={
            "description": "Where older turns are recalled from: this dialogue only (thread), "
            "or all of this user's dialogues (user). Never another user's."
        },
    )
    min_view_score: float = field(
        default=ROUTING.min_view_score,
        metadata={"description": "A view is worth sending when its association is at least this."},
    )
    context_weight: float = field(
        default=ROUTING.context_weight,
        metadata={
            "description": "When a prompt refers back ('what about the one on the left?'), "
            "a view's association is at least this times its association with the previous "
            "user message (this squared for the one before); 0 ignores earlier turns."
        },
    )
    policy_file: str | None = field(
        default=ROUTING.policy_file,
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
        """Each number against its declared range (:data:`_NUMBERS`), with one error naming
        the field, what it must be and how to fix it."""
        values = {name: getattr(self, name) for name in _NUMBERS.model_fields}
        # numpy's integers are whole numbers too (the strict check takes Python's int only).
        for name, value in values.items():
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                values[name] = int(value)
        try:
            _NUMBERS.model_validate(values)
        except ValidationError as exc:
            raise _number_error(exc.errors()[0]) from None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Context:
        """Defaults from the config's ``routing:`` section, then explicit overrides."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in settings.routing.model_dump().items() if k in names}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# Which fields a Context's caller named. LangGraph builds a run's Context from plain JSON (the
# LangGraph server, Studio, an assistant's context) as ``Context(**given)``, so the fields left
# out hold the class's defaults; the graph fills those from the config's ``routing:`` section
# instead (:func:`named_fields`). ``dataclasses.replace`` names every field.
_dataclass_init = Context.__init__


def _init_naming_fields(self: Context, **values: Any) -> None:
    _dataclass_init(self, **values)
    object.__setattr__(self, "_named", frozenset(values))


Context.__init__ = _init_naming_fields  # type: ignore[method-assign]


def named_fields(context: Context) -> frozenset[str]:
    """The fields ``context``'s caller named (every field for one made some other way)."""
    named = getattr(context, "_named", None)
    return named if named is not None else frozenset(f.name for f in fields(Context))


def _numbers_model() -> type[BaseModel]:
    """The numbers of a :class:`Context` and their ranges, as one pydantic model: those the
    config's ``routing:`` section also sets as :class:`RoutingDefaults` declares them, then
    those only a run sets. Strict: a JSON context may carry "lots" or "0.5", which are no
    numbers, and 2.5 is no whole number."""
    specs: dict[str, Any] = {
        name: (info.annotation, info)
        for name, info in RoutingDefaults.model_fields.items()
        if info.annotation in (int, float)
    }
    specs.update(
        seed=(int, 0),
        # allow_inf_nan=False: an infinite cap is no cap, and a NaN one blocks the cloud.
        daily_cost_cap_usd=(float | None, Field(None, gt=0, allow_inf_nan=False)),
        max_answer_tokens=(int | None, Field(None, ge=1)),
    )
    return create_model("ContextNumbers", __config__=ConfigDict(strict=True), **specs)


_NUMBERS = _numbers_model()

# How to pick a value, for the fields where the range alone does not say; any bad value of
# one of these but a word for a number (NaN, out of range, a word for a limit with no
# default) is answered with its range and this advice.
_ADVICE = {
    "confidence_threshold": "pick e.g. 0.5, or calibrate one with `tmo-graph calibrate`",
    "context_weight": "use e.g. 0.8 to let a follow-up reuse the previous question's views, "
    "or 0 to score every prompt on its own",
    "daily_cost_cap_usd": "write e.g. daily_cost_cap_usd: 0.5, or leave it out for the "
    "config's cap",
    "max_answer_tokens": "write e.g. max_answer_tokens: 256, or leave it out for the "
    "config's limits",
}


def _number_error(err: ErrorDetails) -> TmoGraphError:
    """pydantic's error about one of a Context's numbers as a problem and a fix."""
    name = str(err["loc"][0])
    got = err["input"]
    info = _NUMBERS.model_fields[name]
    whole = int in (info.annotation, *get_args(info.annotation))
    kind = "a whole number" if whole else "a number"
    bounds = _bounds(info)
    example = f"e.g. {name}: {info.default}"
    if err["type"] in ("int_type", "float_type") and info.default is not None:
        return TmoGraphError(
            f"{name} must be {kind}, got {got!r}", f"write {kind} without quotes, {example}"
        )
    if name in _ADVICE:
        rule = (
            bounds
            if bounds.startswith("in ")
            else f"{kind if whole else 'a finite number'} {bounds}"
        )
        return TmoGraphError(f"{name} must be {rule}, got {got!r}", _ADVICE[name])
    if err["type"] == "finite_number":
        return TmoGraphError(
            f"{name} must be a finite number, got {got!r}", f"write a finite number, {example}"
        )
    return TmoGraphError(
        f"{name} must be {bounds}, got {got!r}", f"write {kind} {bounds}, {example}"
    )


def _bounds(info: FieldInfo) -> str:
    """A field's declared range in words: ``in [0, 1]``, ``> 0``, ``>= 1``."""
    low = next((m for m in info.metadata if isinstance(m, Ge | Gt)), None)
    high = next((m for m in info.metadata if isinstance(m, Le | Lt)), None)
    if low is not None and high is not None:
        left = f"[{low.ge}" if isinstance(low, Ge) else f"({low.gt}"
        right = f"{high.le}]" if isinstance(high, Le) else f"{high.lt})"
        return f"in {left}, {right}"
    if isinstance(low, Ge):
        return f">= {low.ge}"
    if isinstance(low, Gt):
        return f"> {low.gt}"
    if isinstance(high, Le):
        return f"<= {high.le}"
    if isinstance(high, Lt):
        return f"< {high.lt}"
    return ""
