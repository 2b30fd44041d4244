"""The on-device model's own decoder: a Llama forward pass written for one token at a time.

transformers' ``generate`` runs each decoding step through general modules: per layer about
fifty small tensor operations, a mask, a cache object and the logits processors' bookkeeping,
each costing a few microseconds of Python and dispatch. For a 135M-parameter model on 2 cores
that overhead was larger than the matrix products themselves (measured: 38 tokens/s through
``generate`` against about 90 here with the same int4 kernels). This module keeps only what
a step needs:

- the query, key and value projections as one product, the gate and up projections as one
  (one weight read, one kernel call instead of three and two);
- rotary embeddings as one complex multiply: the query and key rows are stored in the GGUF's
  interleaved order (the same permutation on both leaves attention unchanged);
- attention of one new token as two small batched products over the cache, no mask;
- a key/value cache per dialogue that is kept after the answer, so the next turn, whose
  prompt repeats the earlier one, reads only its new tokens (:class:`CachePool`).

With a C compiler on the machine, an int4 decoding step is one call into the compiled step
(:mod:`tmo_graph.models.local.native`: the PyTorch step above costs 12 ms a token, 4 of them
Python and dispatch; the compiled one 6). Prompts (several tokens at once) go through the
PyTorch code with each layer's dense bfloat16 weights, and their causal attention through the
compiled library too (:meth:`~tmo_graph.models.local.native.NativeStep.attend`: PyTorch's
fused kernel took a fifth of a 300-token prompt's time), else through PyTorch's.
The weights come straight from the converted folder's safetensors: no transformers model is
built to decode.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F  # noqa: N812 (PyTorch's own convention)

from tmo_graph.errors import TmoGraphError
from tmo_graph.models.local.quantize import GROUP, Int4Linear, Int8Head

log = logging.getLogger(__name__)
CACHE_CHUNK = 256  # cache capacity grows by this many positions (a copy per growth)
CACHE_SLOTS = 4  # dialogues whose caches are kept; the least recently used one is reused

# A logits processor in transformers' convention: (ids so far (1, n), scores (1, V)) -> scores.
Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DenseLinear(torch.nn.Module):
    """A bias-free linear layer in the weights' dtype (float32 or bfloat16), which is also
    its inputs' and outputs' (``compute_dtype``)."""

    weight: torch.Tensor

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().to(dtype).contiguous())
        self.out_features = int(weight.shape[0])
        self.compute_dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.compute_dtype), self.weight)


@dataclass
class Block:
    """One decoder layer's weights."""

    attn_norm: torch.Tensor
    qkv: torch.nn.Module
    out: torch.nn.Module
    mlp_norm: torch.Tensor
    gate_up: torch.nn.Module
    down: torch.nn.Module


