"""answer_cloud: the cloud model answers with only the chosen views, within hard limits.

The images are made here and only here: each chosen view's file is downscaled to
``cloud.image_max_side`` and re-encoded into a data URL for this one request. Personal data
in every text of the request is replaced by placeholders (:mod:`tmo_graph.guards.privacy`), which
are put back into the answer on the device. A chat UI streaming the run's ``messages`` never
sees a placeholder: the cloud call is hidden (LangGraph's ``nostream`` tag) and the UI gets
its tokens with the values put back (:class:`RestoredStream`).

Hard budgets: every request may cost at most what is left. Its input is counted at the most
it can be billed (one token per UTF-8 byte, images at the size sent) and
:class:`tmo_graph.guards.metering.CloudMeter` sizes, reserves, settles and audits each request; the
request is streamed and cut at the time left. What a local fall-back would need is kept back
while the turn has no local answer.

Audio: a clip the route sends goes as an OpenAI ``input_audio`` part (mono 16 kHz
WAV cut to ``audio.cloud_max_seconds``), billed at the price row's audio rate, when the
endpoint hears (:class:`tmo_graph.models.cloud_billing.CloudBilling` says whether it does and
what it bills). Otherwise, and for a clip whose transcript holds personal data, it goes as
its device transcript in the text, with a warning. The turn's other shareable clips go as
transcripts too; private ones never go.

The node makes the attempts itself (the client's retries are off; :mod:`tmo_graph.guards.faults`):
at most ``cloud.max_attempts``, each through the endpoint's circuit breaker (an open one
skips the call: "circuit open"). Every request is one line of the audit log. A failed call
is recorded with its error, attempts and breaker state; the graph's edge then falls back to
the local answer.

Tools: the turn's tools (``state.tools``, OpenAI's shape) and ``tool_choice`` go with the
request, their specs counted in the input it may be billed for. An answer that calls tools
is an answer (its text may be empty): its calls, with the placeholders in their arguments
put back, are the turn's answer (``CallRecord.tool_calls``).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from langchain_core.callbacks import CallbackManager
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    AnyMessage,
    BaseMessage,
    message_chunk_to_message,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, LLMResult
from langgraph.config import get_config, get_stream_writer
from langgraph.constants import TAG_NOSTREAM

from tmo_graph.context import Context
from tmo_graph.guards.audit import SentView
from tmo_graph.guards.faults import (
    Attempts,
    EmptyAnswer,
    breaker_for,
    classify,
    cloud_time_left_s,
    endpoint_of,
    run_attempts,
    within_deadline,
)
from tmo_graph.guards.metering import CloudMeter
from tmo_graph.guards.privacy import (
    PLACEHOLDERS_EVENT,
    Redactor,
    StreamRestorer,
    find_personal,
    revealed,
)
from tmo_graph.media.audio import CloudAudio, cloud_audio, store_audio
from tmo_graph.media.images import CloudImage, cloud_image, store_image
from tmo_graph.models.cloud_billing import CloudBilling, usage_tokens
from tmo_graph.policy.budget import CALL_MARGIN_S
from tmo_graph.prompts import (
    cloud_messages,
    hidden_call_tags,
    message_text,
    tool_texts,
    windowed,
    with_args,
)
from tmo_graph.services import Services
from tmo_graph.state import Budget, CallRecord, Candidate, State
from tmo_graph.turn import budget_now, has_local_answer, local_reserve


def answer_cloud(state: State, context: Context, services: Services) -> dict[str, Any]:
    state = windowed(state, context.recent_turns)  # the model reads the recent window only
    assert state.decision is not None
    billing = CloudBilling.for_endpoint(services.settings.cloud, services.costs)
    plan = audio_plan(state, services, billing, set(state.decision["views"]))
    start = services.clock()
    try:
        request = build_request(state, context, services, plan)
        _show_placeholders(request.redactor)
    except Exception as exc:  # no model, an unreadable image: no attempt is made
        return {"calls": [_failed(services.clock() - start, _reason(exc))]}
    reserve = local_reserve(state, context, services)
    meter = _meter(state, context, services, request, billing, reserve)
    if not meter.affordable():  # no request fits: none is made
        failed = _failed(
            services.clock() - start,
            "budget reached: the money left does not pay for a cloud answer",
        )
        failed["redactions"] = dict(request.redactor.counts)
        return {"calls": [failed]}
    assert services.cloud is not None  # build_request refuses a missing one
    send = Sender(services.cloud, request, meter, billing, services.clock)
    # The time left to the cloud: what the budget leaves beside the local reserve, less
    # what this node has taken so far.
    latency_left = budget_now(state, context)["latency_s"]
    time_left = cloud_time_left_s(latency_left, reserve["latency_s"]) - CALL_MARGIN_S
    if has_local_answer(state):
        # An escalation: the device's draft stands if the cloud is late, so the call may not
        # take the time the dialogue's later turns need (a hung endpoint would take it all).
        time_left = min(time_left, services.settings.cloud.escalation_share * latency_left)
    attempts = _attempts(send, services, time_left - (services.clock() - start))
    seconds = services.clock() - start
    if attempts.ok:
        call = _answer_call(attempts, request, meter, seconds)
    else:  # any cloud fault: record it; the edge falls back to local
        call = _failed_call(attempts, request, meter, seconds, send.reached)
    return {"calls": [call], **_warned(state, [*plan.warnings, *meter.warnings])}


def after_cloud(state: State) -> Literal["answered", "fall back"]:
    """A failed cloud call falls back to a local answer (answer_local), unless the turn
    already has one; otherwise the turn is answered (account)."""
    if state.calls and state.calls[-1]["ok"]:
        return "answered"
    return "answered" if has_local_answer(state) else "fall back"


# ---- the request ---------------------------------------------------------------------------


@dataclass
class CloudRequest:
    """One cloud request as made on the device: its messages and what they carry."""

    messages: list[AnyMessage]  # with the images and clips made for sending
    views: list[Candidate]  # the images sent (camera views, the message's own)
    images: list[CloudImage]  # each as sent, in the same order
    clips: list[Candidate]  # the clips sent as audio
    audio: list[CloudAudio]  # each as sent, in the same order
    unheard: list[Candidate]  # chosen clips the endpoint got as transcripts
    redactor: Redactor  # what it replaced with placeholders, to put back in the answer
    tools: list[dict[str, Any]] = field(default_factory=list)  # OpenAI-format tool specs
    tool_choice: str | dict[str, Any] | None = None

    def image_sizes(self) -> list[tuple[int, int]]:
        return [(i.width, i.height) for i in self.images]

    def audio_seconds(self) -> list[float]:
        return [a.seconds for a in self.audio]

    def unheard_seconds(self) -> list[float]:
        return [c.get("seconds", 0.0) for c in self.unheard]


def build_request(
    state: State, context: Context, services: Services, plan: AudioPlan
) -> CloudRequest:
    """The request for the chosen views and the planned clips, every text redacted: personal
    data in any of it (persona, recalled memory, history, prompt) is replaced by
    placeholders first, so it never leaves the device as typed."""
    if services.cloud is None:
        raise RuntimeError("no cloud model is configured")
    assert state.decision is not None
    cfg = services.settings.cloud
    chosen = set(state.decision["views"])
    views = [c for c in state.candidates if c["name"] in chosen and c["image"]]
    images = [cloud_image(str(v["image"]), cfg.image_max_side) for v in views]
    most_s = services.settings.audio.cloud_max_seconds
    audio = [cloud_audio(str(c["audio"]), most_s) for c in plan.sent]
    kinds = tuple(services.settings.privacy.redact)
    # Every value the request's texts reveal, known before any is redacted: one pass in order
    # would send a value an earlier message holds before a later one says it is a password.
    texts = [context.system_prompt, plan.prompt, *(message_text(m) for m in state.messages)]
    texts += [r["text"] for r in state.recalled]
    redactor = Redactor(kinds, known={**state.personal, **revealed(texts, kinds)})
    messages = cloud_messages(
        state.messages,
        state.recalled,
        context.system_prompt,
        plan.prompt,
        [(_image_label(v), i.url) for v, i in zip(views, images, strict=True)],
        detail=cfg.image_detail,
        scrub=redactor.redact,
        audio=[(_clip_label(c), a.data) for c, a in zip(plan.sent, audio, strict=True)],
    )
    return CloudRequest(
        messages,
        views,
        images,
        plan.sent,
        audio,
        plan.unheard,
        redactor,
        list(state.tools),
        state.tool_choice,
    )


def _image_label(view: Candidate) -> str:
    return "Attached image" if view["kind"] == "inline" else f"Camera view '{view['name']}'"


def _clip_label(clip: Candidate) -> str:
    if clip["kind"] == "inline":
        return clip["name"].replace("_", " ").capitalize()  # "Voice note 1"
    return f"Audio from '{clip['name']}'"


def _show_placeholders(redactor: Redactor) -> None:
    """The user's own values for the placeholders, to the device-side stream only (never
    into the state), so a streaming caller can show the cloud's tokens with them put back."""
    if redactor.placeholders:
        placeholders = {p: v for v, p in redactor.placeholders.items()}
        get_stream_writer()({PLACEHOLDERS_EVENT: placeholders})


