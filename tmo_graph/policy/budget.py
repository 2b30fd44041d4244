"""One cost model: expected cost of each action, call prices, and the budget mask.

:class:`CostModel` is built once from settings (cached) and shared by the route node, the
confidence check, the accounting node and the calibration report, so that an action is
priced the same way wherever it is looked at. The simulator builds one from the paper's
profiles (:meth:`CostModel.paper`), whose numbers are bit-identical to the published code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import combinations
from typing import TYPE_CHECKING, Any

from tmo_graph.costs import prices, profiles
from tmo_graph.errors import TmoGraphError
from tmo_graph.policy.base import LOCAL, Action, Cost, RouteInput
from tmo_graph.settings import Settings

if TYPE_CHECKING:  # types only: state.py pulls in LangGraph, which policy/ must not need
    from tmo_graph.state import Budget, Candidate, TurnRecord

# Rough prompt size in tokens per character (English averages ~4 characters a token).
_TOKENS_PER_CHAR = 0.25
# Subsets of more views than this are not enumerated (2**X grows fast).
MAX_VIEWS_PER_CALL = 4
# Chat formats add a few tokens per message (role and separators) and to prime the reply.
TOKENS_PER_MESSAGE = 4
REPLY_PRIMING_TOKENS = 3
# A cloud answer shorter than this is not worth a call; a local one needs at least a token.
MIN_CLOUD_ANSWER_TOKENS = 16
# Seconds a call spends around the model (templating, callbacks, parsing), kept out of its
# deadline so that the measured call still fits what was left.
CALL_MARGIN_S = 0.05


def all_actions(view_names: Sequence[str]) -> list[Action]:
    """Local, then cloud with every view subset in (size, lexicographic) order, as in the paper."""
    actions = [LOCAL]
    for size in range(min(len(view_names), MAX_VIEWS_PER_CALL) + 1):
        actions += [Action("cloud", combo) for combo in combinations(view_names, size)]
    return actions


@dataclass(frozen=True)
class CostModel:
    """Prices and expected costs of local and cloud calls.

    Two ways to build one:
    - :meth:`from_settings` (the live graph): local time from the configured generation speed,
      cloud latency from the network profile plus the answer's generation time, cloud money
      from the price table and an estimate of the prompt's tokens; the graph's services
      replace the speeds by what the device measures now (:mod:`tmo_graph.costs.device`);
    - :meth:`paper` (the simulator): the paper's fixed per-call profiles, where a local answer
      and a cloud call with k views cost the same whatever the prompt (``fixed_*`` set).
    """

    local_tokens_per_s: float
    local_max_new_tokens: int
    device_power_w: float
    usd_per_kwh: float
    network: profiles.NetworkProfile
    cloud_max_tokens: int
    cloud_tokens_per_s: float
    price: prices.ModelPrice
    # How images are sent: the detail asked (billing rule) and the longest side after
    # downscaling (the largest an image can be, for the expected cost).
    image_detail: str = "low"
    image_max_side: int = 768
    # Prompt tokens a second the device reads: a long prompt takes time before the answer.
    local_prefill_tokens_per_s: float = 150.0
    # The paper's per-call costs (simulator): local, and cloud by number of views (0: text).
    fixed_local: Cost | None = None
    fixed_cloud: tuple[Cost, ...] | None = None
    # Measured over expected cloud seconds (tmo_graph.costs.device): the endpoint as it is now.
    cloud_time_factor: float = 1.0

    def at(self, speeds: profiles.MeasuredSpeeds | None) -> CostModel:
        """This model at the measured ``speeds`` (itself when there are none, or when it is
        the simulator's fixed-cost model)."""
        if speeds is not None and not isinstance(speeds, profiles.MeasuredSpeeds):
            raise TmoGraphError(
                f"CostModel.at needs MeasuredSpeeds, got {type(speeds).__name__}",
                "pass LiveResources.measured_speeds() (or None for the configured speeds)",
            )
        if speeds is None or self.fixed_local is not None:
            return self
        return replace(
            self,
            local_tokens_per_s=speeds.local_tokens_per_s,
            local_prefill_tokens_per_s=speeds.local_prefill_tokens_per_s,
            cloud_time_factor=speeds.cloud_time_factor,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> CostModel:
        """The cost model of ``settings`` (cached on the values it reads, so it is cheap)."""
        if not isinstance(settings, Settings):
            raise TmoGraphError(
                f"CostModel.from_settings needs Settings, got {type(settings).__name__}",
                "pass tmo_graph.settings.load_settings(...) or Settings()",
            )
        # Every field of each row, by name (the audio ones too): (name, ((field, value), ...)).
        extra = tuple(
            sorted((name, tuple(row.model_dump().items())) for name, row in settings.prices.items())
        )
        return _from_values(
            settings.local.tokens_per_s,
            settings.local.max_new_tokens,
            settings.device.profile,
            settings.device.usd_per_kwh,
            settings.cloud.network,
            settings.cloud.max_tokens,
            settings.cloud.tokens_per_s,
            settings.cloud.price_as,
            extra,
            settings.cloud.image_detail,
            settings.cloud.image_max_side,
            settings.local.prefill_tokens_per_s,
        )

    @classmethod
    def paper(
        cls,
        device: str,
        network: str,
        n_views: int,
        settings: Settings | None = None,
    ) -> CostModel:
        """The simulator's cost model: the published code's per-call latency and price.

        ``settings`` (default: built-in) supplies only what the paper's tables do not use
        (prices of the live model, for :meth:`cloud_call_usd`). ``n_views``: the camera
        views; audio clips are priced per call by :meth:`expected` (its ``audio_s``).
        """
        if n_views < 0:
            raise TmoGraphError(f"n_views must be >= 0, got {n_views}", "count the views")
        profile = profiles.device(device)
        net = profiles.network(network)
        base = cls.from_settings(settings or Settings())
        fixed_local = Cost(profiles.local_time_s(profile), profiles.local_cost_usd(profile))
        fixed_cloud = tuple(
            Cost(profiles.cloud_time_s(net, k), profiles.cloud_cost_usd(k))
            for k in range(n_views + 1)
        )
        return cls(
            local_tokens_per_s=base.local_tokens_per_s,
            local_max_new_tokens=base.local_max_new_tokens,
            device_power_w=profile.power_w,
            usd_per_kwh=profiles.PAPER_USD_PER_KWH,
            network=net,
            cloud_max_tokens=base.cloud_max_tokens,
            cloud_tokens_per_s=base.cloud_tokens_per_s,
            price=base.price,
            fixed_local=fixed_local,
            fixed_cloud=fixed_cloud,
        )

    @property
    def tokens_per_image(self) -> int:
        """Input tokens billed per low-detail image by the priced cloud model."""
        return self.price.tokens_per_image

    @property
    def hears(self) -> bool:
        """Whether the priced cloud model takes audio input (its row has an audio price)."""
        return self.price.input_audio_per_mtok is not None

    def audio_tokens(self, seconds: float) -> int:
        """Input tokens (at the text input price) of a clip of ``seconds`` as sent; 0 when
        the priced model takes no audio (the clip then goes as its transcript, in the text)."""
        return prices.audio_input_tokens(self.price, seconds)

    def image_tokens(self, width: int, height: int) -> int:
        """Input tokens of one image as sent (0 x 0: size unknown, billed as the largest)."""
        return prices.image_tokens(self.price, width, height, self.image_detail)

    def expected(
        self,
        action: Action,
        prompt_chars: int,
        local_tokens: int | None = None,
        cloud_tokens: int | None = None,
        audio_s: Mapping[str, float] | None = None,
    ) -> Cost:
        """What ``action`` is expected to cost before it runs.

        Local: reading the prompt, then ``local_tokens`` (default: the configured maximum) at
        the configured speeds, priced as device energy. Cloud: network latency for the views
        plus the answer's generation time; the prompt's estimated tokens, the images' tokens
        and an answer of ``cloud_tokens`` (default: the configured maximum) priced by the table.
        ``audio_s``: the seconds of each audio clip among the modalities (by name); a clip the
        action sends is priced as audio input (:meth:`audio_tokens`), not as an image.
        """
        if not isinstance(action, Action):
            raise TmoGraphError(f"expected an Action, got {action!r}", "use policy.base.Action")
        if prompt_chars < 0:
            raise TmoGraphError(f"prompt_chars must be >= 0, got {prompt_chars}", "count chars")
        if action.route == "local":
            if self.fixed_local is not None:
                return self.fixed_local
            tokens = self.local_max_new_tokens if local_tokens is None else local_tokens
            if tokens < 0:
                raise TmoGraphError(f"local_tokens must be >= 0, got {tokens}", "count tokens")
            seconds = self.local_seconds(int(prompt_chars * _TOKENS_PER_CHAR), tokens)
            return Cost(seconds, self.local_call_usd(seconds))
        k = len(action.views)
        if self.fixed_cloud is not None:
            # In the simulator, the paper's tables price the images; each clip sent adds
            # its upload and audio tokens (profiles.audio_clip_time_s / audio_clip_cost_usd).
            sent = [audio_s[v] for v in action.views if v in audio_s] if audio_s else []
            k -= len(sent)
            if k >= len(self.fixed_cloud):
                raise TmoGraphError(
                    f"action {action.label} sends {k} views; this cost model knows "
                    f"{len(self.fixed_cloud) - 1}",
                    "build it with CostModel.paper(..., n_views=<number of views>)",
                )
            if not sent:
                return self.fixed_cloud[k]
            return Cost(
                self.fixed_cloud[k].latency_s
                + sum(profiles.audio_clip_time_s(self.network, s) for s in sent),
                self.fixed_cloud[k].cost_usd + sum(profiles.audio_clip_cost_usd(s) for s in sent),
            )
        answer = self.cloud_max_tokens if cloud_tokens is None else cloud_tokens
        seconds = self.cloud_time_factor * self.cloud_seconds(k, answer)
        # At most image_max_side on the longest side: the largest an image is sent at.
        per_image = self.image_tokens(self.image_max_side, self.image_max_side)
        clips = [audio_s[v] for v in action.views if v in audio_s] if audio_s else []
        input_tokens = (
            int(prompt_chars * _TOKENS_PER_CHAR)
            + (k - len(clips)) * per_image
            + sum(self.audio_tokens(s) for s in clips)
        )
        return Cost(seconds, self.cloud_call_usd(input_tokens, answer))

    def cloud_seconds(self, k_views: int, answer_tokens: int) -> float:
        """What the network profile and the configured answer speed expect a cloud call
        with ``k_views`` views and ``answer_tokens`` answer tokens to take (before the
        measured :attr:`cloud_time_factor`)."""
        if k_views < 0 or answer_tokens < 0:
            raise TmoGraphError(
                f"views and answer tokens must be >= 0, got {k_views} / {answer_tokens}",
                "count the views sent and the answer's tokens",
            )
        return (
            profiles.cloud_time_s(self.network, k_views) + answer_tokens / self.cloud_tokens_per_s
        )

    def affordable(
        self,
        actions: Sequence[Action],
        budget: Budget,
        prompt_chars: int,
        audio_s: Mapping[str, float] | None = None,
    ) -> tuple[dict[Action, Cost], list[Action]]:
        """Split actions into those whose expected cost fits ``budget`` and those masked.

        The local answer is the last resort when the budget runs out (and answers "budget
        reached" when not even that fits): it is masked only in the live graph, when its full
        answer does not fit while a whole cloud answer does (a busy device goes to the cloud
        rather than overrun or answer in a few words). A live cloud call also fits when a
        shortened answer does (the cloud node shrinks ``max_tokens`` to what is left).
        """
        allowed: dict[Action, Cost] = {}
        masked: list[Action] = []
        for action in actions:
            cost = self.expected(action, prompt_chars, audio_s=audio_s)
            shortened = (
                action.route == "cloud"
                and self.fixed_cloud is None
                and self.expected(
                    action, prompt_chars, cloud_tokens=MIN_CLOUD_ANSWER_TOKENS, audio_s=audio_s
                ).fits(budget)
            )
            if action == LOCAL or cost.fits(budget) or shortened:
                allowed[action] = cost
            else:
                masked.append(action)
        local = allowed.get(LOCAL)
        if (
            local is not None
            and self.fixed_local is None
            and not local.fits(budget)
            and any(a.route == "cloud" and c.fits(budget) for a, c in allowed.items())
        ):
            del allowed[LOCAL]
            masked.insert(0, LOCAL)
        return allowed, masked

    # ---- Hard limits: what a call may cost at most, and the largest call that fits ----

    def cloud_input_tokens_at_most(
        self,
        texts: Sequence[str],
        image_sizes: Sequence[tuple[int, int]] = (),
        audio_seconds: Sequence[float] = (),
    ) -> int:
        """The most input tokens a request of ``texts`` (one per message), images of
        ``image_sizes`` and clips of ``audio_seconds`` (as sent) can be billed: a byte-level
        tokenizer makes at most one token of each UTF-8 byte, plus each message's framing
        and the reply's priming; clips at :meth:`audio_tokens` each."""
        text_tokens = sum(len(t.encode("utf-8")) + TOKENS_PER_MESSAGE for t in texts)
        images = sum(self.image_tokens(w, h) for w, h in image_sizes)
        clips = sum(self.audio_tokens(s) for s in audio_seconds)
        return text_tokens + REPLY_PRIMING_TOKENS + images + clips

    def answer_tokens_within(self, cost_usd: float, input_tokens: int, max_tokens: int) -> int:
        """The most answer tokens (up to ``max_tokens``) a cloud call with ``input_tokens``
        can ask for and still cost at most ``cost_usd``; 0 when even the input does not fit."""
        if max_tokens < 0 or input_tokens < 0:
            raise TmoGraphError("token counts must be >= 0", "pass counted tokens")
        if not cost_usd >= self.cloud_call_usd(input_tokens, 0):  # also refuses NaN
            return 0
        per_token = self.price.output_per_mtok / 1e6
        n = max_tokens
        if per_token > 0:
            left = cost_usd - self.cloud_call_usd(input_tokens, 0)
            n = min(max_tokens, math.floor(left / per_token) + 1)
        while n > 0 and self.cloud_call_usd(input_tokens, n) > cost_usd:  # float rounding
            n -= 1
        return n

    def local_seconds(self, prompt_tokens: int, new_tokens: int) -> float:
        """Seconds the device needs at most to read ``prompt_tokens`` and write ``new_tokens``
        (at the configured speeds, which the device is expected to reach)."""
        return (
            prompt_tokens / self.local_prefill_tokens_per_s + new_tokens / self.local_tokens_per_s
        )

    def local_tokens_within(
        self, seconds: float, cost_usd: float, prompt_tokens: int, max_new_tokens: int
    ) -> int:
        """The most answer tokens (up to ``max_new_tokens``) the device can write after
        reading ``prompt_tokens`` within ``seconds`` and ``cost_usd`` of energy; 0: none."""
        if self.fixed_local is not None:  # the paper's fixed-cost answer: all or nothing
            fits = self.fixed_local.latency_s <= seconds and self.fixed_local.cost_usd <= cost_usd
            return max_new_tokens if fits else 0
        per_second = self.local_call_usd(1.0)
        if per_second > 0:
            seconds = min(seconds, cost_usd / per_second)
        left = seconds - prompt_tokens / self.local_prefill_tokens_per_s
        if not left > 0:
            return 0
        n = min(max_new_tokens, math.floor(left * self.local_tokens_per_s))
        while n > 0 and (
            self.local_seconds(prompt_tokens, n) > seconds
            or self.local_call_usd(self.local_seconds(prompt_tokens, n)) > cost_usd
        ):
            n -= 1
        return max(n, 0)

    def cloud_call_usd(self, input_tokens: int, output_tokens: int) -> float:
        """USD for one cloud call from its reported token usage (image tokens are input)."""
        if input_tokens < 0 or output_tokens < 0:
            raise TmoGraphError(
                f"token counts must be >= 0, got {input_tokens} in / {output_tokens} out",
                "pass the usage the cloud reported",
            )
        return prices.cloud_call_cost_usd(self.price, input_tokens, output_tokens)

    def local_call_usd(self, seconds: float) -> float:
        """USD of device energy for ``seconds`` of local inference."""
        if seconds < 0:
            raise TmoGraphError(f"seconds must be >= 0, got {seconds}", "pass a measured time")
        return prices.local_energy_cost_usd(seconds, self.device_power_w, self.usd_per_kwh)


@lru_cache(maxsize=64)
def _from_values(
    local_tokens_per_s: float,
    local_max_new_tokens: int,
    device_profile: str,
    usd_per_kwh: float,
    network: str,
    cloud_max_tokens: int,
    cloud_tokens_per_s: float,
    price_as: str,
    extra_prices: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...],
    image_detail: str,
    image_max_side: int,
    local_prefill_tokens_per_s: float,
) -> CostModel:
    table = dict(prices.PRICES)
    for name, row in extra_prices:
        table[name] = prices.ModelPrice(**dict(row))
    return CostModel(
        local_tokens_per_s=local_tokens_per_s,
        local_max_new_tokens=local_max_new_tokens,
        device_power_w=profiles.device(device_profile).power_w,
        usd_per_kwh=usd_per_kwh,
        network=profiles.network(network),
        cloud_max_tokens=cloud_max_tokens,
        cloud_tokens_per_s=cloud_tokens_per_s,
        price=prices.price_for(price_as, table),
        image_detail=image_detail,
        image_max_side=image_max_side,
        local_prefill_tokens_per_s=local_prefill_tokens_per_s,
    )


def build_route_input(
    *,
    prompt: str,
    task: str,
    turn: int,
    candidates: Sequence[Candidate],
    history: Sequence[TurnRecord],
    budget_left: Budget,
    actions: Sequence[Action],
    cost_model: CostModel,
    prompt_chars: int,
    quality_gap: float | None = None,
    audio_s: Mapping[str, float] | None = None,
    device: Mapping[str, Any] | None = None,
) -> RouteInput:
    """The policy's view of one turn, with the budget mask: the one builder for the route
    node, the confidence check and the simulator (``tmo_graph.sim.routing``)."""
    if turn < 0:
        raise TmoGraphError(f"turn must be >= 0, got {turn}", "count turns from 0")
    allowed, _ = cost_model.affordable(actions, budget_left, prompt_chars, audio_s)
    return RouteInput(
        prompt=prompt,
        task=task,
        turn=turn,
        candidates=candidates,
        history=history,
        budget_left=budget_left,
        allowed=allowed,
        quality_gap=quality_gap,
        device=device,
    )