@dataclass(eq=False)  # compared by identity: the pool removes this very cache
class KVCache:
    """Keys and values of every layer for the tokens in ``tokens``, in that order."""

    keys: torch.Tensor  # (layers, kv_heads, capacity, head_dim)
    values: torch.Tensor
    tokens: list[int] = field(default_factory=list)
    used: float = 0.0  # when it was last handed out (least recently used goes first)

    @property
    def capacity(self) -> int:
        return int(self.keys.shape[2])

    def fork(self, n: int) -> KVCache:
        """A new cache holding this one's first ``n`` tokens."""
        return KVCache(self.keys[:, :, :n].clone(), self.values[:, :, :n].clone(), self.tokens[:n])

    def reserve(self, positions: int) -> None:
        """Room for ``positions`` tokens (grown in chunks; the kept ones copied over)."""
        if positions <= self.capacity:
            return
        size = -(-positions // CACHE_CHUNK) * CACHE_CHUNK
        n = len(self.tokens)
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_empty((*old.shape[:2], size, old.shape[3]))  # only 0..n are read
            new[:, :, :n] = old[:, :, :n]
            setattr(self, name, new)


class CachePool:
    """Key/value caches of recent dialogues, handed out one caller at a time.

    A caller takes the cache whose tokens share the longest start with its prompt (the
    previous turn of the same dialogue: system prompt, earlier messages), keeps it while it
    decodes, and gives it back; concurrent callers never share one.
    """

    def __init__(self, make: Callable[[], KVCache], slots: int = CACHE_SLOTS) -> None:
        self._make = make
        self._free: list[KVCache] = []
        self._slots = slots
        self._lock = threading.Lock()

    def take(self, prompt: Sequence[int]) -> tuple[KVCache, int]:
        """A cache and how many of ``prompt``'s first tokens it already holds (at most all
        but the last: the last token's logits are needed).

        A kept cache sharing most of its tokens with the prompt is the same dialogue: it is
        taken and cut to the shared part. One sharing only a start (another dialogue with
        the same system prompt) is copied up to there while there is room for another
        cache, so that dialogue keeps its own."""
        with self._lock:
            shared = {id(c): _common_prefix(c.tokens, prompt) for c in self._free}
            best = max(self._free, key=lambda c: (shared[id(c)], c.used), default=None)
            room = len(self._free) < self._slots
            if best is None or not shared[id(best)]:  # no dialogue of this prompt is kept
                best = self._make() if room else min(self._free, key=lambda c: c.used)
            elif room and 2 * shared[id(best)] < len(best.tokens):
                best = best.fork(shared[id(best)])
            n = shared.get(id(best), len(best.tokens))
            if best in self._free:
                self._free.remove(best)
        best.used = time.monotonic()
        held = min(n, len(prompt) - 1)
        del best.tokens[held:]
        return best, held

    def clear(self) -> None:
        """Drop every kept cache (the next prompts are read whole)."""
        with self._lock:
            self._free.clear()

    def give_back(self, cache: KVCache) -> None:
        with self._lock:
            self._free.append(cache)
            if len(self._free) > self._slots:
                self._free.remove(min(self._free, key=lambda c: c.used))


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Decoder:
    """Greedy decoding of a Llama-architecture model (SmolLM2) from its weights."""

    def __init__(
        self,
        config: dict[str, Any],
        embed: torch.Tensor,
        blocks: list[Block],
        final_norm: torch.Tensor,
        head: torch.nn.Module,
    ) -> None:
        self.heads = int(config["num_attention_heads"])
        self.kv_heads = int(config["num_key_value_heads"])
        self.head_dim = int(
            config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        )
        self.hidden = int(config["hidden_size"])
        self.intermediate = int(config["intermediate_size"])
        self.eps = float(config["rms_norm_eps"])
        self.positions = int(config.get("max_position_embeddings") or 2048)
        theta = float(
            (config.get("rope_parameters") or {}).get("rope_theta")
            or config.get("rope_theta")
            or 10000.0
        )
        half = self.head_dim // 2
        inverse = 1.0 / theta ** (torch.arange(0, half, dtype=torch.float64) / half)
        angles = torch.outer(torch.arange(self.positions, dtype=torch.float64), inverse)
        self.rotations = torch.polar(torch.ones_like(angles), angles).to(torch.complex64)
        self.embed = embed
        self.blocks = blocks
        self.final_norm = final_norm
        self.head = head
        self.caches = CachePool(self._new_cache)
        # What the layers' products read (each layer casts its input; casting the norms'
        # output once saves them a copy).
        self.products = _input_dtype(blocks[0].qkv) if blocks else torch.float32
        self.native: Callable[[int, int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        # The compiled causal attention of a prompt (qk, keys, values, start) -> attended.
        self.prompt_attention: (
            Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor] | None
        ) = None

    def _new_cache(self) -> KVCache:
        shape = (len(self.blocks), self.kv_heads, 0, self.head_dim)
        return KVCache(torch.zeros(shape), torch.zeros(shape))

    def _norm(self, x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """RMS norm of ``x`` (float32) times ``weight``, in ``dtype`` (a product's input)."""
        return F.rms_norm(x, (self.hidden,), weight, self.eps).to(dtype)

    @torch.inference_mode()
    def forward(self, tokens: Sequence[int], cache: KVCache, logits_for: int = 1) -> torch.Tensor:
        """Read ``tokens`` after the cache's tokens; the logits of the last ``logits_for``
        positions, (logits_for, vocabulary) float32."""
        start, n = len(cache.tokens), len(tokens)
        if start + n > self.positions:
            raise TmoGraphError(
                f"{start + n} tokens do not fit the local model's {self.positions} positions",
                "cut the prompt first (LocalModel.fit_to_context)",
            )
        cache.reserve(start + n)
        if n == 1 and logits_for == 1 and self.native is not None:  # a decoding step
            logits = self.native(tokens[0], start, cache.keys, cache.values)
            cache.tokens.append(tokens[0])
            return logits
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        q_size, k_size = h * d, kv * d
        x = self.embed[torch.tensor(tokens)].float()  # (n, hidden)
        turn = self.rotations[start : start + n, None]  # (n, 1, head_dim / 2)
        end = start + n
        mask = None  # PyTorch's attention: new token i sees the cached tokens and 0..i
        if n > 1 and start and self.prompt_attention is None:
            mask = torch.ones(n, end, dtype=torch.bool).tril(start)
        for i, block in enumerate(self.blocks):
            qkv = block.qkv(self._norm(x, block.attn_norm, self.products)).float()
            qk = qkv[:, : q_size + k_size].reshape(n, h + kv, d // 2, 2)
            qk = torch.view_as_real(torch.view_as_complex(qk) * turn).reshape(n, h + kv, d)
            keys, values = cache.keys[i], cache.values[i]  # (kv, capacity, d)
            keys[:, start:end] = qk[:, h:].transpose(0, 1)
            values[:, start:end] = qkv[:, q_size + k_size :].reshape(n, kv, d).transpose(0, 1)
            if n == 1:  # one query per head: two small products, no mask
                q = qk[0, :h].reshape(kv, h // kv, d)
                weights = torch.softmax(q @ keys[:, :end].transpose(1, 2) * d**-0.5, dim=-1)
                attended = (weights @ values[:, :end]).reshape(1, q_size).to(self.products)
            elif self.prompt_attention is not None:
                attended = self.prompt_attention(qk, keys, values, start).to(self.products)
            else:
                attended = (
                    F.scaled_dot_product_attention(
                        qk[:, :h].transpose(0, 1)[None],
                        keys[None, :, :end],
                        values[None, :, :end],
                        attn_mask=mask,
                        is_causal=mask is None,  # a whole prompt: the kernel skips the future
                        enable_gqa=True,
                    )[0]
                    .transpose(0, 1)
                    .to(self.products, memory_format=torch.contiguous_format)  # one copy, not two
                    .view(n, q_size)
                )
            x += block.out(attended)  # float32 += the product's dtype: no float32 copy
            gate_up = block.gate_up(self._norm(x, block.mlp_norm, self.products))
            # silu(gate) * up in float32, in place; the down projection rounds it once.
            gate = F.silu(gate_up[:, : self.intermediate].float(), inplace=True)
            x += block.down(gate.mul_(gate_up[:, self.intermediate :]))
        cache.tokens.extend(tokens)
        last = self._norm(x[n - logits_for :], self.final_norm, torch.float32)
        return self.head(last).float()

    def generate(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        processors: Sequence[Processor] = (),
        end_token: int | None = None,
        max_time_s: float | None = None,
        on_prompt_read: Callable[[int], None] | None = None,
        choose: Callable[[torch.Tensor], int] | None = None,
    ) -> Generator[int, None, None]:
        """Tokens after ``prompt``, one at a time; the end token is yielded, then decoding
        stops. Each step's scores pass through ``processors`` (in order), then ``choose``
        picks the token (default: the arg-max). ``max_time_s`` stops once that many seconds
        have passed; ``on_prompt_read`` is told how many prompt tokens were read (the rest
        were in a cache)."""
        if not prompt:
            raise TmoGraphError("the local model got an empty prompt", "pass at least one token")
        start = time.perf_counter()
        cache, held = self.caches.take(prompt)
        try:
            logits = self.forward(prompt[held:], cache)
            if on_prompt_read is not None:
                on_prompt_read(len(prompt) - held)
            # The tokens so far, for the processors: one buffer filled as tokens come.
            seen = torch.empty((1, len(prompt) + max_new_tokens), dtype=torch.long)
            seen[0, : len(prompt)] = torch.tensor(prompt)
            n = len(prompt)
            for step in range(max_new_tokens):
                with torch.inference_mode():  # the processors change the scores in place
                    scores = logits
                    for process in processors:
                        scores = process(seen[:, :n], scores)
                    token = int(torch.argmax(scores[0])) if choose is None else choose(scores[0])
                yield token  # outside the block: the caller's code runs in its own mode
                seen[0, n] = token
                n += 1
                if token == end_token or step == max_new_tokens - 1:
                    break  # (the last token is never read back: nothing would use it)
                if max_time_s is not None and time.perf_counter() - start > max_time_s:
                    break
                logits = self.forward([token], cache)
        finally:
            self.caches.give_back(cache)

    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one decoding step reads: every layer's buffers (not the dense
        copies kept for prompts), the norms, the output layer and one embedding row."""
        total = self.embed[0].nbytes + self.final_norm.nbytes
        for module in [self.head, *(m for b in self.blocks for m in _modules(b))]:
            total += sum(t.nbytes for t in module.buffers())
        norms = sum(b.attn_norm.nbytes + b.mlp_norm.nbytes for b in self.blocks)
        return int(total + norms)

    def score(self, prompt: Sequence[int], answer: Sequence[int]) -> torch.Tensor:
        """Log-softmax of the predictions for each of ``answer``'s tokens after ``prompt``
        (teacher-forced, one pass), (len(answer), vocabulary)."""
        cache = self._new_cache()
        logits = self.forward([*prompt, *answer], cache, logits_for=len(answer) + 1)
        return torch.log_softmax(logits[:-1], dim=-1)


def _input_dtype(layer: torch.nn.Module) -> torch.dtype:
    """The dtype ``layer`` computes its product in (Int4Linear, DenseLinear: compute_dtype)."""
    dtype = getattr(layer, "compute_dtype", torch.float32)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def _modules(block: Block) -> list[torch.nn.Module]:
    return [block.qkv, block.out, block.gate_up, block.down]


def _interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a query/key projection from transformers' half-split rotary order to pairs."""
    rows, cols = weight.shape
    return weight.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def load_decoder(
    folder: Path, precision: str, native_dir: Path | None = None, cache_dir: Path | None = None
) -> Decoder:
    """A :class:`Decoder` for the converted model in ``folder`` (config.json and
    model.safetensors) in ``precision``: int4 (the GGUF's grid), bfloat16 or float32.

    int4 decodes through the compiled step (:mod:`.native`, built into ``native_dir``) when
    ``native_dir`` is given and a C compiler is there, else through PyTorch's int4 kernel.
    Packing the 4-bit weights takes seconds: with ``cache_dir`` the packed layers are saved
    there once and read back from then on (a file per model, precision and step).
    """
    from tmo_graph.models.local import native

    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise TmoGraphError(
            f"the local model in {folder} is a {config.get('model_type')!r} model",
            "use a Llama-architecture model (SmolLM2 is one)",
        )
    library = native.load_step(native_dir) if precision == "int4" and native_dir else None
    packed = None
    if precision == "int4" and cache_dir is not None:
        packed = _packed_file(folder, cache_dir, library is not None)
    if packed is not None and packed.is_file():
        decoder = _restore(folder, config, packed)
    else:
        if packed is not None:
            log.info("packing %s's 4-bit layers into %s (once per model) ...", folder.name, packed)
        decoder = _build(folder, config, precision, native=library is not None)
        if packed is not None:
            _save_packed(decoder, packed)
    if library is not None:
        step = native.NativeStep(library, decoder)
        decoder.native, decoder.prompt_attention = step, step.attend
    return decoder


LINEARS = ("qkv", "out", "gate_up", "down")
PACKED_FORMAT = 2  # bump when the saved layout changes: older files are then rebuilt


def _packed_file(folder: Path, cache_dir: Path, native: bool) -> Path:
    """Where the packed int4 layers of ``folder``'s weights are kept (keyed by the weights
    file's path, size and time, so a replaced model is packed again)."""
    import hashlib

    weights = (folder / "model.safetensors").resolve()
    stat = weights.stat()
    key = f"{weights}|{stat.st_size}|{stat.st_mtime_ns}|{native}|{PACKED_FORMAT}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"{folder.name}-int4{'-native' if native else ''}-{digest}.safetensors"


def _build(folder: Path, config: dict[str, Any], precision: str, native: bool) -> Decoder:
    from safetensors.torch import load_file

    weights = load_file(folder / "model.safetensors")
    heads, kv_heads = int(config["num_attention_heads"]), int(config["num_key_value_heads"])

    def linear(weight: torch.Tensor) -> torch.nn.Module:
        if precision == "int4" and weight.shape[1] % GROUP == 0:
            return Int4Linear(weight, native=native)
        return DenseLinear(weight, torch.bfloat16 if precision == "bfloat16" else torch.float32)

    blocks = []
    for i in range(int(config["num_hidden_layers"])):
        p = f"model.layers.{i}."
        attn, mlp = p + "self_attn.", p + "mlp."
        qkv = torch.cat(
            [
                _interleaved(weights[attn + "q_proj.weight"], heads),
                _interleaved(weights[attn + "k_proj.weight"], kv_heads),
                weights[attn + "v_proj.weight"],
            ]
        )
        gate_up = torch.cat([weights[mlp + "gate_proj.weight"], weights[mlp + "up_proj.weight"]])
        blocks.append(
            Block(
                attn_norm=weights[p + "input_layernorm.weight"].float(),
                qkv=linear(qkv),
                out=linear(weights[attn + "o_proj.weight"]),
                mlp_norm=weights[p + "post_attention_layernorm.weight"].float(),
                gate_up=linear(gate_up),
                down=linear(weights[mlp + "down_proj.weight"]),
            )
        )
    embed = weights["model.embed_tokens.weight"]
    head_weight = weights.get("lm_head.weight", embed)
    head: torch.nn.Module = Int8Head(head_weight) if precision == "int4" else linear(head_weight)
    return Decoder(config, embed, blocks, weights["model.norm.weight"].float(), head)


def _save_packed(decoder: Decoder, path: Path) -> None:
    """Save an int4 decoder's packed layers and output layer (written whole, then renamed)."""
    import os
    import tempfile

    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    errors: list[float] = []
    for i, block in enumerate(decoder.blocks):
        for name in LINEARS:
            layer = getattr(block, name)
            if not isinstance(layer, Int4Linear):  # inputs not in groups of 32: not packed
                return
            errors.append(layer.max_error)
            tensors.update({f"{i}.{name}.{k}": v for k, v in layer.tensors().items()})
    head = decoder.head
    if not isinstance(head, Int8Head):
        return
    tensors.update({"head.codes": head.codes, "head.scales": head.scales})
    tensors["max_error"] = torch.tensor([*errors, head.max_error])
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        pass
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp.name)
        os.replace(tmp.name, path)
    finally:
        Path(tmp.name).unlink(missing_ok=True)


def _restore(folder: Path, config: dict[str, Any], packed: Path) -> Decoder:
    """An int4 decoder from its packed file and the folder's embedding and norms."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    saved = load_file(packed)
    # A safetensors file gives tensors at any offset, and PyTorch's int8 and int4 kernels
    # crash on an unaligned one: those are copied into PyTorch's own (aligned) memory.
    for name, tensor in saved.items():
        if name.endswith((".codes", ".packed")):
            saved[name] = tensor.clone()
    errors = saved["max_error"].tolist()
    parts: dict[str, dict[str, torch.Tensor]] = {}  # "3.qkv" -> that layer's tensors
    for key, tensor in saved.items():
        layer, _, name = key.rpartition(".")
        parts.setdefault(layer, {})[name] = tensor
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        embed = weights.get_tensor("model.embed_tokens.weight")
        names = set(weights.keys())
        head_weight = weights.get_tensor("lm_head.weight") if "lm_head.weight" in names else embed
        final_norm = weights.get_tensor("model.norm.weight").float()
        blocks = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"model.layers.{i}."
            layers = {}
            for j, name in enumerate(LINEARS):
                layers[name] = Int4Linear.restore(
                    parts[f"{i}.{name}"], errors[i * len(LINEARS) + j]
                )
            blocks.append(
                Block(
                    attn_norm=weights.get_tensor(p + "input_layernorm.weight").float(),
                    mlp_norm=weights.get_tensor(p + "post_attention_layernorm.weight").float(),
                    **layers,
                )
            )
    head = Int8Head.restore(saved["head.codes"], saved["head.scales"], head_weight, errors[-1])
    return Decoder(config, embed, blocks, final_norm, head)
