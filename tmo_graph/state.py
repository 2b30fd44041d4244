"""The graph's state: the dialogue, its device modalities, its budgets and its turn records.

What a thread stores between turns is the dialogue (``messages``), the device's modalities
(``views``: camera views and audio sources) as references, the budgets left and the turn
records. Pixels and samples never enter the state: files and inline images are kept as a
path or URL plus a content hash, and data URLs are made inside the cloud call for what it
actually sends. The per-turn fields of :class:`State` are scratch that
``account`` clears when the turn ends.

``messages`` and ``turns`` grow every turn, so each is a LangGraph ``DeltaChannel`` (beta):
a checkpoint stores only the step's new messages and records (its writes) and, every
``SNAPSHOT_EVERY`` updates, the whole list; reading a checkpoint replays the writes since
the last snapshot. A thread's stored size then grows with its turns, not with their square
(docs/graph.md, "What a thread stores"). ``messages`` uses LangGraph's own batch reducer
for it, ``_messages_delta_reducer`` (add_messages' rules: append, replace by id,
RemoveMessage; unlike add_messages, removing an unknown id is ignored, not an error):
LangGraph recognises that reducer and gives every message written to it an id before the
write is saved (a ``("user", ...)`` tuple too), so a replay rebuilds the same messages and a
node's replacement of one (detect_modality's media reference) replaces it again.

The TypedDicts come from ``typing_extensions``: on Python < 3.12 pydantic (and with it the
LangGraph server and Studio) cannot build a schema from ``typing.TypedDict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NotRequired

from langchain_core.messages import AnyMessage
from langgraph.channels.delta import DeltaChannel
from langgraph.graph.message import _messages_delta_reducer
from typing_extensions import TypedDict

from tmo_graph.errors import TmoGraphError

# The tag on the tokens of a local draft that may still be replaced by a cloud answer: a
# surface streams every other token as the final answer's.
DRAFT_TAG = "draft"
# A run whose ``configurable`` sets this key to True streams every answer token, drafts and
# placeholders included (tagged, for a surface that holds them back itself: conversation.py).
# Without it those runs carry LangGraph's ``nostream`` tag and a chat UI never sees them.
STREAM_HIDDEN = "tmo_stream_hidden"


class ModalitySpec(TypedDict, total=False):
    """A named device modality (a camera view or an audio source) as the state stores it:
    the fields the caller gave, checked by :class:`tmo_graph.media.modalities.Modality`.

    ``image`` (a file path, an http(s) URL or a ``data:`` URL) or ``audio`` (a clip's path
    or data URL): the graph stores a data URL's bytes once in its media folder and keeps
    the path instead, with the content hash in ``sha256``. ``description`` is what the
    association scorer compares with the prompt; ``private`` ones never leave the device.
    """

    image: str
    sha256: str
    description: str
    private: bool
    audio: str


class Battery(TypedDict):
    percent: float
    plugged: bool | None


class DeviceReading(TypedDict):
    """The machine and the estimates as one turn's route saw them (the turn record's
    ``device``). CPU loads are shares of all cores busy since the previous reading, 0..1
    (None at the first reading of a process); memory is what new processes can still get."""

    cpu_load: float | None
    cpu_load_others: float | None  # without this process's own work
    free_memory_mb: float | None
    battery: Battery | None  # None: the device has none (or it cannot be read)
    local_tokens_per_s: float
    local_prefill_tokens_per_s: float
    cloud_latency_s: float | None  # a successful cloud call's measured seconds (EWMA)
    cloud_time_factor: float  # measured / expected cloud seconds (EWMA; 1 until measured)
    cloud_failure_rate: float  # share of failed cloud attempts (EWMA)


class Budget(TypedDict):
    latency_s: float
    cost_usd: float


class Candidate(TypedDict):
    """A modality that could be sent with a cloud call this turn: a shareable camera view or
    audio source, or an image or voice note of the message itself (``inline``)."""

    name: str
    kind: Literal["device", "inline"]
    score: float
    image: str | None  # path or http(s) URL of the image; None: a description only
    # An audio clip: its stored path, length and the device's transcript.
    audio: NotRequired[str]
    seconds: NotRequired[float]
    transcript: NotRequired[str]


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


class TokenTrace(TypedDict):
    """The local answer's per-token log-probs and entropies, for the confidence check."""

    logprobs: list[float]
    entropies: list[float]


class CallRecord(TypedDict):
    """One model call of the turn, as measured."""

    where: Literal["local", "cloud"]
    latency_s: float
    cost_usd: float
    ok: bool
    text: str
    input_tokens: int
    output_tokens: int
    error: NotRequired[str]  # why a failed call failed
    message_id: NotRequired[str]  # id of the streamed answer message, reused for the reply
    # Cloud only: each attempt ({"outcome": "ok" | fault kind, "status"?, "seconds"}) and
    # the endpoint's circuit breaker after the call (closed / open / half-open).
    cloud_attempts: NotRequired[list[dict[str, Any]]]
    breaker: NotRequired[str]
    redactions: NotRequired[dict[str, int]]  # personal data replaced in the request, by kind
    audio_sent: NotRequired[list[str]]  # clips whose audio the request carried
    # The answer's tool calls (LangChain's ToolCall shape: name, args, id), values restored.
    tool_calls: NotRequired[list[dict[str, Any]]]


