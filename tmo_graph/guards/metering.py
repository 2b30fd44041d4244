"""What one cloud call may spend, request by request, and the record of what it did spend.

Before each request (each attempt of a call) :meth:`CloudMeter.begin` sizes it to the money
left: ``max_tokens`` is shrunk until the worst-case bill (the input at the most it can be
billed, a full answer) fits, and with a daily cap that worst case is first reserved in the
user's ledger. After the request, :meth:`CloudMeter.answered` or :meth:`CloudMeter.failed`
settles it at what it cost: the reported usage, 0 for a request that never reached the
endpoint, and the worst case when the usage is unknown (a timeout, a cut stream: the
endpoint may have billed an answer never received). Each request is one audit-log line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tmo_graph.guards.audit import AuditEntry, AuditLog, SentView, now_iso
from tmo_graph.guards.faults import BudgetReached
from tmo_graph.guards.spending import SpendLedger
from tmo_graph.policy.budget import MIN_CLOUD_ANSWER_TOKENS, CostModel

log = logging.getLogger("tmo_graph.budget")
# Faults after which the endpoint may have generated (and billed) an answer we never saw.
MAYBE_BILLED = ("timeout", "stream cut")


@dataclass(frozen=True)
class Ticket:
    """One request's limits: the answer tokens it asks for and its worst-case cost."""

    max_tokens: int
    worst_usd: float
    reservation: int | None  # in the daily ledger, when there is a cap


@dataclass
class CloudMeter:
    """The money side of one cloud call (its requests share the budget left)."""

    costs: CostModel
    input_cap: int  # the most the request's input can be billed, in tokens
    max_tokens: int  # the configured answer limit
    money_left: Callable[[], float]  # what the dialogue may still spend on this call
    user_id: str
    ledger: SpendLedger | None = None
    daily_cap_usd: float | None = None
    audit: AuditLog | None = None
    key_id: str | None = None  # the API key the request came with (the server's), for audit
    # The audit line's fixed part: thread, model, endpoint host, views sent.
    thread_id: str = ""
    model: str = ""
    endpoint: str = ""
    views: list[SentView] = field(default_factory=list)
    redactions: Mapping[str, int] = field(default_factory=dict)
    purpose: str | None = None  # a request made to learn: "shadow" or "judge" (audit line)
    charged: list[float] = field(default_factory=list)  # what each request cost
    warnings: list[str] = field(default_factory=list)

    def answer_tokens(self) -> int:
        """The most answer tokens the next request may ask for (0: none fits)."""
        money = self.money_left() - sum(self.charged)
        return self.costs.answer_tokens_within(money, self.input_cap, self.max_tokens)

    def affordable(self) -> bool:
        return self.answer_tokens() >= MIN_CLOUD_ANSWER_TOKENS

    def begin(self) -> Ticket:
        """The next request's limits, reserved; :class:`BudgetReached` when none fits."""
        max_tokens = self.answer_tokens()
        if max_tokens < MIN_CLOUD_ANSWER_TOKENS:
            raise BudgetReached(
                f"the money left does not pay for a {MIN_CLOUD_ANSWER_TOKENS}-token answer"
            )
        worst = self.costs.cloud_call_usd(self.input_cap, max_tokens)
        held = None
        if self.daily_cap_usd is not None and self.ledger is not None:
            held = self.ledger.reserve(self.user_id, worst, self.daily_cap_usd)
            if held is None:
                raise BudgetReached(
                    f"user {self.user_id!r} reached the daily cap of {self.daily_cap_usd:g} USD"
                )
        return Ticket(max_tokens, worst, held)

    def failed(self, ticket: Ticket, fault: str, seconds: float) -> None:
        """A request that brought no answer: charged its worst case if it may be billed."""
        self._settle(ticket, ticket.worst_usd if fault in MAYBE_BILLED else 0.0)
        self._audit(ticket, fault, seconds, (0, 0))

    def answered(self, ticket: Ticket, tokens: tuple[int, int], seconds: float) -> None:
        """A request that answered, billed by its reported (input, output) tokens."""
        if tokens[0] > self.input_cap or tokens[1] > ticket.max_tokens:
            self.warnings.append(
                f"the endpoint reported {tokens[0]} input / {tokens[1]} output tokens, more than "
                f"the request could hold ({self.input_cap} / {ticket.max_tokens}); the bill may "
                "exceed the budget"
            )
            log.warning("cloud usage above the request's limits: %s", self.warnings[-1])
        self._settle(ticket, self.costs.cloud_call_usd(*tokens))
        self._audit(ticket, "ok", seconds, tokens)

    def _settle(self, ticket: Ticket, usd: float) -> None:
        self.charged.append(usd)
        if ticket.reservation is not None and self.ledger is not None:
            self.ledger.settle(ticket.reservation, usd)

    def _audit(self, ticket: Ticket, outcome: str, seconds: float, tokens: tuple[int, int]) -> None:
        if self.audit is None:
            return
        entry = AuditEntry(
            time=now_iso(),
            thread_id=self.thread_id,
            user_id=self.user_id,
            key_id=self.key_id,
            model=self.model,
            endpoint=self.endpoint,
            attempt=len(self.charged),
            views=self.views,
            redactions=dict(self.redactions),
            input_tokens=tokens[0],
            output_tokens=tokens[1],
            max_tokens=ticket.max_tokens,
            cost_usd=self.charged[-1],
            seconds=round(seconds, 4),
            outcome=outcome,
        )
        if self.purpose is not None:
            entry["purpose"] = self.purpose
        self.audit.append(entry)
