"""One thread as the console shows it: its turns, each its question, its answer and its turn
record read as badges (route, views, confidence, escalated, fell back, latency, cost), what left
the device, and the audit log's lines of its cloud requests.

Read from the thread's checkpointed state (``messages`` and the turn records ``turns``) and the
audit log; nothing here holds a placeholder's value (the state's ``personal`` is never read).
Someone else than the thread's owner (an admin) sees no private turn's words, and the other
turns' words with their personal data replaced by placeholders, as the cloud saw them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AnyMessage

from tmo_graph.guards.audit import AuditEntry
from tmo_graph.guards.privacy import Redactor
from tmo_graph.media.store import parse_media_url
from tmo_graph.observe.metrics import budget_reached
from tmo_graph.policy.base import Action
from tmo_graph.policy.budget import CostModel
from tmo_graph.prompts import is_private, message_text

DEVICE, CLOUD_TEXT, CLOUD_VIEWS = "device", "cloud text", "cloud + views"
ROUTES = (DEVICE, CLOUD_TEXT, CLOUD_VIEWS)


def route_of(record: Mapping[str, Any]) -> str:
    """The route badge: answered on the device, by the cloud from text, or with views / clips."""
    if record.get("route") != "cloud":
        return DEVICE
    return CLOUD_VIEWS if record.get("views_sent") else CLOUD_TEXT


@dataclass
class Thumbnail:
    """An image that went to the cloud: its view name and stored hash."""

    name: str
    sha256: str


@dataclass
class TurnView:
    number: int
    question: str  # the user's words ("" for a private turn shown to someone else)
    images: list[str]  # hashes of the question's stored images
    private: bool
    answer: str
    record: dict[str, Any]
    route: str
    sent_images: list[Thumbnail] = field(default_factory=list)
    sent_other: list[str] = field(default_factory=list)  # views sent with no stored image
    clips: list[str] = field(default_factory=list)
    audit: list[AuditEntry] | None = None  # its cloud requests' audit lines (None: unmatched)
    always_cloud_usd: float = 0.0
    time: str | None = None  # when the turn was checkpointed (ISO 8601), when known
    # Its labels (docs/learning.md): {"source", "score", "comment", "created"}, oldest first.
    labels: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cloud_usd(self) -> float | None:
        """What its cloud requests cost by the audit log (None: the lines were not matched)."""
        return None if self.audit is None else sum(e["cost_usd"] for e in self.audit)

    @property
    def budget_reached(self) -> bool:
        """The answer is the budget's "cannot answer": no model call fitted what was left."""
        return budget_reached(self.record)

    @property
    def redactions(self) -> dict[str, int]:
        """Personal data kept from the cloud, by kind (counts only)."""
        return {str(k): int(v) for k, v in (self.record.get("redactions") or {}).items() if v}


def _images(message: AnyMessage) -> list[str]:
    """The hashes of the stored images a message names."""
    if not isinstance(message.content, list):
        return []
    out = []
    for block in message.content:
        if not isinstance(block, dict) or block.get("type") not in ("image", "image_url"):
            continue
        url = block.get("url")
        parsed = parse_media_url(url) if isinstance(url, str) else None
        if parsed is not None:
            out.append(parsed[1])
    return out


def _segments(messages: Sequence[AnyMessage]) -> list[list[AnyMessage]]:
    """The dialogue cut into turns: what came in, up to and including each answer."""
    out: list[list[AnyMessage]] = []
    current: list[AnyMessage] = []
    for message in messages:
        if message.type == "system":
            continue
        current.append(message)
        if message.type == "ai":
            out.append(current)
            current = []
    return out


def _always_cloud_usd(
    record: Mapping[str, Any],
    private: bool,
    prompt_chars: int,
    cloud_usd: float | None,
    costs: CostModel,
) -> float:
    """What an always-cloud policy would have paid the cloud for this turn: a cloud turn what
    it paid (its audit lines, else its record's cost); a private turn nothing (every policy
    keeps it on the device); a device turn a text-only cloud call priced by the cost model
    the route uses, on the dialogue's text so far and an answer as long as the device's."""
    if record.get("route") == "cloud":
        return float(cloud_usd if cloud_usd is not None else record.get("cost_usd", 0.0))
    if private:
        return 0.0
    answer_tokens = max(int(record.get("output_tokens") or 0), 1)
    return costs.expected(Action("cloud", ()), prompt_chars, cloud_tokens=answer_tokens).cost_usd


def turn_views(
    messages: Sequence[AnyMessage],
    records: Sequence[Mapping[str, Any]],
    audit: Sequence[AuditEntry],
    costs: CostModel,
    owner_view: bool,
    times: Mapping[int, str] | None = None,
) -> list[TurnView]:
    """The thread's turns for the console. ``audit``: the thread's audit lines in order (each
    turn takes as many as its record counts cloud attempts, when the counts agree);
    ``owner_view``: False for an admin looking at another user's thread (a private turn's words
    are then not shown); ``times``: each turn number's checkpoint time."""
    segments = _segments(messages)
    attempts = [len(r.get("cloud_attempts") or []) for r in records]
    matched = sum(attempts) == len(audit)
    # Newest records and segments belong together (an old thread may hold fewer messages).
    paired = min(len(segments), len(records))
    offset_s, offset_r = len(segments) - paired, len(records) - paired
    chars = sum(
        len(message_text(m)) for seg in segments[:offset_s] for m in seg if not is_private(m)
    )
    views: list[TurnView] = []
    used = sum(attempts[:offset_r])
    # For someone else: one redactor over the thread, so a value keeps its placeholder.
    shown = (lambda text: text) if owner_view else Redactor().redact
    for i, record in enumerate(records):
        lines = list(audit[used : used + attempts[i]]) if matched else None
        used += attempts[i]
        if i < offset_r:
            continue
        segment = segments[offset_s + i - offset_r]
        asked = [m for m in segment if m.type != "ai"]
        private = any(is_private(m) for m in asked)
        show = owner_view or not private
        chars += sum(len(message_text(m)) for m in asked if not is_private(m))
        images = [h for m in asked for h in _images(m)]
        view = TurnView(
            number=int(record.get("turn", i)),
            question=shown("\n".join(message_text(m) for m in asked if m.type == "human"))
            if show
            else "",
            images=images if show else [],
            private=private,
            answer=shown(str(record.get("answer", ""))) if show else "",
            record=dict(record),
            route=route_of(record),
            clips=list(record.get("audio_sent") or []),
            audit=lines,
            time=(times or {}).get(int(record.get("turn", i))),
        )
        for name in record.get("views_sent") or []:
            n = name.removeprefix("image_")
            if name.startswith("image_") and n.isdigit() and 0 < int(n) <= len(images):
                view.sent_images.append(Thumbnail(name, images[int(n) - 1]))
            elif name not in view.clips:
                view.sent_other.append(name)
        view.always_cloud_usd = _always_cloud_usd(record, private, chars, view.cloud_usd, costs)
        chars += len(str(record.get("answer", ""))) if not private else 0
        views.append(view)
    return views