# ---- what the turn's clips become ----------------------------------------------------------


@dataclass
class AudioPlan:
    """How the turn's clips go to the cloud, and the prompt text that carries the others."""

    sent: list[Candidate] = field(default_factory=list)  # as input_audio parts
    unheard: list[Candidate] = field(default_factory=list)  # chosen; the endpoint cannot hear
    prompt: str = ""  # the typed words, then the transcripts of the clips not sent as audio
    warnings: list[str] = field(default_factory=list)


def audio_plan(
    state: State, services: Services, billing: CloudBilling, chosen: set[str]
) -> AudioPlan:
    """Each chosen clip as audio, or as its transcript (with a warning) when its words hold
    personal data (spoken data cannot be redacted in the audio) or the endpoint cannot hear;
    the prompt then gets the transcript of every shareable clip not sent as audio."""
    plan = AudioPlan()
    redact = tuple(services.settings.privacy.redact)
    cannot_hear = billing.why_not_heard()
    for clip in (c for c in state.candidates if c.get("audio") and c["name"] in chosen):
        words = clip.get("transcript", "")
        if redact and words and find_personal(words, redact):
            plan.warnings.append(
                f"audio {clip['name']!r} went as its transcript, not as audio: it holds "
                "personal data (privacy.redact)"
            )
        elif cannot_hear:
            plan.warnings.append(f"audio {clip['name']!r} went as its transcript: {cannot_hear}")
            plan.unheard.append(clip)
        else:
            plan.sent.append(clip)
    plan.prompt = _prompt_with_transcripts(state, {c["name"] for c in plan.sent})
    return plan


