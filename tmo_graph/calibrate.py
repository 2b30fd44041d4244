"""Pick the escalation threshold from a prompt set, as RouteLLM calibrates its routers.

The threshold means: "escalate a local answer to the cloud when the local model's confidence
in it is below this". Given the confidences the local model reaches on prompts like yours,
the threshold for a target cloud rate r is the r-quantile of those confidences: about a
share r of such prompts then go to the cloud.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tmo_graph.confidence import confidence
from tmo_graph.errors import TmoGraphError
from tmo_graph.prompts import SYSTEM_PROMPT
from tmo_graph.services import LocalBackend


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
) -> list[float]:
    """The graph's confidence in the local model's answer to each prompt."""
    out = []
    for i, prompt in enumerate(prompts):
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
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
