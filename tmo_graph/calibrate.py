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