def _prompt_with_transcripts(state: State, sent: set[str]) -> str:
    """The typed words, then a line for each shareable clip's transcript not ``sent`` as
    audio (voice notes and shareable sources; private sources never go)."""
    if not state.transcripts:  # no clips this turn: the prompt as the modality node made it
        return state.prompt
    typed = message_text(state.messages[-1], voice_notes=False).replace("[image]", "").strip()
    shareable = {c["name"] for c in state.candidates if c.get("audio")}
    lines = []
    for name, words in state.transcripts.items():
        is_note = name not in state.views  # voice notes belong to the (shared) message
        if name in sent or not (is_note or name in shareable):
            continue
        what = name.replace("_", " ") if is_note else f"audio from '{name}'"
        lines.append(
            f'[{what}, transcribed on the device, may be inaccurate: "{words}"]'
            if words
            else f"[{what}: no words recognised on the device]"
        )
    return "\n".join(p for p in (typed, *lines) if p)


# ---- the money and the attempts ------------------------------------------------------------


def _meter(
    state: State,
    context: Context,
    services: Services,
    request: CloudRequest,
    billing: CloudBilling,
    reserve: Budget,
) -> CloudMeter:
    """The call's meter: the most its input can be billed, whatever the endpoint's
    tokenizer, against the money left after the local reserve; its audit line's fields."""
    assert services.cloud is not None
    base_url, model = endpoint_of(services.cloud)
    costs = services.costs
    daily_cap = context.daily_cap(services.settings.spending.daily_cost_cap_usd)
    return CloudMeter(
        costs=costs,
        input_cap=costs.cloud_input_tokens_at_most(
            [
                *(message_text(m) for m in request.messages),
                *tool_texts(request.tools, request.messages),
            ],
            request.image_sizes(),
            billing.audio_seconds(request.audio_seconds(), request.unheard_seconds()),
        ),
        max_tokens=context.answer_tokens(services.settings.cloud.max_tokens),
        money_left=lambda: budget_now(state, context)["cost_usd"] - reserve["cost_usd"],
        user_id=context.user_id,
        ledger=services.spend_ledger() if daily_cap is not None else None,
        daily_cap_usd=daily_cap,
        audit=services.audit,
        key_id=context.api_key_id,
        thread_id=str(get_config().get("configurable", {}).get("thread_id", "")),
        model=model,
        endpoint=urlsplit(base_url).netloc or base_url.split("@")[0],
        views=_sent_views(request, services),
        redactions=request.redactor.counts,
    )


