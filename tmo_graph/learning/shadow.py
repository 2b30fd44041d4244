"""Shadow judging: how good were the device's answers, measured on the graph's own traffic.

With ``learning.shadow_rate`` > 0, a sampled share of the turns the device answered (chosen
by a hash of thread and turn, so a run is reproducible) is asked of the cloud too, *after*
the user has the device's answer, and a judge scores the device's answer against the
cloud's (0..1, a ``shadow`` label). An escalated turn already has both answers (the draft
is the record's ``local_answer``): the judge alone scores it (an ``escalation`` label).

The user's answer is never delayed or changed: the surfaces hand a finished turn to
:meth:`ShadowJudge.schedule` (a task) or :meth:`ShadowJudge.start_thread` (a thread), which
return at once; a failure there is logged and stores nothing.

Privacy: the shadow request is built by the cloud node's own :func:`build_request` (the
redactor, private messages left out of the history) and priced, sized, audited and retried by
the same guards (:class:`CloudMeter`, :class:`Sender`, the endpoint's circuit breaker). No
request at all is made for a turn that could not have gone to the cloud itself (a private
message, personal data of a ``privacy.keep_local`` kind), nor, conservatively, for a turn
of a dialogue that holds any private message (the device's answer may repeat it) or has
device modalities (camera views, audio sources: a private one's content may be in the
device's answer, a shared one the shadow request would lack), nor for a turn with images or
clips of its own. The judge's request goes through the same redactor.

Money: shadow and judge requests spend from their own budgets, ``shadow_budget_usd`` per
dialogue and ``shadow_daily_cap_usd`` per user and UTC day, kept in their own ledger
(``learning.ledger``), never the dialogue's ``budget_left`` or the user's daily cap. Each
request is one audit line with ``purpose`` ``shadow`` or ``judge``. A judge endpoint of its
own (``judge_base_url``) is priced as the cloud model.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AnyMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables.config import var_child_runnable_config

from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.guards.faults import breaker_for, endpoint_of, run_attempts
from tmo_graph.guards.metering import CloudMeter
from tmo_graph.guards.privacy import Redactor, kept_on_device, revealed
from tmo_graph.guards.spending import SpendLedger
from tmo_graph.models.cloud_billing import CloudBilling
from tmo_graph.nodes.answer_cloud import AudioPlan, CloudRequest, Sender, build_request
from tmo_graph.prompts import is_private, message_text, question_index, windowed
from tmo_graph.services import Services
from tmo_graph.state import Decision, State
from tmo_graph.threads.labels import LabelSource, TurnLabel, TurnLabels

log = logging.getLogger(__name__)

SHADOW, JUDGE = "shadow", "judge"  # the audit line's purpose
GRADER = (
    "You grade a candidate answer against a reference answer to the same question. Reply "
    "with one integer from 0 to 10 and nothing else: 10 when the candidate is as good as the "
    "reference or better, 0 when it is wrong or useless."
)
_GRADE = re.compile(r"-?\d+(?:\.\d+)?")
# Per dialogue, the ledger's "day" is this constant: the spend of the whole dialogue.
_WHOLE_DIALOGUE = "dialogue"


def sampled(thread_id: str, turn: int, rate: float) -> bool:
    """Whether turn ``turn`` of ``thread_id`` is in the shadow sample at ``rate`` (a hash of
    both, so the same dialogue is sampled the same way every run)."""
    if rate <= 0:
        return False
    digest = hashlib.sha256(f"{thread_id}\x00{turn}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def grading_messages(question: str, candidate: str, reference: str) -> list[BaseMessage]:
    """The judge's request: the grading instructions, the question and both answers."""
    return [
        SystemMessage(content=GRADER),
        HumanMessage(
            content=f"Question:\n{question}\n\nReference answer:\n{reference}\n\n"
            f"Candidate answer:\n{candidate}\n\nGrade (0-10):"
        ),
    ]


def parse_grade(text: str) -> float | None:
    """The judge's grade scaled to 0..1; None when its reply holds no grade in 0..10."""
    found = _GRADE.search(text)
    if found is None:
        return None
    grade = float(found.group())
    return grade / 10.0 if 0.0 <= grade <= 10.0 else None


