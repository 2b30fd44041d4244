"""answer_cloud: the cloud model answers with only the chosen views, within hard limits.

The images are made here and only here: each chosen view's file is downscaled to
``cloud.image_max_side`` and re-encoded into a data URL for this one request. Personal data
in every text of the request is replaced by placeholders (:mod:`tmo_graph.guards.privacy`), which
are put back into the answer on the device.

Hard budgets: every request may cost at most what is left. Its input is counted at the most
it can be billed (one token per UTF-8 byte, images at the size sent) and
:class:`tmo_graph.guards.metering.CloudMeter` sizes, reserves, settles and audits each request; the
request is streamed and cut at the time left. What a local fall-back would need is kept back
while the turn has no local answer.

Audio: a clip the route sends goes as an OpenAI ``input_audio`` part (mono 16 kHz
WAV cut to ``audio.cloud_max_seconds``), billed at the price row's audio rate, when the cloud
can hear: the priced model has an audio price and the endpoint is no loopback stand-in (a
text-only model). Otherwise, and for a clip whose transcript holds personal data, it goes as
its device transcript in the text, with a warning. The turn's other shareable clips go as
transcripts too; private ones never go.

The node makes the attempts itself (the client's retries are off; :mod:`tmo_graph.guards.faults`):
at most ``cloud.max_attempts``, each through the endpoint's circuit breaker (an open one
skips the call: "circuit open"). Every request is one line of the audit log. A failed call
is recorded with its error, attempts and breaker state; the graph's edge then falls back to
the local answer.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    message_chunk_to_message,
)
from langchain_openai.chat_models.base import BaseChatOpenAI
from langgraph.config import get_config
from langgraph.runtime import Runtime

from tmo_graph.context import Context
from tmo_graph.costs.prices import audio_as_input_tokens
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
from tmo_graph.guards.privacy import PLACEHOLDERS_EVENT, Redactor, find_personal
from tmo_graph.media.audio import cloud_audio, store_audio
from tmo_graph.media.images import cloud_image, store_image
from tmo_graph.policy.budget import CALL_MARGIN_S
from tmo_graph.prompts import cloud_messages, message_text
from tmo_graph.services import Services
from tmo_graph.state import CallRecord, Candidate, State
from tmo_graph.turn import budget_now, local_reserve, run_context


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


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


def _answered(reply: AIMessage) -> None:
    if not message_text(reply).strip():
        raise EmptyAnswer("the cloud model returned an empty answer")


def answer_cloud(state: State, runtime: Runtime[Context], services: Services) -> dict[str, Any]:
    assert state.decision is not None
    ctx = run_context(runtime, services.default_context)
    chosen = set(state.decision["views"])
    views = [c for c in state.candidates if c["name"] in chosen and c["image"]]
    clips, prompt, audio_notes = _audio_plan(state, services, chosen)
    start = services.clock()
    try:
        if services.cloud is None:
            raise RuntimeError("no cloud model is configured")
        cfg = services.settings.cloud
        sent = [cloud_image(str(v["image"]), cfg.image_max_side) for v in views]
        sent_audio = [
            cloud_audio(str(c["audio"]), services.settings.audio.cloud_max_seconds) for c in clips
        ]
        labels = [
            "Attached image" if v["kind"] == "inline" else f"Camera view '{v['name']}'"
            for v in views
        ]
        # Personal data in any text of the request (persona, recalled memory, history,
        # prompt) is replaced by placeholders first: it never leaves the device as typed.
        redactor = Redactor(tuple(services.settings.privacy.redact), known=state.personal)
        messages = cloud_messages(
            state.messages,
            state.recalled,
            ctx.system_prompt,
            prompt,
            [(label, image.url) for label, image in zip(labels, sent, strict=True)],
            detail=cfg.image_detail,
            scrub=redactor.redact,
            audio=[(_clip_label(c), a.data) for c, a in zip(clips, sent_audio, strict=True)],
        )
        if redactor.placeholders:
            # The user's own values, to the device-side stream only (never into the state), so
            # a streaming caller can show the cloud's tokens with the values put back.
            placeholders = {p: v for v, p in redactor.placeholders.items()}
            runtime.stream_writer({PLACEHOLDERS_EVENT: placeholders})
    except Exception as exc:  # no model, an unreadable image: no attempt is made
        return {"calls": [_failed(services.clock() - start, _reason(exc))]}
    cloud = services.cloud
    assert cloud is not None and services.image_dir is not None
    endpoint = endpoint_of(cloud)
    reserve = local_reserve(state, ctx, services)
    daily_cap = ctx.daily_cap(services.settings.spending.daily_cost_cap_usd)
    meter = CloudMeter(
        costs=services.costs,
        # The most this request's input can be billed, whatever the endpoint's tokenizer.
        input_cap=services.costs.cloud_input_tokens_at_most(
            [message_text(m) for m in messages],
            [(i.width, i.height) for i in sent],
            [a.seconds for a in sent_audio] + [s for _, s in audio_notes.billed_as_audio],
        ),
        max_tokens=ctx.answer_tokens(cfg.max_tokens),
        money_left=lambda: budget_now(state, ctx)["cost_usd"] - reserve["cost_usd"],
        user_id=ctx.user_id,
        ledger=services.spend_ledger() if daily_cap is not None else None,
        daily_cap_usd=daily_cap,
        audit=services.audit,
        key_id=ctx.api_key_id,
        thread_id=str(get_config().get("configurable", {}).get("thread_id", "")),
        model=endpoint[1],
        endpoint=urlsplit(endpoint[0]).netloc or endpoint[0].split("@")[0],
        views=[  # names and content hashes only: the audit log never holds pixels
            SentView(name=v["name"], sha256=store_image(str(v["image"]), services.image_dir).sha256)
            for v in views
        ]
        + [  # and clips sent as audio, likewise by name and hash (never samples)
            SentView(
                name=c["name"],
                sha256=store_audio(
                    str(c["audio"]), services.image_dir, services.settings.audio.max_clip_seconds
                ).sha256,
            )
            for c in clips
        ],
        redactions=redactor.counts,
    )

    reached: list[bool] = []  # whether a request went out (with the clips in it)

    def attempt(timeout: float) -> AIMessage:
        ticket = meter.begin()
        began = services.clock()
        reached.append(True)
        try:
            reply = _invoke(cloud, messages, timeout, ticket.max_tokens)
        except Exception as exc:
            meter.failed(ticket, classify(exc).kind, services.clock() - began)
            raise
        input_tokens, output_tokens = _usage(reply)
        input_tokens = _audio_billed(reply, input_tokens, services, [a.seconds for a in sent_audio])
        if cfg.mode == "loopback":
            # The loopback stand-in is text-only and drops images unbilled; bill them as the
            # priced model would at the size sent (a real endpoint reports image tokens).
            input_tokens += sum(services.costs.image_tokens(i.width, i.height) for i in sent)
            # Likewise clips the priced model would have heard (the stand-in got transcripts).
            heard = audio_notes.billed_as_audio
            input_tokens += sum(services.costs.audio_tokens(s) for _, s in heard)
        meter.answered(ticket, (input_tokens, output_tokens), services.clock() - began)
        reply.usage_metadata = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        }
        return reply

    if not meter.affordable():  # no request fits: none is made
        failed = _failed(
            services.clock() - start,
            "budget reached: the money left does not pay for a cloud answer",
        )
        failed["redactions"] = dict(redactor.counts)
        return {"calls": [failed]}
    audio_sent = [c["name"] for c in clips]
    time_left = (
        cloud_time_left_s(budget_now(state, ctx)["latency_s"], reserve["latency_s"]) - CALL_MARGIN_S
    )
    attempts = run_attempts(
        attempt,
        breaker_for(endpoint, cfg.breaker_failures, cfg.breaker_cooldown_s, cloud, services.clock),
        timeout_s=cfg.timeout_s,
        time_left_s=time_left - (services.clock() - start),
        max_attempts=cfg.max_attempts,
        check=_answered,
        clock=services.clock,
        sleep=services.sleep,
        describe=_reason,
    )
    warnings = [*audio_notes.warnings, *meter.warnings]
    if not attempts.ok:  # any cloud fault: record it; the edge falls back to local
        failed = _failed(services.clock() - start, attempts.error, attempts)
        failed["cost_usd"] = sum(meter.charged)
        failed["redactions"] = dict(redactor.counts)
        if reached and audio_sent:  # the clips left the device even though no answer came
            failed["audio_sent"] = audio_sent
        return {"calls": [failed], **_warned(state, warnings)}
    reply = attempts.result
    text = redactor.restore(message_text(reply).strip())
    input_tokens, output_tokens = _usage(reply)
    call = CallRecord(
        where="cloud",
        latency_s=round(services.clock() - start, 4),
        cost_usd=sum(meter.charged),
        ok=True,
        text=text,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cloud_attempts=attempts.records,
        breaker=attempts.breaker,
        redactions=dict(redactor.counts),
    )
    if reply.id:
        call["message_id"] = reply.id
    if audio_sent:
        call["audio_sent"] = audio_sent
    return {"calls": [call], **_warned(state, warnings)}


# ---- audio ------------------------------------------------------------------------


class _AudioNotes:
    """What the request says about clips beside the audio parts: warnings, and the clips a
    loopback stand-in got as transcripts but the priced model would have heard (billed)."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.billed_as_audio: list[tuple[str, float]] = []