def _sent_views(request: CloudRequest, services: Services) -> list[SentView]:
    """What the audit log keeps of the images and clips sent: names and content hashes,
    never pixels or samples."""
    most_s = services.settings.audio.max_clip_seconds
    return [
        SentView(name=v["name"], sha256=store_image(str(v["image"]), services.media_dir).sha256)
        for v in request.views
    ] + [
        SentView(
            name=c["name"], sha256=store_audio(str(c["audio"]), services.media_dir, most_s).sha256
        )
        for c in request.clips
    ]


class Sender:
    """Makes one attempt of the request (``run_attempts`` calls it): sized and settled by
    the meter, billed as the endpoint bills."""

    def __init__(
        self,
        cloud: BaseChatModel,
        request: CloudRequest,
        meter: CloudMeter,
        billing: CloudBilling,
        clock: Callable[[], float],
    ) -> None:
        self.cloud, self.request, self.meter, self.billing = cloud, request, meter, billing
        self.clock = clock
        self.reached = False  # whether a request went out (with the clips in it)

    def __call__(self, timeout: float) -> AIMessage:
        ticket = self.meter.begin()
        began = self.clock()
        self.reached = True
        try:
            reply = _invoke(
                self.cloud, self.request.messages, timeout, ticket.max_tokens, self.request
            )
        except Exception as exc:
            self.meter.failed(ticket, classify(exc).kind, self.clock() - began)
            raise
        input_tokens = self.billing.input_tokens(
            reply,
            self.request.image_sizes(),
            self.request.audio_seconds(),
            self.request.unheard_seconds(),
        )
        _, output_tokens = usage_tokens(reply)
        self.meter.answered(ticket, (input_tokens, output_tokens), self.clock() - began)
        reply.usage_metadata = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        }
        return reply


def _attempts(send: Sender, services: Services, time_left_s: float) -> Attempts:
    """The request tried at most ``cloud.max_attempts`` times within ``time_left_s``, each
    through the endpoint's circuit breaker."""
    cfg = services.settings.cloud
    return run_attempts(
        send,
        breaker_for(
            endpoint_of(send.cloud),
            cfg.breaker_failures,
            cfg.breaker_cooldown_s,
            send.cloud,
            services.clock,
        ),
        timeout_s=cfg.timeout_s,
        time_left_s=time_left_s,
        max_attempts=cfg.max_attempts,
        check=_answered,
        clock=services.clock,
        sleep=services.sleep,
        describe=_reason,
    )


def _openai_chat(cloud: BaseChatModel) -> bool:
    """Whether ``cloud`` is LangChain's OpenAI chat model, without importing langchain_openai
    (about 0.5 s of a server's start-up when the cloud is off): such a model exists only once
    that module is imported."""
    module = sys.modules.get("langchain_openai.chat_models.base")
    return module is not None and isinstance(cloud, module.BaseChatOpenAI)


def _invoke(
    cloud: Any,
    messages: Sequence[BaseMessage],
    timeout: float,
    max_tokens: int,
    request: CloudRequest | None = None,
) -> AIMessage:
    """One request, streamed and cut at ``timeout`` seconds whatever the server does; with
    the request's tools when it has some (passed as OpenAI's ``tools`` / ``tool_choice``).

    An answer to a request that carries placeholders streams them (``[EMAIL_1]``): the call
    is hidden from a chat UI's ``messages`` stream (:func:`hidden_call_tags`), which gets
    the tokens with the values put back instead (:class:`RestoredStream`), or, for a request
    with tools (whose calls' arguments stream too), the answer once as the turn's message."""
    kwargs: dict[str, Any] = {"max_tokens": max_tokens}
    hidden = request is not None and bool(request.redactor.placeholders)
    tags = hidden_call_tags() if hidden else []
    if tags:
        kwargs["config"] = {"tags": tags}
    if request is not None and request.tools:
        kwargs["tools"] = request.tools
        if request.tool_choice is not None:
            kwargs["tool_choice"] = request.tool_choice
    if _openai_chat(cloud):  # other chat models keep their own timeouts
        kwargs["timeout"] = timeout
    restores = request is not None and TAG_NOSTREAM in tags and not request.tools

    def consume(stop: threading.Event) -> AIMessage:
        shown = RestoredStream(request.redactor.restorer()) if request and restores else None
        answer: AIMessageChunk | None = None
        try:
            for chunk in cloud.stream(messages, **kwargs):
                answer = chunk if answer is None else answer + chunk
                if shown is not None:
                    shown.feed(chunk)
                if stop.is_set():  # the caller gave up: close the stream, stop paying
                    break
            if answer is None:
                raise EmptyAnswer("the cloud model sent no answer")
        except BaseException as exc:
            if shown is not None:
                shown.failed(exc)
            raise
        reply = message_chunk_to_message(answer)
        assert isinstance(reply, AIMessage)
        if shown is not None:
            shown.end(reply)
        return reply

    return within_deadline(consume, timeout)


