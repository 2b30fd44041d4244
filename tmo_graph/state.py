"""The graph's state: the dialogue, its device views, its budgets and its turn records."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph import add_messages


class ViewSpec(TypedDict, total=False):
    """A named device modality (camera view) available to the dialogue.

    ``image`` is a file path or a ``data:`` URL; ``description`` (or ``caption``) is what
    the association scorer compares with the prompt; ``private`` views never leave the device.
    """

    image: str
    description: str
    private: bool


class Budget(TypedDict):
    latency_s: float
    cost_usd: float


class Candidate(TypedDict):
    """A view that could be sent with a cloud call this turn."""

    name: str
    kind: Literal["device", "inline"]
    score: float
    url: str  # data URL (or http URL) of the image; never leaves the process unless sent


class Recalled(TypedDict):
    text: str
    score: float
    thread_id: str
    turn: int


class Decision(TypedDict):
    route: Literal["local", "cloud"]
    views: list[str]
    policy: str
    masked: list[str]  # actions the budget ruled out, e.g. "cloud+2 views"


class CallRecord(TypedDict):
    """One model call of the turn, as measured."""

    where: Literal["local", "cloud"]
    latency_s: float
    cost_usd: float
    ok: bool
    text: str
    input_tokens: int
    output_tokens: int


class TurnRecord(TypedDict):
    """What happened in one turn (DESIGN.md, "The turn record")."""

    turn: int
    task: str
    policy: str
    route: Literal["local", "cloud"]
    views_sent: list[str]
    association: dict[str, float]
    confidence: float | None
    escalated: bool
    fallback: str | None
    latency_s: float
    cost_usd: float
    budget_left: Budget
    answer: str
    local_answer: str | None  # the local draft an escalation replaced, to judge the check by


@dataclass
class InputState:
    """What a caller sends: new messages, and optionally the dialogue's views."""

    messages: Annotated[Sequence[AnyMessage], add_messages] = field(default_factory=list)
    views: dict[str, ViewSpec] = field(default_factory=dict)


@dataclass
class State(InputState):
    """The whole dialogue. Fields below ``turns`` are per-turn scratch, reset every turn."""

    budget_left: Budget | None = None  # set from the Context on the first turn
    turns: Annotated[list[TurnRecord], operator.add] = field(default_factory=list)
    turn_count: int = 0  # turns completed (older ones may live only in memory)

    prompt: str = ""
    task: str = ""
    candidates: list[Candidate] = field(default_factory=list)
    recalled: list[Recalled] = field(default_factory=list)
    decision: Decision | None = None
    calls: list[CallRecord] = field(default_factory=list)
    confidence: float | None = None
    confidence_parts: dict[str, float] = field(default_factory=dict)
    escalated: bool = False  # at most one escalation per turn: the state says so
    fallback: str | None = None
