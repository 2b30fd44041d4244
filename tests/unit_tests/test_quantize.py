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


def _tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(4)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def test_quantize_int4_replaces_every_decoder_layer_and_the_head() -> None:
    model = _tiny_llama()
    reference = _tiny_llama()  # the same seed: the same float weights
    embedding = model.get_input_embeddings().weight
    report = quantize.quantize_int4(model)
    assert (report.int4_layers, report.kept_layers) == (14, 0)  # 7 per decoder layer
    assert report.max_error > 0  # random weights sit on no 4-bit grid
    assert isinstance(model.lm_head, quantize.Int8Head)
    assert model.get_input_embeddings().weight is embedding  # untouched, still float32
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits
        expected = reference(input_ids=ids).logits
    assert logits.dtype == torch.float32
    assert torch.corrcoef(torch.stack([logits.flatten(), expected.flatten()]))[0, 1] > 0.9


def test_int4_greedy_decoding_is_deterministic() -> None:
    model = _tiny_llama()
    quantize.quantize_int4(model)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.inference_mode():
        runs = [
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=12,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=0,
            )
            for _ in range(2)
        ]
    assert runs[0].sequences.tolist() == runs[1].sequences.tolist()
    for first, second in zip(runs[0].scores, runs[1].scores, strict=True):
        assert torch.equal(first, second)


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
    assert layer.dense.dtype == torch.bfloat16 and layer.dense.shape == (96, 128)
