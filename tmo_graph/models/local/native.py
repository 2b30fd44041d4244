"""The decoder's compiled step: one call per token instead of a PyTorch operation at a time.

``native/decode_step.c`` does one decoding step of the 4-bit model (all layers and the
output layer) in C with OpenMP; :func:`load_step` compiles it once per machine and source
(about a second with the system's C compiler, cached next to the converted models) and
:class:`NativeStep` calls it through ctypes with pointers into the decoder's own tensors, the
key/value cache included. Without a C compiler the decoder keeps its PyTorch step (about
half the speed) and says so once in the log. The same library holds the causal attention of
a prompt's tokens (:meth:`NativeStep.attend`), which the decoder's prompt path calls between
PyTorch's matrix products.

Why: for a 135M-parameter model on 2 cores, a step through PyTorch spends about 4 ms in
Python and dispatch around 6 ms of products (profiled: 1,500 operations a token); llama.cpp's
whole step takes under 7 ms.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
SOURCE = "decode_step.c"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-lm"]
_Ptr = ctypes.c_void_p


class _Q4(ctypes.Structure):
    _fields_ = [
        ("rows", ctypes.c_int64),
        ("cols", ctypes.c_int64),
        ("nibbles", _Ptr),
        ("step", _Ptr),
        ("low", _Ptr),
    ]


class _Layer(ctypes.Structure):
    _fields_ = [
        ("attn_norm", _Ptr),
        ("mlp_norm", _Ptr),
        ("qkv", _Q4),
        ("out", _Q4),
        ("gate_up", _Q4),
        ("down", _Q4),
    ]


class _Model(ctypes.Structure):
    _fields_ = [
        ("layers", ctypes.c_int64),
        ("hidden", ctypes.c_int64),
        ("heads", ctypes.c_int64),
        ("kv_heads", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("intermediate", ctypes.c_int64),
        ("vocab", ctypes.c_int64),
        ("eps", ctypes.c_float),
        ("embed", _Ptr),
        ("final_norm", _Ptr),
        ("head_codes", _Ptr),
        ("head_scale", _Ptr),
        ("layer", ctypes.POINTER(_Layer)),
    ]


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def load_step(cache_dir: Path) -> ctypes.CDLL | None:
    """The compiled step (built on first use into ``cache_dir``), or None without a C
    compiler (or if it fails to build: logged)."""
    source = resources.files("tmo_graph.models.local").joinpath("native", SOURCE).read_bytes()
    key = hashlib.sha256(source + " ".join(FLAGS).encode() + _cpu_flags().encode()).hexdigest()
    library = cache_dir / f"decode_step-{key[:16]}.so"
    if not library.is_file():
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            log.warning("no C compiler (cc, gcc): the local model decodes through PyTorch")
            return None
        cache_dir.mkdir(parents=True, exist_ok=True)
        log.info("compiling the local model's decoding step with %s (once) ...", compiler)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            src = Path(tmp) / SOURCE
            src.write_bytes(source)
            built = Path(tmp) / library.name
            done = subprocess.run(
                [compiler, *FLAGS, str(src), "-o", str(built)], capture_output=True, text=True
            )
            if done.returncode:
                log.warning(
                    "the local model's decoding step did not compile (%s); decoding through "
                    "PyTorch: %s",
                    compiler,
                    done.stderr.strip()[-500:],
                )
                return None
            os.replace(built, library)  # atomic: a concurrent loader sees all or nothing
    lib = ctypes.CDLL(str(library))
    lib.tmo_decode_step.restype = ctypes.c_int
    lib.tmo_prompt_attention.restype = ctypes.c_int
    return lib


def _ptr(tensor: torch.Tensor) -> int:
    if not tensor.is_contiguous():
        raise ValueError("the compiled step needs contiguous tensors")
    return int(tensor.data_ptr())


class NativeStep:
    """One decoding step of ``decoder`` through the compiled library."""

    def __init__(self, lib: ctypes.CDLL, decoder: Any) -> None:  # an engine.Decoder
        from tmo_graph.models.local.quantize import Int4Linear, Int8Head

        self.lib = lib
        self.decoder = decoder
        head = decoder.head
        if not isinstance(head, Int8Head):
            raise ValueError("the compiled step needs the int8 output layer")
        self.head = head
        self.head_scale = head.scales.float().contiguous()
        self.rotation = torch.view_as_real(decoder.rotations).contiguous()  # (positions, d/2, 2)

        def q4(layer: torch.nn.Module) -> _Q4:
            if not (isinstance(layer, Int4Linear) and layer.native):
                raise ValueError("the compiled step needs native int4 layers")
            rows, half = layer.nibbles.shape
            return _Q4(rows, 2 * half, _ptr(layer.nibbles), _ptr(layer.step), _ptr(layer.low))

        blocks = decoder.blocks
        self.layers = (_Layer * len(blocks))(
            *(
                _Layer(
                    _ptr(b.attn_norm),
                    _ptr(b.mlp_norm),
                    q4(b.qkv),
                    q4(b.out),
                    q4(b.gate_up),
                    q4(b.down),
                )
                for b in blocks
            )
        )
        self.model = _Model(
            len(blocks),
            decoder.hidden,
            decoder.heads,
            decoder.kv_heads,
            decoder.head_dim,
            decoder.intermediate,
            head.out_features,
            decoder.eps,
            _ptr(decoder.embed),
            _ptr(decoder.final_norm),
            _ptr(head.codes),
            _ptr(self.head_scale),
            ctypes.cast(self.layers, ctypes.POINTER(_Layer)),
        )

    def __call__(
        self, token: int, pos: int, keys: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        """The logits (1, vocabulary) after reading ``token`` at ``pos``; its key and value
        are written into the cache (layers, kv_heads, capacity, head_dim) at ``pos``."""
        d = self.decoder
        shared = torch.empty(  # per call: two dialogues may decode at once
            (2 * d.heads + 2 * d.kv_heads) * d.head_dim + d.hidden + d.intermediate
        )
        logits = torch.empty(1, self.head.out_features)
        hidden = torch.empty(1, d.hidden)
        self.lib.tmo_decode_step(
            ctypes.byref(self.model),
            ctypes.c_int64(token),
            ctypes.c_int64(pos),
            _Ptr(_ptr(self.rotation[pos])),
            _Ptr(_ptr(keys)),
            _Ptr(_ptr(values)),
            ctypes.c_int64(keys.shape[2]),
            _Ptr(_ptr(logits)),
            _Ptr(_ptr(hidden)),
            _Ptr(_ptr(shared)),
        )
        return self.head.refined(logits, hidden)

    def attend(
        self, qk: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int
    ) -> torch.Tensor:
        """Causal attention of a prompt's ``n`` queries, ``qk[:, :heads]`` of the rotated
        queries and keys (n, heads + kv_heads, head_dim), over one layer's cache ``keys``,
        ``values`` (kv_heads, capacity, head_dim) that already holds positions up to
        ``start + n``: (n, heads * head_dim)."""
        d = self.decoder
        n = int(qk.shape[0])
        out = torch.empty(n, d.heads * d.head_dim)
        failed = self.lib.tmo_prompt_attention(
            _Ptr(_ptr(qk)),
            ctypes.c_int64(int(qk.shape[1]) * d.head_dim),
            _Ptr(_ptr(keys)),
            _Ptr(_ptr(values)),
            ctypes.c_int64(keys.shape[1]),
            ctypes.c_int64(n),
            ctypes.c_int64(start),
            ctypes.c_int64(d.heads),
            ctypes.c_int64(d.kv_heads),
            ctypes.c_int64(d.head_dim),
            _Ptr(_ptr(out)),
        )
        if failed:
            raise MemoryError(f"no memory for the attention of a {n}-token prompt")
        return out