class RestoredStream:
    """A cloud answer's tokens with the user's values put back, as a chat model run of its
    own in the node's run: what a chat UI streaming ``messages`` shows, token by token,
    under the answer's message id (so the turn's final message is not sent again). The
    cloud call itself is hidden (``nostream``), so no placeholder reaches the UI; a piece
    that may still become one is held back (:class:`StreamRestorer`)."""

    NAME = "restored answer"

    def __init__(self, restorer: StreamRestorer) -> None:
        config = get_config()
        manager = CallbackManager.configure(
            inheritable_callbacks=config.get("callbacks"),
            inheritable_tags=config.get("tags"),
            inheritable_metadata=config.get("metadata"),
        )
        self.run = manager.on_chat_model_start({"name": self.NAME}, [[]], name=self.NAME)[0]
        self.restorer = restorer
        self.said: list[str] = []

    def feed(self, chunk: AIMessageChunk) -> None:
        if isinstance(chunk.content, str) and chunk.content:
            self._token(self.restorer.feed(chunk.content), chunk.id)

    def end(self, reply: AIMessage) -> None:
        self._token(self.restorer.flush(), reply.id)
        message = AIMessage(content="".join(self.said), id=reply.id)
        self.run.on_llm_end(LLMResult(generations=[[ChatGeneration(message=message)]]))

    def failed(self, exc: BaseException) -> None:
        self.run.on_llm_error(exc)

    def _token(self, text: str, message_id: str | None) -> None:
        if text:
            self.said.append(text)
            piece = ChatGenerationChunk(message=AIMessageChunk(content=text, id=message_id))
            self.run.on_llm_new_token(text, chunk=piece)


def _answered(reply: AIMessage) -> None:
    # An answer that calls tools may have no text: the calls are the answer.
    if not message_text(reply).strip() and not reply.tool_calls:
        raise EmptyAnswer("the cloud model returned an empty answer")


# ---- the call record -----------------------------------------------------------------------


def _answer_call(
    attempts: Attempts, request: CloudRequest, meter: CloudMeter, seconds: float
) -> CallRecord:
    reply = attempts.result
    input_tokens, output_tokens = usage_tokens(reply)
    call = CallRecord(
        where="cloud",
        latency_s=round(seconds, 4),
        cost_usd=sum(meter.charged),
        ok=True,
        text=request.redactor.restore(message_text(reply).strip()),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cloud_attempts=attempts.records,
        breaker=attempts.breaker,
        redactions=dict(request.redactor.counts),
    )
    if reply.id:
        call["message_id"] = reply.id
    if reply.tool_calls:
        # The cloud saw placeholders; the tools need the user's values.
        call["tool_calls"] = [with_args(c, request.redactor.restore) for c in reply.tool_calls]
    if request.clips:
        call["audio_sent"] = [c["name"] for c in request.clips]
    return call


def _failed_call(
    attempts: Attempts, request: CloudRequest, meter: CloudMeter, seconds: float, reached: bool
) -> CallRecord:
    call = _failed(seconds, attempts.error, attempts)
    call["cost_usd"] = sum(meter.charged)
    call["redactions"] = dict(request.redactor.counts)
    if reached and request.clips:  # the clips left the device even though no answer came
        call["audio_sent"] = [c["name"] for c in request.clips]
    return call


def _failed(seconds: float, reason: str, attempts: Attempts | None = None) -> CallRecord:
    call = CallRecord(
        where="cloud",
        latency_s=round(seconds, 4),
        cost_usd=0.0,
        ok=False,
        text="",
        input_tokens=0,
        output_tokens=0,
        error=reason,
    )
    if attempts is not None:
        call["cloud_attempts"] = attempts.records
        call["breaker"] = attempts.breaker
    return call


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def _warned(state: State, warnings: list[str]) -> dict[str, Any]:
    return {"warnings": [*state.warnings, *warnings]} if warnings else {}
