"""The local model's own decoder against transformers' Llama, on a tiny random model.

No real weights: a two-layer Llama with random weights saved as a converted folder would be.
float32 must give transformers' logits; the key/value cache must give the same tokens as
reading everything again.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tmo_graph.errors import TmoGraphError

torch = pytest.importorskip("torch")
engine = pytest.importorskip("tmo_graph.models.local.engine")


def _tiny_llama(folder: Path, seed: int = 4, hidden: int = 64) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=hidden,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        rope_theta=100000.0,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("tiny-llama")
    return folder, _tiny_llama(folder)


PROMPT = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]


def test_float32_gives_transformers_logits(tiny: tuple[Path, torch.nn.Module]) -> None:
    folder, model = tiny
    decoder = engine.load_decoder(folder, "float32")
    with torch.inference_mode():
        expected = model(input_ids=torch.tensor([PROMPT])).logits[0]
    # The whole prompt at once (the prompt path) ...
    at_once = decoder.forward(PROMPT, decoder._new_cache(), logits_for=len(PROMPT))
    assert torch.allclose(at_once, expected, atol=1e-4)
    # ... and one token at a time through the cache (the decoding path).
    cache = decoder._new_cache()
    stepped = torch.cat([decoder.forward([t], cache) for t in PROMPT])
    assert torch.allclose(stepped, expected, atol=1e-4)
    assert cache.tokens == PROMPT


def test_greedy_tokens_match_transformers_generate(tiny: tuple[Path, torch.nn.Module]) -> None:
    folder, model = tiny
    decoder = engine.load_decoder(folder, "float32")
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=0,
        )
    assert list(decoder.generate(PROMPT, 12)) == out[0, len(PROMPT) :].tolist()


def test_the_next_turn_reads_only_its_new_tokens(tiny: tuple[Path, torch.nn.Module]) -> None:
    folder, _ = tiny
    decoder = engine.load_decoder(folder, "int4")
    read: list[int] = []
    first = list(decoder.generate(PROMPT, 6, on_prompt_read=read.append))
    follow_up = [*PROMPT, *first, 7, 7, 8]  # the answer and the user's next message
    again = list(decoder.generate(follow_up, 6, on_prompt_read=read.append))
    # The second prompt repeats the first and its answer (minus the last answer token,
    # never read back): only that token and the three new ones are read.
    assert read == [len(PROMPT), 4]
    fresh = engine.load_decoder(folder, "int4")
    assert list(fresh.generate(follow_up, 6)) == again
    # The same prompt once more: only its last token is read (its logits are needed).
    list(decoder.generate(follow_up, 1, on_prompt_read=read.append))
    assert read[-1] == 1


@pytest.mark.parametrize("compiled", [False, True])
def test_concurrent_dialogues_never_share_a_cache(
    tiny: tuple[Path, torch.nn.Module], tmp_path: Path, compiled: bool
) -> None:
    folder, _ = tiny
    decoder = engine.load_decoder(folder, "int4", tmp_path / "native" if compiled else None)
    assert (decoder.native is not None) == compiled
    alone = {seed: list(decoder.generate([seed, *PROMPT], 16)) for seed in (11, 12, 13)}
    together: dict[int, list[int]] = {}

    def run(seed: int) -> None:
        together[seed] = list(decoder.generate([seed, *PROMPT], 16))

    threads = [threading.Thread(target=run, args=(seed,)) for seed in alone]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone


def test_the_pool_keeps_the_most_recent_dialogues() -> None:
    made: list[engine.KVCache] = []

    def make() -> engine.KVCache:
        made.append(engine.KVCache(torch.zeros(1, 1, 0, 2), torch.zeros(1, 1, 0, 2)))
        return made[-1]

    pool = engine.CachePool(make, slots=2)
    for start in (1, 2, 3):
        cache, held = pool.take([start, 0, 0])
        assert held == 0
        cache.tokens.extend([start, 0, 0])
        pool.give_back(cache)
    # Three dialogues, two slots: the first one's cache was dropped, the others are found.
    assert pool.take([3, 0, 0, 5])[1] == 3
    assert pool.take([2, 0, 0, 5])[1] == 3
    assert pool.take([1, 0, 0, 5])[1] == 0


def test_processors_end_token_and_time_limit(tiny: tuple[Path, torch.nn.Module]) -> None:
    folder, _ = tiny
    decoder = engine.load_decoder(folder, "int4")
    free = list(decoder.generate(PROMPT, 8))
    banned = free[0]

    def forbid(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores[0, banned] = float("-inf")
        return scores

    assert banned not in list(decoder.generate(PROMPT, 8, processors=[forbid]))
    # The end token is given, then decoding stops.
    end = free.index(free[-1])  # where the last token first comes
    assert list(decoder.generate(PROMPT, 8, end_token=free[end])) == free[: end + 1]
    # A time limit already passed: one token, then stop.
    assert list(decoder.generate(PROMPT, 8, max_time_s=0.0)) == free[:1]


def test_int4_follows_float32(tiny: tuple[Path, torch.nn.Module]) -> None:
    folder, _ = tiny
    exact = engine.load_decoder(folder, "float32").score(PROMPT[:4], PROMPT[4:])
    fast = engine.load_decoder(folder, "int4").score(PROMPT[:4], PROMPT[4:])
    assert fast.shape == exact.shape == (len(PROMPT) - 4, 256)
    assert torch.corrcoef(torch.stack([fast.flatten(), exact.flatten()]))[0, 1] > 0.9
    # A decoding step reads the int4 weights, not the float32 ones nor the dense copies.
    assert (
        engine.load_decoder(folder, "int4").weight_bytes_per_token()
        < 0.6 * engine.load_decoder(folder, "float32").weight_bytes_per_token()
    )


def test_bad_folders_and_overlong_prompts_are_refused(
    tiny: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    folder, _ = tiny
    decoder = engine.load_decoder(folder, "float32")
    with pytest.raises(TmoGraphError, match="128 positions"):
        decoder.forward(list(range(129)), decoder._new_cache())
    with pytest.raises(TmoGraphError, match="empty prompt"):
        next(decoder.generate([], 4))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(TmoGraphError, match="Llama-architecture"):
        engine.load_decoder(tmp_path, "int4")


def test_a_dialogue_sharing_only_the_system_prompt_gets_a_copy() -> None:
    pool = engine.CachePool(
        lambda: engine.KVCache(torch.zeros(1, 1, 0, 2), torch.zeros(1, 1, 0, 2))
    )
    first, _ = pool.take([1, 2, 3, 4, 5, 6])
    first.reserve(6)
    first.keys[0, 0, :6] = torch.arange(6.0)[:, None]
    first.tokens.extend([1, 2, 3, 4, 5, 6])
    pool.give_back(first)
    other, held = pool.take([1, 2, 9, 9, 9, 9])  # the same two-token start only
    assert held == 2 and other is not first
    assert other.keys[0, 0, :2, 0].tolist() == [0.0, 1.0]
    pool.give_back(other)
    assert pool.take([1, 2, 3, 4, 5, 6, 7])[0] is first  # kept whole for its own dialogue


def test_the_compiled_step_gives_the_pytorch_steps_logits(
    tiny: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    folder, _ = tiny
    compiled = engine.load_decoder(folder, "int4", tmp_path / "native")
    assert compiled.native is not None, "a C compiler is needed for this test"
    plain = engine.load_decoder(folder, "int4")  # no folder for the library: PyTorch's step
    exact = engine.load_decoder(folder, "float32")
    caches = [d._new_cache() for d in (compiled, plain, exact)]
    for decoder, cache in zip((compiled, plain, exact), caches, strict=True):
        decoder.forward(PROMPT, cache)
    for token in (7, 200, 3):
        fast, slow, right = (
            d.forward([token], c) for d, c in zip((compiled, plain, exact), caches, strict=True)
        )
        # Same 4-bit weights; PyTorch's kernel rounds inputs and outputs to bfloat16, the
        # compiled step keeps float32, so it is at least as close to float32's logits.
        assert torch.allclose(fast, slow, atol=0.05 * float(slow.abs().max()))
        assert (fast - right).abs().max() <= (slow - right).abs().max() + 1e-4
    assert caches[0].tokens == caches[1].tokens == [*PROMPT, 7, 200, 3]
    assert torch.allclose(caches[0].keys[:, :, :13], caches[2].keys[:, :, :13], atol=0.05)
    # The library is built once per machine and source: a second load reuses the file.
    built = list((tmp_path / "native").glob("*.so"))
    engine.load_decoder(folder, "int4", tmp_path / "native")
    assert list((tmp_path / "native").glob("*.so")) == built and len(built) == 1


@pytest.mark.parametrize("hidden", [64, 256])  # heads of 16 and of 64 (SmolLM2's) numbers
def test_the_compiled_prompt_attention_is_pytorchs(tmp_path: Path, hidden: int) -> None:
    folder = tmp_path / "model"
    _tiny_llama(folder, hidden=hidden)
    compiled = engine.load_decoder(folder, "int4", tmp_path / "native")
    attend = compiled.prompt_attention
    assert attend is not None, "a C compiler is needed for this test"
    h, kv, d = compiled.heads, compiled.kv_heads, compiled.head_dim
    gen = torch.Generator().manual_seed(2)
    # A whole prompt, prompts after a kept cache, and sizes that fill no block evenly.
    for start, n in [(0, 2), (0, 9), (0, 100), (5, 3), (37, 45), (90, 17)]:
        keys, values = (torch.randn(kv, 256, d, generator=gen) for _ in range(2))
        qk = torch.randn(n, h + kv, d, generator=gen)
        keys[:, start : start + n] = qk[:, h:].transpose(0, 1)
        seen = torch.ones(n, start + n, dtype=torch.bool).tril(start)
        expected = torch.nn.functional.scaled_dot_product_attention(
            qk[:, :h].transpose(0, 1)[None].double(),
            keys[None, :, : start + n].double(),
            values[None, :, : start + n].double(),
            attn_mask=seen,
            enable_gqa=True,
        )[0].transpose(0, 1)
        got = attend(qk, keys, values, start).view(n, h, d)
        assert float((got - expected).abs().max()) < 1e-5, (start, n)
    # In the decoder: the same logits as PyTorch's attention, cold and after a kept cache.
    plain = engine.load_decoder(folder, "int4", tmp_path / "native")
    plain.prompt_attention = None
    logits = []
    for decoder in (compiled, plain):
        cache = decoder._new_cache()
        first = decoder.forward(PROMPT, cache, logits_for=len(PROMPT))
        logits.append(torch.cat([first, decoder.forward([8, 1, 200, 7, 7], cache, logits_for=5)]))
    assert torch.allclose(*logits, atol=1e-3)


def test_without_a_compiler_the_pytorch_step_decodes(
    tiny: tuple[Path, torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = tiny
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    decoder = engine.load_decoder(folder, "int4", tmp_path / "native")
    assert decoder.native is None
    reference = engine.load_decoder(folder, "int4")
    assert list(decoder.generate(PROMPT, 8)) == list(reference.generate(PROMPT, 8))


@pytest.mark.parametrize("compiled", [False, True])
def test_packed_layers_are_saved_once_and_read_back(
    tiny: tuple[Path, torch.nn.Module], tmp_path: Path, compiled: bool
) -> None:
    folder, _ = tiny
    native_dir = tmp_path / "native" if compiled else None
    first = engine.load_decoder(folder, "int4", native_dir, tmp_path / "decoders")
    files = list((tmp_path / "decoders").glob("*.safetensors"))
    assert len(files) == 1 and ("-native-" in files[0].name) == compiled
    again = engine.load_decoder(folder, "int4", native_dir, tmp_path / "decoders")
    assert list((tmp_path / "decoders").glob("*")) == files  # read, not written again
    assert list(again.generate(PROMPT, 8)) == list(first.generate(PROMPT, 8))
    assert again.score(PROMPT[:4], PROMPT[4:]).equal(first.score(PROMPT[:4], PROMPT[4:]))
    assert again.weight_bytes_per_token() == first.weight_bytes_per_token()
    layer = again.blocks[1].gate_up
    assert layer.max_error == first.blocks[1].gate_up.max_error
    assert again.head.max_error == first.head.max_error
