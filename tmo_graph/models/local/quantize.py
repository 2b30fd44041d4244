"""4-bit weights for the on-device model, read exactly from a Q4_1 GGUF's grid.

The default local model comes from a Q4_1 GGUF: every weight of its linear layers is
``scale * q + min`` with ``q`` in 0..15 and one ``scale, min`` per group of 32 inputs. Taking
each group's min and max back out of the dequantised float32 weights finds the same codes, so
:class:`Int4Linear` stores the GGUF's own 4-bit weights again (a Q4_0 GGUF's grid is found
the same way; weights on no 4-bit grid are rounded to one, and ``max_error`` says by how much).
The matrix products then run in PyTorch's int4 weight-only CPU kernel, which reads 0.625
bytes per weight instead of 4 (decoding one token reads every weight once, so reading is what
takes the time). Reading a prompt is different: hundreds of tokens go through each weight at
once, computing is what takes the time, and there the int4 kernel is 2.6x slower than a dense
bfloat16 product (308 tokens through a 576 x 1536 layer: 1.66 ms against 0.63 ms; the two meet
at about 8 tokens). So each layer also keeps its weights as bfloat16 (for a GGUF's 4-bit
weights, the values the kernel computes with) for products over more than ``DENSE_ROWS``
tokens, for 2 bytes a weight more memory. That copy is kept in oneDNN's own blocked layout
(:func:`for_prompts`): laid out once at load, the product no longer reorders the weights on
every call (measured: a 300-token prompt read 9 % faster, the same values). Inputs to the
products are bfloat16; everything between them (residual stream, norms, attention, KV cache,
softmax) stays float32. The output layer, tied to the input embedding and stored as Q8_0 in
the GGUF, becomes int8 with one scale per output row, its largest logits recomputed in
float32 so the confidence check's log-probs stay float32's.

The decoder (:mod:`tmo_graph.models.local.engine`) builds its layers from these when it
loads with ``precision: int4``.
"""

from __future__ import annotations

import torch
from torch import nn

GROUP = 32  # inputs sharing one scale and minimum, as in GGUF's Q4_0 / Q4_1 blocks
REFINE_CHUNK = 128  # output-layer rows refined at a time (bounds the gathered weights)
DENSE_ROWS = 8  # above this many tokens at once, the dense bfloat16 product is the faster
REFINE = 64  # output-layer logits recomputed in float32 per row (the largest ones)
PROMPT_ROWS = 300  # the prompt length oneDNN's weight layout is chosen for (any length works)


