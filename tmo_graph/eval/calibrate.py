"""Pick the escalation threshold from a prompt set, as RouteLLM calibrates its routers.

The threshold means: "escalate a local answer to the cloud when the local model's confidence
in it is below this". Given the confidences the local model reaches on prompts like yours,
the threshold for a target cloud rate r is the r-quantile of those confidences: about a
share r of such prompts then go to the cloud.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tmo_graph.context import DEFAULT_SYSTEM_PROMPT
from tmo_graph.errors import TmoGraphError
from tmo_graph.models.base import LocalBackend
from tmo_graph.policy.confidence import confidence

if TYPE_CHECKING:
    from tmo_graph.settings import Settings


def load_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line) or a JSONL file (``{"text": ...}`` per line)."""
    path = Path(path)
    if not path.is_file():
        raise TmoGraphError(f"prompt file {path} does not exist", "one prompt per line")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if path.suffix == ".jsonl":
            try:
                line = str(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise TmoGraphError(
                    f"{path}:{number} is not a JSON object with `text`", '{"text": "..."}'
                ) from None
        prompts.append(line)
    if len(prompts) < 2:
        raise TmoGraphError(f"{path} has fewer than 2 prompts", "give a representative set")
    return prompts


def local_confidences(
    prompts: Sequence[str],
    local: LocalBackend,
    progress: Callable[[int, int], None] = lambda done, total: None,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
) -> list[float]:
    """The graph's confidence in the local model's answer to each prompt."""
    if not system_prompt.strip():
        raise TmoGraphError("the system prompt is empty", "leave it out for the default")
    out = []
    for i, prompt in enumerate(prompts):
        messages = [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": prompt},
        ]
        text, stats = local.answer(messages)
        out.append(confidence(stats.logprobs, stats.entropies, text)[0])
        progress(i + 1, len(prompts))
    return out


def threshold_for_cloud_rate(confidences: Sequence[float], rate: float) -> float:
    """The threshold below which a share ``rate`` of these confidences falls."""
    if not 0.0 <= rate <= 1.0:
        raise TmoGraphError(f"target cloud rate {rate} is not in [0, 1]", "e.g. 0.3")
    if not confidences:
        raise TmoGraphError("no confidences to calibrate on", "give a prompt set")
    ordered = np.sort(np.asarray(confidences, dtype=float))
    k = int(round(rate * len(ordered)))
    if k == 0:
        return 0.0
    if k >= len(ordered):
        return 1.0
    # Midway between the k-th and (k+1)-th confidence: exactly k prompts fall below it.
    return float(np.clip((ordered[k - 1] + ordered[k]) / 2, 0.0, 1.0))


def cloud_rate(confidences: Sequence[float], threshold: float) -> float:
    """Share of answers that would escalate at ``threshold``."""
    return float(np.mean(np.asarray(confidences) < threshold)) if confidences else 0.0


# Share of M4A1's recorded cloud answers that score above the median local answer
# (152 of 182): how often an escalated answer is "good" in the confidence's own sense.
M4A1_CLOUD_GOOD_SHARE = 0.835


def expected_quality(
    confidences: Sequence[float], threshold: float, cloud_good: float = M4A1_CLOUD_GOOD_SHARE
) -> float:
    """Expected share of good answers at ``threshold``.

    A kept local answer is good with probability equal to its confidence (the confidence is
    the estimated probability that the answer beats the median local answer); an escalated
    one with probability ``cloud_good``.
    """
    if not confidences:
        raise TmoGraphError("no confidences to estimate quality on", "give a prompt set")
    values = np.asarray(confidences, dtype=float)
    return float(np.mean(np.where(values < threshold, cloud_good, values)))


def threshold_for_quality(
    confidences: Sequence[float], target: float, cloud_good: float = M4A1_CLOUD_GOOD_SHARE
) -> float:
    """The threshold with the lowest cloud rate whose expected quality reaches ``target``.

    Escalating the least confident answers first is the cheapest way to raise quality; when
    even escalating every answer that gains from it falls short, the error says how far.
    """
    if not 0.0 <= target <= 1.0:
        raise TmoGraphError(f"target quality {target} is not in [0, 1]", "e.g. 0.7")
    if not 0.0 <= cloud_good <= 1.0:
        raise TmoGraphError(f"cloud quality {cloud_good} is not in [0, 1]", "e.g. 0.835")
    if not confidences:
        raise TmoGraphError("no confidences to calibrate on", "give a prompt set")
    # Escalating the k least confident answers: k cloud answers plus the n - k most confident.
    ordered = np.sort(np.asarray(confidences, dtype=float))
    n = len(ordered)
    kept = np.concatenate([np.cumsum(ordered[::-1])[::-1], [0.0]])  # kept[k] = sum(ordered[k:])
    quality = (np.arange(n + 1) * cloud_good + kept) / n
    for k in np.flatnonzero(quality >= target):
        threshold = threshold_for_cloud_rate(confidences, k / n)
        # Tied confidences escalate together: check what the threshold really does.
        if expected_quality(confidences, threshold, cloud_good) >= target:
            return threshold
    # The most it can reach: escalate exactly the answers less likely good than a cloud one.
    best = expected_quality(confidences, np.nextafter(cloud_good, 2.0), cloud_good)
    raise TmoGraphError(
        f"target quality {target:.2f} is out of reach on these prompts (at most {best:.2f})",
        "lower --target-quality, or raise --cloud-quality if your cloud model is better",
    )


@dataclass(frozen=True)
class Calibration:
    """A threshold picked on a prompt set, with what it does on that set."""

    prompts: list[str]
    confidences: list[float]
    threshold: float
    target: str  # e.g. "target cloud rate 30%", for the summary line
    cloud_good: float

    @property
    def cloud_rate(self) -> float:
        return cloud_rate(self.confidences, self.threshold)


def calibrate(
    prompts: str | Path,
    settings: Settings,
    target_cloud_rate: float = 0.3,
    target_quality: float | None = None,
    cloud_good: float = M4A1_CLOUD_GOOD_SHARE,
    progress: Callable[[int, int], None] = lambda done, total: None,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
) -> Calibration:
    """``tmo-graph calibrate``: answer the prompts locally and pick the threshold for a
    target cloud rate or, with ``target_quality``, for a target expected quality."""
    from tmo_graph.models.local.model import configured_local_model

    if target_quality is None and not 0.0 <= target_cloud_rate <= 1.0:  # before the model loads
        raise TmoGraphError(f"target cloud rate {target_cloud_rate} is not in [0, 1]", "e.g. 0.3")
    if target_quality is not None and not 0.0 <= target_quality <= 1.0:
        raise TmoGraphError(f"target quality {target_quality} is not in [0, 1]", "e.g. 0.7")
    if not 0.0 <= cloud_good <= 1.0:
        raise TmoGraphError(f"cloud quality {cloud_good} is not in [0, 1]", "e.g. 0.835")
    texts = load_prompts(prompts)
    local = configured_local_model(settings)
    values = local_confidences(texts, local, progress, system_prompt)
    if target_quality is None:
        threshold = threshold_for_cloud_rate(values, target_cloud_rate)
        target = f"target cloud rate {target_cloud_rate:.0%}"
    else:
        threshold = threshold_for_quality(values, target_quality, cloud_good)
        target = f"target quality {target_quality:.0%}"
    return Calibration(texts, values, threshold, target, cloud_good)


def write_config(settings: Settings, threshold: float, output: str | Path) -> Path:
    """``settings`` as YAML with ``routing.confidence_threshold`` set to ``threshold``."""
    import yaml

    if not 0.0 <= threshold <= 1.0:
        raise TmoGraphError(f"threshold {threshold} is not in [0, 1]", "calibrate again")
    raw = settings.model_dump(mode="json")
    raw["routing"]["confidence_threshold"] = round(threshold, 4)
    output = Path(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(yaml.safe_dump(raw, sort_keys=False))
    except OSError as exc:
        raise TmoGraphError(
            f"cannot write {output} ({exc.strerror})", "pass a writable path to -o"
        ) from None
    return output


def summary(result: Calibration, output: str | Path) -> str:
    """One line: the threshold, what it escalates, and where it was written."""
    return (
        f"confidence_threshold = {result.threshold:.4f}: escalates {result.cloud_rate:.0%} of "
        f"these {len(result.confidences)} prompts ({result.target}); wrote {output}"
    )


def report(
    result: Calibration, settings: Settings, system_prompt: str = DEFAULT_SYSTEM_PROMPT
) -> str:
    """Cloud rate, expected cloud cost and quality on the set, and the confidence quantiles."""
    from tmo_graph.policy.base import Action
    from tmo_graph.policy.budget import CostModel

    values, threshold, good = result.confidences, result.threshold, result.cloud_good
    prices = CostModel.from_settings(settings)
    escalated = [t for t, v in zip(result.prompts, values, strict=True) if v < threshold]
    usd = sum(
        prices.expected(Action("cloud"), len(system_prompt) + len(t)).cost_usd for t in escalated
    )
    quality = expected_quality(values, threshold, good)
    q = np.quantile(values, [0.1, 0.25, 0.5, 0.75, 0.9])
    return (
        f"cloud rate {result.cloud_rate:.1%} ({len(escalated)}/{len(values)}); cloud cost on the "
        f"set ~${usd:.5f} (${usd / len(values):.6f} a prompt, text-only calls priced as "
        f"{settings.cloud.price_as}); expected good answers {quality:.1%} "
        f"(all local {expected_quality(values, 0.0, good):.1%}, "
        f"cloud answers good {good:.0%} of the time)\n"
        "confidence quantiles 10/25/50/75/90 %: " + " ".join(f"{v:.3f}" for v in q)
    )