class TurnRecord(TypedDict):
    """What happened in one turn (docs/architecture.md, "The turn record")."""

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
    masked: NotRequired[list[str]]  # actions the budget ruled out this turn
    input_tokens: NotRequired[int]  # over the turn's cloud calls (local prompts are not counted)
    output_tokens: NotRequired[int]  # over all the turn's calls
    cloud_attempts: NotRequired[list[dict[str, Any]]]  # the turn's cloud attempts, in order
    breaker: NotRequired[str]  # the cloud endpoint's circuit after the turn's cloud call
    redactions: NotRequired[dict[str, int]]  # personal data kept from the cloud, by kind
    warnings: NotRequired[list[str]]  # input the turn did not use as given (images dropped, ...)
    # Audio, present when the turn had clips: the clips whose content went to the
    # cloud (also named in views_sent), and every clip's device transcript by name.
    audio_sent: NotRequired[list[str]]
    transcripts: NotRequired[dict[str, str]]
    transcription_s: NotRequired[float]  # of latency_s: the device reading the turn's clips
    # The device as the route saw it: CPU load (all processes, and all but this one) since
    # the previous turn, free memory (MB), battery (null: none), and the measured speeds the
    # budgets used: local prefill / decode tokens/s, cloud call seconds, cloud time factor
    # (measured / expected), cloud failure rate (tmo_graph.costs.device.DeviceReading).
    device: NotRequired[DeviceReading]
    # The answer's tool calls (name, args, id) when the cloud answered by calling tools.
    tool_calls: NotRequired[list[dict[str, Any]]]
    # Whom the turn ran for: Context.user_id, or on a LangGraph server the user its auth
    # proved (langgraph_auth_user), whose memory, daily cap and audit entries it used.
    user: NotRequired[str]


# Updates of a growing channel between two full snapshots of it: ``messages`` takes 2-3 a
# turn, ``turns`` one. Fewer snapshots store less; more bound the writes a read replays.
SNAPSHOT_EVERY = 100


def append_turns(turns: list[TurnRecord], writes: Sequence[list[TurnRecord]]) -> list[TurnRecord]:
    """Turn records accumulate (DeltaChannel's reducer: a batch is its writes in order, so
    replaying saved writes in one batch gives what they gave one step at a time)."""
    for write in writes:
        if not isinstance(write, list):
            raise TmoGraphError(
                f"a write to `turns` must be a list of turn records, not {type(write).__name__}",
                "return {'turns': [record]} from the node",
            )
    return [*turns, *(record for write in writes for record in write)]


Messages = Annotated[
    Sequence[AnyMessage], DeltaChannel(_messages_delta_reducer, snapshot_frequency=SNAPSHOT_EVERY)
]
Turns = Annotated[list[TurnRecord], DeltaChannel(append_turns, snapshot_frequency=SNAPSHOT_EVERY)]


def merge_personal(left: dict[str, str], right: dict[str, str]) -> dict[str, str]:
    """Personal values found in the thread accumulate (value -> kind)."""
    return {**left, **right}


def add_calls(left: list[CallRecord], right: list[CallRecord] | None) -> list[CallRecord]:
    """Calls accumulate within a turn; ``None`` (written by ``account``) clears them."""
    return [] if right is None else [*left, *right]


@dataclass
class InputState:
    """What a caller sends: new messages, and optionally the dialogue's device modalities
    (camera views and audio sources, by name) and the tools the turn offers.

    ``tools`` are OpenAI-format tool specs (``{"type": "function", "function": {...}}``) and
    ``tool_choice`` OpenAI's choice (``"auto"``, ``"required"``, ``"none"`` or a named
    function): per-turn scratch that ``account`` clears, so a caller offers them every turn.
    """

    messages: Messages = field(default_factory=list)
    views: dict[str, ModalitySpec] = field(default_factory=dict)
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | dict[str, Any] | None = None


@dataclass
class OutputState:
    """What a run returns: the dialogue, its turn records and the budget left."""

    messages: Messages = field(default_factory=list)
    turns: Turns = field(default_factory=list)
    budget_left: Budget | None = None


@dataclass
class State(InputState):
    """The whole dialogue. Fields below ``turn_count`` are per-turn scratch, cleared by
    ``account`` at the end of every turn."""

    budget_left: Budget | None = None  # set by the first turn's account from the Context
    turns: Turns = field(default_factory=list)
    turn_count: int = 0  # turns completed
    # How many of the finished turns in ``messages`` (from the first) have left the recent
    # window: stored in memory (all but private ones) and their personal values noted, each
    # once. ``messages`` keeps them all (what a chat UI shows).
    remembered_turns: int = 0
    # Personal values (value -> kind) of turns that left the recent window: a repeat of one
    # in a later message or answer is redacted even when what revealed it ("my password is")
    # is no longer in the request. On the device, like the messages they came from.
    personal: Annotated[dict[str, str], merge_personal] = field(default_factory=dict)

    prompt: str = ""
    task: str = ""
    candidates: list[Candidate] = field(default_factory=list)
    recalled: list[Recalled] = field(default_factory=list)
    decision: Decision | None = None
    calls: Annotated[list[CallRecord], add_calls] = field(default_factory=list)
    local_tokens: TokenTrace | None = None
    confidence: float | None = None
    confidence_parts: dict[str, float] = field(default_factory=dict)
    escalated: bool = False  # at most one escalation per turn: the state says so
    warnings: list[str] = field(default_factory=list)  # for the turn record's warnings
    # Every clip's device transcript this turn (private sources too: the local prompt reads
    # them), by modality name.
    transcripts: dict[str, str] = field(default_factory=dict)
    # Seconds the device spent reading this turn's clips (decoding, speech recognition): the
    # turn's latency and the budget count them like a model call's.
    transcription_s: float = 0.0
    device: DeviceReading | None = None  # read by route, for the policy and the turn record