def for_prompts(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (bfloat16, out x in) laid out for oneDNN's matrix product, read by
    :func:`prompt_product`; as it is where PyTorch was built without oneDNN."""
    if torch.backends.mkldnn.is_available():
        try:
            return torch.ops.mkldnn._reorder_linear_weight(weight, PROMPT_ROWS)
        except (RuntimeError, AttributeError):  # an unsupported CPU or build: the plain product
            pass
    return weight


def prompt_product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for a weight from :func:`for_prompts`."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
    return nn.functional.linear(x, weight)


def plain(weight: torch.Tensor) -> torch.Tensor:
    """A weight from :func:`for_prompts` as an ordinary tensor again (to be saved)."""
    return weight.to_dense() if weight.is_mkldnn else weight


class Int4Linear(nn.Module):
    """A bias-free linear layer with 4-bit weights in groups of ``GROUP`` inputs.

    ``native=False``: the weights packed for PyTorch's int4 kernel. ``native=True``: packed
    for the decoder's compiled step (:mod:`tmo_graph.models.local.native`): per group 16
    bytes (weight j in the low nibble of byte j, weight j + 16 in the high one), and the
    group's step and minimum in float16 (exact for a GGUF's Q4_1 weights: it stores them so);
    this layer then computes through the dense copy.
    """

    prompt_weight: torch.Tensor
    nibbles: torch.Tensor
    step: torch.Tensor
    low: torch.Tensor
    compute_dtype = torch.bfloat16  # the products' inputs (outputs are the input's dtype)

    def __init__(self, weight: torch.Tensor, native: bool = False) -> None:
        super().__init__()
        w = weight.detach().float()
        n, k = w.shape
        groups = w.reshape(n, k // GROUP, GROUP)
        low, high = torch.aminmax(groups, dim=-1)
        step = (high - low) / 15
        step = torch.where(step > 0, step, torch.ones_like(step))  # a constant group
        scaled = (groups - low[..., None]).div_(step[..., None])  # in 0..15
        codes = scaled.round()
        # How far a weight moves: 0.0 when the weights already sat on this 4-bit grid.
        self.max_error = float((scaled.sub_(codes).abs_().amax(-1) * step).max())
        self.out_features = n
        self.native = native
        if native:
            q = codes.to(torch.uint8)
            self.register_buffer("nibbles", (q[..., :16] | (q[..., 16:] << 4)).reshape(n, k // 2))
            # float16, as the GGUF stores them: its steps and minimums are float16 values.
            step16, low16 = step.to(torch.float16), low.to(torch.float16)
            grid = codes * step16.float()[..., None] + low16.float()[..., None]
            self.max_error = max(self.max_error, float((grid - groups).abs().max()))
            self.register_buffer("step", step16.contiguous())
            self.register_buffer("low", low16.contiguous())
        else:
            codes_2d = codes.reshape(n, k).to(torch.int32)
            self.register_buffer(
                "packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes_2d, 1)
            )
            # The kernel computes (q - 8) * scale + zero: zero = min + 8 * scale.
            scales_zeros = torch.stack([step.t(), (low + 8 * step).t()], dim=-1)
            scales_zeros = scales_zeros.contiguous().to(torch.bfloat16)
            self.register_buffer("scales_zeros", scales_zeros)
        # For long inputs: the weights in bfloat16 (on a 4-bit grid, the kernel's own values up
        # to bfloat16's rounding). Not a buffer: a decoding step never reads it, and
        # weight_bytes_per_token counts buffers.
        self.prompt_weight = for_prompts(w.to(torch.bfloat16))

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything this layer holds, to be saved and given to :meth:`restore`."""
        return {**dict(self.named_buffers()), "dense": plain(self.prompt_weight)}

    @classmethod
    def restore(cls, tensors: dict[str, torch.Tensor], max_error: float) -> Int4Linear:
        """The layer whose :meth:`tensors` these are, without packing the weights again."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.native = "nibbles" in tensors
        layer.max_error = max_error
        layer.prompt_weight = for_prompts(tensors["dense"])
        layer.out_features = int(tensors["dense"].shape[0])
        for name, tensor in tensors.items():
            if name != "dense":
                layer.register_buffer(name, tensor)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        if self.native or flat.shape[0] > DENSE_ROWS:
            y = prompt_product(flat, self.prompt_weight)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                flat, self.packed, GROUP, self.scales_zeros
            )
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class Int8Head(nn.Module):
    """The output layer: int8 weights with one scale per output row (vocabulary entry).

    The int8 product gives bfloat16 logits, whose rounding (0.125 at a logit of 20) would move
    the log-probs and entropies of the confidence check by up to a few hundredths; so the
    ``refine`` largest logits of each row are recomputed in float32 from the original float
    weights (for a tied model, the input embedding: no extra memory), which carry almost all
    of the probability mass. ``refine=0`` leaves the bfloat16 logits as they are.
    """

    codes: torch.Tensor
    scales: torch.Tensor

    def __init__(self, weight: torch.Tensor, refine: int = REFINE) -> None:
        super().__init__()
        w = weight.detach()
        low, high = torch.aminmax(w.float(), dim=-1)
        scale = (torch.maximum(-low, high) / 127).clamp_min(torch.finfo(torch.float32).tiny)
        scaled = w.float() / scale[:, None]  # in -127..127
        codes = scaled.round()
        self.max_error = float((scaled.sub_(codes).abs_().amax(-1) * scale).max())
        self.out_features = w.shape[0]
        self.refine = min(refine, self.out_features)
        self.register_buffer("codes", codes.to(torch.int8))
        self.register_buffer("scales", scale.to(torch.bfloat16))
        self.exact = w  # not a buffer: shared with the embedding, read a few rows at a time

    @classmethod
    def restore(
        cls, codes: torch.Tensor, scales: torch.Tensor, exact: torch.Tensor, max_error: float
    ) -> Int8Head:
        """The head saved as ``codes`` and ``scales`` (its buffers), without quantizing."""
        head = cls.__new__(cls)
        nn.Module.__init__(head)
        head.max_error = max_error
        head.out_features = int(codes.shape[0])
        head.refine = min(REFINE, head.out_features)
        head.register_buffer("codes", codes)
        head.register_buffer("scales", scales)
        head.exact = exact
        return head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        logits = torch.ops.aten._weight_int8pack_mm(
            flat.to(torch.bfloat16), self.codes, self.scales
        ).float()
        return self.refined(logits, flat).reshape(*x.shape[:-1], self.out_features)

    def refined(self, logits: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """``logits`` (rows, vocabulary) of the inputs ``flat`` (rows, hidden) with each row's
        ``refine`` largest recomputed in float32, in place."""
        if self.refine:
            for rows in range(0, flat.shape[0], REFINE_CHUNK):
                part = logits[rows : rows + REFINE_CHUNK]
                top = part.topk(self.refine, dim=-1).indices  # (rows, refine)
                weights = self.exact[top].to(torch.float32)  # (rows, refine, hidden)
                inputs = flat[rows : rows + REFINE_CHUNK].to(torch.float32)
                part.scatter_(-1, top, torch.bmm(weights, inputs[:, :, None])[:, :, 0])
        return logits
