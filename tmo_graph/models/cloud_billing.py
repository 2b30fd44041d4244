"""What the configured cloud endpoint hears and bills for a request's input.

A real endpoint bills what it reports: its usage, with the audio tokens repriced at the
audio rate when it says how many there were (OpenAI's ``prompt_tokens_details``), else the
clips sent billed on top by their length (never less than the audio may have cost).

The loopback stand-in (``cloud.mode: loopback``, :mod:`tmo_graph.models.cloud`) is a
text-only small model priced as the model it stands in for (``cloud.price_as``). It drops
images unbilled and cannot hear, so a chosen clip goes to it as its transcript; it is billed
as the priced model would have billed both: the images at the size sent and, when the
priced model hears, the clips by their length. The cloud node asks this module, never the
mode, what a request costs.

Tokens are in text-price input tokens throughout (what :class:`CostModel` prices).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tmo_graph.costs.prices import audio_as_input_tokens

if TYPE_CHECKING:
    from langchain_core.messages import AIMessage

    from tmo_graph.policy.budget import CostModel
    from tmo_graph.sections import CloudSettings


def usage_tokens(reply: AIMessage) -> tuple[int, int]:
    """The (input, output) tokens the reply reports; (0, 0) when it reports none."""
    usage = reply.usage_metadata
    if usage is None:
        return 0, 0
    return int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))


@dataclass(frozen=True)
class CloudBilling:
    """How the configured endpoint is billed: :meth:`for_endpoint` picks it from settings."""

    costs: CostModel
    price_as: str  # the price row's name, for the messages
    stand_in: bool  # the loopback stand-in: text-only, priced as ``price_as``

    @classmethod
    def for_endpoint(cls, cloud: CloudSettings, costs: CostModel) -> CloudBilling:
        return cls(costs=costs, price_as=cloud.price_as, stand_in=cloud.mode == "loopback")

    def why_not_heard(self) -> str | None:
        """Why a clip goes to this endpoint as its transcript; None when it hears audio."""
        if self.stand_in:
            if self.costs.hears:
                return (
                    "the loopback stand-in cannot hear (billed as the priced model would "
                    "bill the audio)"
                )
            return "the loopback stand-in cannot hear"
        if not self.costs.hears:
            return (
                f"the price row {self.price_as!r} has no audio price, so the model is taken "
                "to hear none (add input_audio_per_mtok to send clips)"
            )
        return None

    def audio_seconds(self, sent: Sequence[float], unheard: Sequence[float]) -> list[float]:
        """The clips a request is billed as audio, by length: those ``sent`` as audio, and
        for the stand-in of a hearing model those it got as transcripts (``unheard``)."""
        return [*sent, *unheard] if self.stand_in and self.costs.hears else list(sent)

    def input_tokens(
        self,
        reply: AIMessage,
        images: Sequence[tuple[int, int]] = (),
        sent_audio_s: Sequence[float] = (),
        unheard_audio_s: Sequence[float] = (),
    ) -> int:
        """The request's input as billed: the reply's input tokens with its audio priced at
        the audio rate, plus for the stand-in what the priced model would have billed for the
        ``images`` (width, height as sent) and the ``unheard_audio_s`` clips."""
        tokens = self._audio_repriced(reply, sent_audio_s)
        if self.stand_in:
            tokens += sum(self.costs.image_tokens(w, h) for w, h in images)
            tokens += sum(
                self.costs.audio_tokens(s) for s in self.audio_seconds((), unheard_audio_s)
            )
        return tokens

    def _audio_repriced(self, reply: AIMessage, seconds: Sequence[float]) -> int:
        """The reported input tokens, the audio among them at the audio rate. An endpoint
        that reports its audio tokens has them repriced; one that does not is billed the
        clips sent on top, by their length."""
        input_tokens, _ = usage_tokens(reply)
        if not seconds:
            return input_tokens
        usage = reply.usage_metadata
        details: dict[str, Any] = dict(usage.get("input_token_details") or {}) if usage else {}
        reported = int(details.get("audio", 0) or 0)
        if reported:
            audio = min(reported, input_tokens)
            return input_tokens - audio + audio_as_input_tokens(self.costs.price, audio)
        return input_tokens + sum(self.costs.audio_tokens(s) for s in seconds)
