"""Sampling agreement: does the local model say the same thing when asked again?

An optional confidence estimator (SelfCheckGPT-style): draw ``k`` answers at a temperature
and measure how close they are, in meaning, to the answer given. A model that knows the
answer repeats it; one that guesses wanders. It costs ``k`` extra generations (one batch),
so the graph does not run it by default; `tmo-graph eval confidence --sampling K` measures it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from langchain_core.embeddings import Embeddings

from tmo_graph.errors import TmoGraphError


class Sampler(Protocol):
    """What sampling agreement needs of the local model: k answers at a temperature."""

    def sample(
        self,
        messages: list[dict[str, str]],
        n: int,
        temperature: float = 0.8,
        seed: int = 0,
        max_new_tokens: int = 48,
    ) -> list[str]: ...


def sampling_agreement(
    local: Sampler,
    messages: list[dict[str, str]],
    answer: str,
    embeddings: Embeddings,
    k: int = 3,
    seed: int = 0,
) -> float:
    """Mean cosine similarity between ``answer`` and ``k`` sampled answers, clipped to [0, 1]."""
    if k < 1:
        raise TmoGraphError(f"sampling agreement needs k >= 1 samples, got {k}", "use e.g. k=3")
    if not answer.strip():
        return 0.0
    samples = [s if s.strip() else "(no answer)" for s in local.sample(messages, k, seed=seed)]
    vectors = np.asarray(embeddings.embed_documents([answer, *samples]), dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1)
    norms[norms == 0] = 1.0
    unit = vectors / norms[:, None]
    return float(np.clip(unit[1:] @ unit[0], 0.0, 1.0).mean())
