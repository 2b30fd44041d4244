"""The int4 local-model path: 4-bit layers on a GGUF grid, the int8 output layer, a tiny model.

No real weights: a 4-bit grid built by hand and a two-layer Llama with random weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tmo_graph.errors import TmoGraphError
from tmo_graph.models.local.model import PRECISIONS, LocalModel

torch = pytest.importorskip("torch")
quantize = pytest.importorskip("tmo_graph.models.local.quantize")


def _grid_weight(n: int, k: int, seed: int) -> torch.Tensor:
    """Weights as a Q4_1 GGUF stores them: ``step * q + low`` per group of 32 inputs."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k // 32, 32), generator=gen).float()
    codes[..., 0], codes[..., 1] = 0, 15  # llama.cpp's Q4_1 maps each group's min and max
    step = torch.rand(n, k // 32, 1, generator=gen) * 0.01 + 0.001
    low = -torch.rand(n, k // 32, 1, generator=gen) * 0.08
    return (codes * step + low).reshape(n, k)


def test_int4_layer_finds_a_4bit_grid_exactly() -> None:
    weight = _grid_weight(96, 128, seed=0)
    layer = quantize.Int4Linear(weight)
    assert layer.max_error < 1e-6
    x = torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(1))
    y = layer(x)
    assert y.shape == (3, 5, 96) and y.dtype == torch.float32
    expected = x @ weight.t()
    # bfloat16 inputs and outputs of the product: a few parts in a thousand.
    assert float((y - expected).abs().max()) <= 0.01 * float(expected.abs().max())


def test_int4_layer_reports_how_far_off_grid_weights_move() -> None:
    weight = torch.randn(64, 64, generator=torch.Generator().manual_seed(2))
    layer = quantize.Int4Linear(weight)
    groups = weight.reshape(64, 2, 32)
    half_step = (groups.amax(-1) - groups.amin(-1)).max() / 30
    assert 0 < layer.max_error <= float(half_step) + 1e-6


def test_output_layer_refines_the_largest_logits_in_float32() -> None:
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(1000, 64, generator=gen)
    head = quantize.Int8Head(weight, refine=8)
    x = torch.randn(2, 64, generator=gen)
    logits, expected = head(x), x @ weight.t()
    assert logits.dtype == torch.float32 and logits.shape == (2, 1000)
    top = expected.topk(4, dim=-1).indices  # surely among the 8 largest approximate ones
    assert torch.allclose(logits.gather(-1, top), expected.gather(-1, top), atol=1e-5)
    assert float((logits - expected).abs().max()) <= 0.02 * float(expected.abs().max())
    assert head.exact.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()


def test_a_bad_precision_is_refused_before_anything_loads(tmp_path: Path) -> None:
    with pytest.raises(TmoGraphError) as info:
        LocalModel.load(tmp_path, precision="fp8")  # type: ignore[arg-type]
    message = str(info.value)
    assert "precision 'fp8'" in message and "\n" not in message
    assert all(p in message for p in PRECISIONS)
    assert info.value.fix


def test_long_inputs_take_the_dense_product_with_the_same_weights() -> None:
    weight = _grid_weight(96, 128, seed=4)
    layer = quantize.Int4Linear(weight)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(quantize.DENSE_ROWS * 4, 128, generator=gen)
    dense = layer(x)  # more rows than DENSE_ROWS: the bfloat16 copy
    packed = torch.cat([layer(part) for part in x.split(quantize.DENSE_ROWS)])  # the int4 kernel
    assert float((dense - packed).abs().max()) <= 0.01 * float(packed.abs().max())
    expected = x @ weight.t()
    assert float((dense - expected).abs().max()) <= 0.01 * float(expected.abs().max())
    kept = quantize.plain(layer.prompt_weight)
    assert kept.dtype == torch.bfloat16 and kept.shape == (96, 128)
    assert torch.equal(kept, layer.tensors()["dense"])
    # oneDNN's layout of that copy changes no value of the product.
    rows = x.to(torch.bfloat16)
    same = torch.nn.functional.linear(rows, kept)
    assert torch.equal(quantize.prompt_product(rows, layer.prompt_weight), same)
