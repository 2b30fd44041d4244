"""The in-process search of the memory before the store (bench/recall_scale.py compares it
with Chroma's HNSW index) against Chroma's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tmo_graph.errors import TmoGraphError
from tmo_graph.memory import index as memory_index
from tmo_graph.memory.index import CANDIDATES
from tmo_graph.memory.turns import TurnMemory


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def _fill(memory: TurnMemory, vectors: np.ndarray, threads: int = 4, user: str = "u") -> None:
    for t in range(threads):
        rows = range(t, len(vectors), threads)
        memory.add(
            user_id=user,
            thread_id=f"t{t}",
            turns=list(rows),
            texts=[f"turn {i}" for i in rows],
            vectors=vectors[list(rows)].tolist(),
        )


def test_in_process_search_returns_what_chroma_returns(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = _unit(rng.normal(size=(120, 16)))
    mine = TurnMemory(tmp_path / "chroma")
    assert mine.search_by == "in-process"
    _fill(mine, vectors)
    chroma = TurnMemory(tmp_path / "chroma", search="chroma")
    for q in _unit(rng.normal(size=(10, 16))):
        for thread in (None, "t2"):
            a = mine.search(user_id="u", vector=q.tolist(), k=5, thread_id=thread)
            b = chroma.search(user_id="u", vector=q.tolist(), k=5, thread_id=thread)
            assert [(r["thread_id"], r["turn"], r["text"]) for r in a] == [
                (r["thread_id"], r["turn"], r["text"]) for r in b
            ]
            assert [r["score"] for r in a] == pytest.approx([r["score"] for r in b], abs=2e-3)
            if thread:
                assert {r["thread_id"] for r in a} == {thread}
    assert mine.search(user_id="u", vector=vectors[0].tolist(), k=3, min_score=0.999) == [
        {"text": "turn 0", "score": pytest.approx(1.0, abs=1e-3), "thread_id": "t0", "turn": 0}
    ]
    assert mine.search(user_id="someone else", vector=vectors[0].tolist(), k=3) == []


def test_the_copy_follows_adds_overwrites_and_forgets(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    vectors = _unit(rng.normal(size=(40, 8)))
    memory = TurnMemory(tmp_path / "chroma")
    _fill(memory, vectors[:20], threads=2)
    assert memory.search(user_id="u", vector=vectors[3].tolist(), k=1)[0]["turn"] == 3
    # Another TurnMemory on the same folder shares the copy: it sees what this one adds.
    other = TurnMemory(tmp_path / "chroma")
    memory.add(
        user_id="u", thread_id="t9", turns=[99], texts=["new"], vectors=[vectors[30].tolist()]
    )
    assert other.search(user_id="u", vector=vectors[30].tolist(), k=1)[0]["text"] == "new"
    memory.add(  # the same (thread, turn) again: overwritten, not added twice
        user_id="u", thread_id="t9", turns=[99], texts=["newer"], vectors=[vectors[31].tolist()]
    )
    found = other.search(user_id="u", vector=vectors[31].tolist(), k=2)
    assert found[0]["text"] == "newer" and found[1]["text"] != "newer"
    other.forget_thread(user_id="u", thread_id="t1")
    left = memory.search(user_id="u", vector=vectors[1].tolist(), k=30)
    assert len(left) == 11 and {r["thread_id"] for r in left} == {"t0", "t9"}
    assert memory.count("u") == 11
    # A new process loads the copy from Chroma: the same answers.
    memory_index._TABLES.clear()
    again = memory.search(user_id="u", vector=vectors[1].tolist(), k=30)
    assert [(r["thread_id"], r["turn"]) for r in again] == [
        (r["thread_id"], r["turn"]) for r in left
    ]


def test_a_rare_turn_among_many_alike_is_found(tmp_path: Path) -> None:
    """Thousands of near-duplicates in a few tight clusters and one unlike them: a question
    about that one finds it (Chroma's HNSW index can miss such a turn)."""
    rng = np.random.default_rng(3)
    dim = 96
    centres = _unit(rng.normal(size=(6, dim)))
    rows = centres[rng.integers(0, 6, 3000)] + rng.normal(0, 0.03, (3000, dim))
    facts = _unit(rng.normal(size=(10, dim)))
    vectors = _unit(np.concatenate([rows, facts]))
    memory = TurnMemory(tmp_path / "chroma")
    _fill(memory, vectors, threads=10)
    assert len(vectors) > CANDIDATES
    for i, fact in enumerate(facts):
        question = _unit(fact + rng.normal(0, 0.6 / np.sqrt(dim), dim))  # cosine about 0.85
        found = memory.search(user_id="u", vector=question.tolist(), k=5)
        assert found[0]["turn"] == 3000 + i == int(np.argmax(vectors @ question))
        # Within its dialogue (301 turns: more than CANDIDATES, so sign bits first there too).
        thread = f"t{(3000 + i) % 10}"
        found = memory.search(user_id="u", vector=question.tolist(), k=5, thread_id=thread)
        assert found[0]["turn"] == 3000 + i and {r["thread_id"] for r in found} == {thread}


def test_bad_queries(tmp_path: Path) -> None:
    with pytest.raises(TmoGraphError, match="memory.search 'exact' is unknown"):
        TurnMemory(tmp_path / "m", search="exact")  # type: ignore[arg-type]
    memory = TurnMemory(tmp_path / "m2")
    memory.add(user_id="u", thread_id="t", turns=[0], texts=["a"], vectors=[[1.0, 0.0, 0.0]])
    with pytest.raises(TmoGraphError, match="3-dimensional vectors, got a 2-dimensional query"):
        memory.search(user_id="u", vector=[1.0, 0.0], k=1)