@dataclass(frozen=True)
class AnsweredTurn:
    """A finished turn as the judge needs it: its record and the thread's state after it."""

    thread_id: str
    record: Mapping[str, Any]
    messages: Sequence[AnyMessage]  # the whole dialogue, this turn's answer included
    context: Context
    personal: Mapping[str, str] = field(default_factory=dict)
    views: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls, record: Mapping[str, Any], state: Mapping[str, Any], thread_id: str, context: Context
    ) -> AnsweredTurn:
        """From a turn's end (:class:`tmo_graph.conversation.Done`'s record and state)."""
        return cls(
            thread_id=thread_id,
            record=record,
            messages=list(state.get("messages") or []),
            context=context,
            personal=dict(state.get("personal") or {}),
            views=dict(state.get("views") or {}),
        )

    @property
    def user_id(self) -> str:
        return str(self.record.get("user") or self.context.user_id)


class ShadowJudge:
    """Judges finished turns after their users have the answers (see the module docstring).

    ``services``: the graph's (its cloud model asks and, without a judge endpoint, grades;
    its cost model, audit log and settings). ``labels``: where the labels go. ``judge``: a
    chat model that grades instead of the one ``learning.judge_base_url`` names (tests).
    ``on_request``: called with (purpose, outcome) after each request (the server counts
    them in its metrics).
    """

    def __init__(
        self,
        services: Services,
        labels: TurnLabels,
        judge: BaseChatModel | None = None,
        on_request: Callable[[str, str], None] | None = None,
    ) -> None:
        if not isinstance(services, Services):
            raise TmoGraphError(
                f"ShadowJudge needs the graph's Services, got {type(services).__name__}",
                "pass the services the graph was built on",
            )
        if not isinstance(labels, TurnLabels):
            raise TmoGraphError(
                f"ShadowJudge needs a labels table, got {type(labels).__name__}",
                "pass tmo_graph.threads.labels.MemoryLabels() or open_async_labels(...)",
            )
        self.services = services
        self.settings = services.settings.learning
        self.labels = labels
        self._judge = judge
        self.on_request = on_request
        path = services.settings.shadow_ledger_path()
        self._daily = SpendLedger(path)
        self._dialogue = SpendLedger(path, today=lambda: _WHOLE_DIALOGUE)
        self._lock = threading.Lock()  # one judged turn at a time: the money is checked once
        self._tasks: set[asyncio.Task[TurnLabel | None]] = set()

    # ---- which turns ---------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.settings.shadow_rate > 0 and self.services.cloud is not None

    def kind_of(self, turn: AnsweredTurn) -> LabelSource | None:
        """``shadow`` for a sampled device turn, ``escalation`` for an escalated one, else
        None (nothing to judge, or learning is off)."""
        if not self.enabled:
            return None
        record = turn.record
        if record.get("escalated") and record.get("local_answer"):
            return "escalation" if self.settings.judge_escalations else None
        if record.get("route") != "local" or record.get("policy") == "always-local":
            return None  # a cloud answer has no device answer; always-local: no cloud at all
        if not str(record.get("answer") or "").strip():
            return None
        return (
            "shadow"
            if sampled(turn.thread_id, int(record["turn"]), self.settings.shadow_rate)
            else None
        )

    def question_of(self, turn: AnsweredTurn) -> State | None:
        """The turn's question as the cloud node would read it (the recent window), or None
        when no request about this turn may leave the device (module docstring)."""
        record = turn.record
        if turn.views or record.get("transcripts") or record.get("audio_sent"):
            return None
        if any(str(w).startswith("kept on the device") for w in record.get("warnings") or []):
            return None
        messages = list(turn.messages)
        if not messages or any(is_private(m) for m in messages):
            return None
        asked = question_index(messages)
        question = messages[asked]
        if not isinstance(question.content, str) and any(
            not (isinstance(p, dict) and p.get("type") == "text") for p in question.content
        ):
            return None  # images or clips of its own
        state = State(
            messages=messages[: asked + 1],
            personal=dict(turn.personal),
            prompt=message_text(question),
            decision=Decision(route="cloud", views=[], policy=SHADOW, masked=[]),
        )
        state = windowed(state, turn.context.recent_turns)
        state = replace(state, personal=self._personal(state, turn.context.system_prompt))
        keep_local = self.services.settings.privacy.keep_local
        if kept_on_device(state, turn.context.system_prompt, keep_local):
            return None
        return state

    # ---- judging ---------------------------------------------------------------------------

    def label(self, turn: AnsweredTurn) -> TurnLabel | None:
        """The turn's label, made now (blocking: cloud and judge requests), or None when the
        turn is not judged, a request failed, the money ran out or the grade was unreadable."""
        kind = self.kind_of(turn)
        state = self.question_of(turn) if kind is not None else None
        if kind is None or state is None:
            return None
        record = turn.record
        config = {"configurable": {"thread_id": turn.thread_id}, "callbacks": None}
        ctx = contextvars.copy_context()  # the request helpers read a run config: this one
        ctx.run(var_child_runnable_config.set, config)  # type: ignore[arg-type]
        with self._lock:
            if not self._money_left(turn):
                return None
            if kind == "shadow":
                asked = ctx.run(self._shadow_answer, state, turn)
                if asked is None:
                    return None
                reference, redactor = asked
            else:
                redactor = self._redactor(state)
                reference = redactor.redact(str(record["answer"]))
            candidate = str(record["local_answer"] if kind == "escalation" else record["answer"])
            messages = grading_messages(
                redactor.redact(state.prompt), redactor.redact(candidate), reference
            )
            reply = ctx.run(self._request, self.judge_model(), messages, redactor, turn, JUDGE)
        if reply is None:
            return None
        score = parse_grade(reply)
        if score is None:
            log.warning("the judge's reply holds no grade 0-10 (%d characters)", len(reply))
            return None
        return TurnLabel(turn.thread_id, int(record["turn"]), turn.user_id, kind, score)

    def judge_model(self) -> BaseChatModel:
        """The chat model that grades: the given one, the judge endpoint, else the cloud's."""
        if self._judge is None:
            cfg = self.settings
            if cfg.judge_base_url is not None and cfg.judge_model is not None:
                from tmo_graph.models.cloud import make_cloud_chat_model

                cloud = self.services.settings.cloud
                key = os.environ.get(cfg.judge_api_key_env)
                self._judge = make_cloud_chat_model(
                    cfg.judge_base_url, cfg.judge_model, key, cloud.timeout_s, 16
                )
            else:
                assert self.services.cloud is not None  # enabled says so
                self._judge = self.services.cloud
        return self._judge

    def _personal(self, state: State, persona: str) -> dict[str, str]:
        """The thread's known personal values (value -> kind) and every one the window's
        texts reveal: a request's redactor then replaces a value wherever it appears, also
        in a message before the one that revealed it ("my password is ..." after an answer
        that already held it), which one pass in order would miss."""
        texts = (persona, *(message_text(m) for m in state.messages))
        return {**state.personal, **revealed(texts, self.services.settings.privacy.redact)}

    def _redactor(self, state: State) -> Redactor:
        """A redactor that knows the personal data of the thread and of the window's
        messages (:meth:`_personal`, in ``state.personal``)."""
        return Redactor(tuple(self.services.settings.privacy.redact), known=state.personal)

    def _shadow_answer(self, state: State, turn: AnsweredTurn) -> tuple[str, Redactor] | None:
        """The cloud's answer to the turn's question (placeholders left in, as the judge
        compares it with the device's answer through the same redactor), and that redactor."""
        request = build_request(state, turn.context, self.services, AudioPlan(prompt=state.prompt))
        assert self.services.cloud is not None
        text = self._send(self.services.cloud, request, turn, SHADOW)
        return None if text is None else (text, request.redactor)

    def _request(
        self,
        model: BaseChatModel,
        messages: list[BaseMessage],
        redactor: Redactor,
        turn: AnsweredTurn,
        purpose: str,
    ) -> str | None:
        request = CloudRequest(list(messages), [], [], [], [], [], redactor)  # type: ignore[arg-type]
        return self._send(model, request, turn, purpose)

    def _send(
        self, model: BaseChatModel, request: CloudRequest, turn: AnsweredTurn, purpose: str
    ) -> str | None:
        """One call (its attempts), sized to the shadow money left and audited; its text."""
        services, cfg = self.services, self.services.settings.cloud
        billing = CloudBilling.for_endpoint(cfg, services.costs)
        base_url, name = endpoint_of(model)
        costs = services.costs
        thread_id = turn.thread_id
        meter = CloudMeter(
            costs=costs,
            input_cap=costs.cloud_input_tokens_at_most([message_text(m) for m in request.messages]),
            max_tokens=cfg.max_tokens if purpose == SHADOW else 16,
            money_left=lambda: self.settings.shadow_budget_usd - self._dialogue.spent(thread_id),
            user_id=turn.user_id,
            ledger=self._daily,
            daily_cap_usd=self.settings.shadow_daily_cap_usd,
            audit=services.audit,
            key_id=turn.context.api_key_id,
            thread_id=thread_id,
            model=name,
            endpoint=urlsplit(base_url).netloc or base_url.split("@")[0],
            views=[],
            redactions=request.redactor.counts,
            purpose=purpose,
        )
        if not meter.affordable():
            return None
        # Its own clock: the graph's (a simulation's) measures the user's turns only.
        send = Sender(model, request, meter, billing, time.perf_counter)
        # A breaker of its own: failed shadow requests never skip a user's next cloud answer.
        breaker = breaker_for(
            (base_url, f"{name} ({purpose})"),
            cfg.breaker_failures,
            cfg.breaker_cooldown_s,
            model,
            time.perf_counter,
        )
        try:
            attempts = run_attempts(
                send,
                breaker,
                timeout_s=cfg.timeout_s,
                time_left_s=cfg.timeout_s * cfg.max_attempts,
                max_attempts=cfg.max_attempts,
                clock=time.perf_counter,
                sleep=time.sleep,
            )
        finally:
            spent = sum(meter.charged)
            if spent > 0:
                held = self._dialogue.reserve(thread_id, spent, float("inf"))
                assert held is not None
                self._dialogue.settle(held, spent)
        if self.on_request is not None and send.reached:
            self.on_request(purpose, "ok" if attempts.ok else "error")
        if not attempts.ok:
            log.warning(
                "a %s request about thread %s failed: %s", purpose, thread_id, attempts.error
            )
            return None
        return message_text(attempts.result).strip()

    def _money_left(self, turn: AnsweredTurn) -> bool:
        cfg = self.settings
        dialogue = cfg.shadow_budget_usd - self._dialogue.spent(turn.thread_id)
        day = cfg.shadow_daily_cap_usd - self._daily.spent(turn.user_id)
        return dialogue > 0 and day > 0

    # ---- after the turn ----------------------------------------------------------------------

    async def ajudge(self, turn: AnsweredTurn) -> TurnLabel | None:
        """Judge ``turn`` off the event loop and store its label; a failure is logged, and
        then nothing is stored."""
        try:
            label = await asyncio.to_thread(self.label, turn)
            if label is not None:
                await self.labels.add(label)
            return label
        except Exception:
            log.exception("shadow judging of thread %s failed", turn.thread_id)
            return None

    def schedule(self, turn: AnsweredTurn) -> asyncio.Task[TurnLabel | None] | None:
        """Judge ``turn`` in a task of the running loop, if it is to be judged; returns at
        once (the task, or None)."""
        if self.kind_of(turn) is None:
            return None
        task = asyncio.get_running_loop().create_task(self.ajudge(turn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def start_thread(self, turn: AnsweredTurn) -> threading.Thread | None:
        """Judge ``turn`` in a thread of its own (a caller without an event loop); returns
        at once (the thread, or None)."""
        if self.kind_of(turn) is None:
            return None
        worker = threading.Thread(
            target=lambda: asyncio.run(self.ajudge(turn)), name="shadow-judge", daemon=True
        )
        worker.start()
        return worker

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Let the judging under way finish (shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)


def with_user(
    context: Context | Mapping[str, Any] | None, default: Context, user: str | None
) -> Context:
    """The run's Context for judging: ``context`` when it is one, else ``default`` with the
    user a mapping (or ``user``) names."""
    if isinstance(context, Context):
        return context
    named = (context or {}).get("user_id") or user
    return replace(default, user_id=str(named)) if named else default
