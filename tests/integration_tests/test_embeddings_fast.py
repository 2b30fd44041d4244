"""The fast embedding backend against sentence-transformers, on the real MiniLM folder."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tmo_graph.models.embeddings import BertEmbeddings, local_embeddings, native_bfloat16

TEXTS = [
    "How long do I boil an egg?",
    "Hi",
    "",
    "Ünïcödé — 東京 🍅 and a tab\there",
    "User: The garage code is 4471.\nAssistant: Got it, I'll remember that.",
    # Longer than the folder's 256-token limit: both sides cut it the same way.
    "User: " + "what should I cook tonight with tomatoes, basil and rice? " * 40,
]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    st = local_embeddings(backend="sentence-transformers")
    return np.asarray(st.embed_documents(TEXTS))


@pytest.mark.parametrize("dtype,min_cos", [("float32", 0.99999), ("auto", 0.999)])
def test_fast_backend_matches_sentence_transformers(
    reference: np.ndarray, dtype: str, min_cos: float
) -> None:
    fast = local_embeddings(dtype=dtype)  # type: ignore[arg-type]
    assert isinstance(fast, BertEmbeddings)
    batch = np.asarray(fast.embed_documents(TEXTS))
    one_by_one = np.asarray([fast.embed_query(t) for t in TEXTS])
    for vectors in (batch, one_by_one):
        assert vectors.shape == reference.shape
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        cosines = (vectors * reference).sum(axis=1)
        assert cosines.min() >= min_cos, cosines
    # Padding in a batch changes nothing: a text's vector does not depend on its neighbours.
    assert (batch * one_by_one).sum(axis=1).min() >= 0.9999
    assert fast.embed_documents([]) == []


def test_auto_dtype_follows_the_cpu() -> None:
    fast = local_embeddings()
    assert isinstance(fast, BertEmbeddings)
    assert fast.dtype_name == ("bfloat16" if native_bfloat16() else "float32")
    assert local_embeddings() is fast  # one per process and choice
    assert local_embeddings(threads=0) is not fast


def test_the_worker_thread_keeps_its_torch_threads_to_itself() -> None:
    import torch

    before = torch.get_num_threads()
    fast = BertEmbeddings(local_embeddings().folder, threads=1)  # type: ignore[attr-defined]
    fast.embed_query("warm up the worker")
    seen: dict[str, int] = {}

    def worker_count() -> int:
        return torch.get_num_threads()

    seen["worker"] = fast._run(worker_count)
    seen["caller"] = torch.get_num_threads()
    thread = threading.Thread(target=lambda: seen.update(new=torch.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == {"worker": 1, "caller": before, "new": before}