def _clip_label(clip: Candidate) -> str:
    if clip["kind"] == "inline":
        return clip["name"].replace("_", " ").capitalize()  # "Voice note 1"
    return f"Audio from '{clip['name']}'"


def _audio_billed(
    reply: AIMessage, input_tokens: int, services: Services, seconds: list[float]
) -> int:
    """The reply's input tokens with its audio priced at the audio rate (as text-price
    tokens). An endpoint that reports its audio tokens (OpenAI's
    ``prompt_tokens_details.audio_tokens``) has them re-priced; one that does not is billed
    the clips sent on top, by their length (never less than the audio may have cost)."""
    if not seconds:
        return input_tokens
    usage = reply.usage_metadata
    details: dict[str, Any] = dict(usage.get("input_token_details") or {}) if usage else {}
    reported = int(details.get("audio", 0) or 0)
    if reported:
        audio = min(reported, input_tokens)
        return input_tokens - audio + audio_as_input_tokens(services.costs.price, audio)
    return input_tokens + sum(services.costs.audio_tokens(s) for s in seconds)


def _audio_plan(
    state: State, services: Services, chosen: set[str]
) -> tuple[list[Candidate], str, _AudioNotes]:
    """The clips sent as audio, the prompt text the cloud gets (the typed words, then the
    transcript of every shareable clip not sent as audio), and the notes on both."""
    notes = _AudioNotes()
    audio_candidates = [c for c in state.candidates if c.get("audio")]
    hears = services.costs.hears
    loopback = services.settings.cloud.mode == "loopback"
    redact = tuple(services.settings.privacy.redact)
    sent: list[Candidate] = []
    for clip in (c for c in audio_candidates if c["name"] in chosen):
        words = clip.get("transcript", "")
        if redact and words and find_personal(words, redact):
            # Spoken personal data cannot be redacted in the audio: the words go, redacted.
            notes.warnings.append(
                f"audio {clip['name']!r} went as its transcript, not as audio: it holds "
                "personal data (privacy.redact)"
            )
        elif loopback:
            notes.warnings.append(
                f"audio {clip['name']!r} went as its transcript: the loopback stand-in cannot "
                "hear (billed as the priced model would bill the audio)"
                if hears
                else f"audio {clip['name']!r} went as its transcript: the loopback stand-in "
                "cannot hear"
            )
            if hears:
                notes.billed_as_audio.append((clip["name"], clip.get("seconds", 0.0)))
        elif not hears:
            notes.warnings.append(
                f"audio {clip['name']!r} went as its transcript: the price row "
                f"{services.settings.cloud.price_as!r} has no audio price, so the model is "
                "taken to hear none (add input_audio_per_mtok to send clips)"
            )
        else:
            sent.append(clip)
    if not state.transcripts:  # no clips this turn: the prompt as the modality node made it
        return sent, state.prompt, notes
    sent_names = {c["name"] for c in sent}
    typed = message_text(state.messages[-1], voice_notes=False).replace("[image]", "").strip()
    lines = []
    shareable = {c["name"] for c in audio_candidates}
    for name, words in state.transcripts.items():
        is_note = name not in state.views  # voice notes belong to the (shared) message
        if name in sent_names or not (is_note or name in shareable):
            continue
        what = name.replace("_", " ") if is_note else f"audio from '{name}'"
        lines.append(
            f'[{what}, transcribed on the device, may be inaccurate: "{words}"]'
            if words
            else f"[{what}: no words recognised on the device]"
        )
    return sent, "\n".join(p for p in (typed, *lines) if p), notes


def _invoke(
    cloud: Any, messages: Sequence[BaseMessage], timeout: float, max_tokens: int
) -> AIMessage:
    """One request, streamed and cut at ``timeout`` seconds whatever the server does."""
    kwargs: dict[str, Any] = {"max_tokens": max_tokens}
    if isinstance(cloud, BaseChatOpenAI):  # other chat models keep their own timeouts
        kwargs["timeout"] = timeout

    def consume(stop: threading.Event) -> AIMessage:
        answer: AIMessageChunk | None = None
        for chunk in cloud.stream(messages, **kwargs):
            answer = chunk if answer is None else answer + chunk
            if stop.is_set():  # the caller gave up: close the stream, stop paying
                break
        if answer is None:
            raise EmptyAnswer("the cloud model sent no answer")
        reply = message_chunk_to_message(answer)
        assert isinstance(reply, AIMessage)
        return reply

    return within_deadline(consume, timeout)


def _usage(reply: AIMessage) -> tuple[int, int]:
    usage = reply.usage_metadata
    if usage is None:
        return 0, 0
    return int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))


def _warned(state: State, warnings: list[str]) -> dict[str, Any]:
    return {"warnings": [*state.warnings, *warnings]} if warnings else {}


def after_cloud(state: State) -> Literal["answered", "fall back"]:
    """A failed cloud call falls back to a local answer (answer_local), unless the turn
    already has one; otherwise the turn is answered (account)."""
    if state.calls and state.calls[-1]["ok"]:
        return "answered"
    has_local = any(c["where"] == "local" and c["ok"] for c in state.calls)
    return "answered" if has_local else "fall back"
