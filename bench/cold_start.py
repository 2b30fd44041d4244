"""Cold start of a server worker: process launch to its first answered chat request.

``tmo-graph serve`` is launched on 127.0.0.1 (a free port, a fresh SQLite thread file and
Chroma folder, no cloud: ``TMO_CLOUD__MODE=off``, answers of at most 16 tokens) with the
converted local model already in the cache, as the integration tests start it. Timed from
launch: ``/health`` answering (the models are loaded, the app is up), then the first
``POST /v1/chat/completions`` answered (model ``tmo-always-local``, "Say hello."; the time of
that request alone is shown apart). Each launch ends with SIGTERM before the next begins.

Two set-ups launched alternately in the same run, so a busy machine slows both alike: the
default ("now") and the same server with ``TMO_EMBEDDINGS__BACKEND=sentence-transformers``
("before": MiniLM through sentence-transformers, as until now). The floor: a Python process
that only imports what serving a turn needs in any case: torch and tokenizers (the models),
the graph (LangGraph, LangChain) and FastAPI with uvicorn; the server loads its models on a
thread of its own beside the imports of the app, so it can come close to that. Medians of
``--runs`` launches each.

python bench/cold_start.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from instant import load_average, median, runs_line  # bench/instant.py

TARGET_S = 4.0
ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "tmo-graph"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(extra_env: dict[str, str], timeout_s: float = 300.0) -> tuple[float, float, float]:
    """Seconds from launch to /health, to the first answered request, and of that request."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "ANONYMIZED_TELEMETRY": "False",
            "TMO_CLOUD__MODE": "off",
            "TMO_LOCAL__MAX_NEW_TOKENS": "16",
            "TMO_MEMORY__PERSIST_DIR": str(Path(tmp) / "memory"),
            **extra_env,
        }
        log_path = Path(tmp) / "serve.log"
        with log_path.open("w") as log:
            start = time.perf_counter()
            server = subprocess.Popen(
                [
                    *(str(CLI), "serve", "--port", str(port), "--no-auth"),
                    *("--db", str(Path(tmp) / "t.sqlite")),
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                url = f"http://127.0.0.1:{port}"
                while True:
                    if server.poll() is not None:
                        sys.exit(f"tmo-graph serve exited: {log_path.read_text()[-2000:]}")
                    try:
                        if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.perf_counter() - start > timeout_s:
                        sys.exit(f"tmo-graph serve did not answer within {timeout_s:g} s")
                    time.sleep(0.02)
                health = time.perf_counter() - start
                reply = httpx.post(
                    f"{url}/v1/chat/completions",
                    json={
                        "model": "tmo-always-local",
                        "messages": [{"role": "user", "content": "Say hello."}],
                    },
                    timeout=timeout_s,
                )
                first = time.perf_counter() - start
                if reply.status_code != 200 or not reply.json()["choices"][0]["message"]["content"]:
                    sys.exit(f"the first request failed: {reply.status_code} {reply.text[:300]}")
            finally:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
    return health, first, first - health


FLOOR_IMPORTS = "import torch, tokenizers, fastapi, uvicorn, tmo_graph.graph"


def import_floor() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", FLOOR_IMPORTS], cwd=ROOT, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    setups = {"now": {}, "before": {"TMO_EMBEDDINGS__BACKEND": "sentence-transformers"}}
    launch({})  # the first launch may still convert the model or fill the OS file cache
    load_before = load_average()
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in setups}
    floors = []
    for run in range(args.runs):
        names = list(setups) if run % 2 == 0 else list(reversed(setups))
        for name in names:
            times[name].append(launch(setups[name]))
        floors.append(import_floor())
    load_after = load_average()

    print(
        f"\ncold start of `tmo-graph serve` (device only, converted model cached), {args.runs} "
        f"launches each, alternating; {load_before} -> {load_after}:"
    )
    for name in setups:
        health, first, request = zip(*times[name], strict=True)
        print(runs_line(f"{name}: launch -> /health answers", list(health), unit="s"))
        print(runs_line(f"{name}: launch -> first answered request", list(first), unit="s"))
        print(runs_line(f"{name}: the first request alone", list(request), unit="s"))
    ratios = [n[1] / b[1] for n, b in zip(times["now"], times["before"], strict=True)]
    print(runs_line("now / before (first answer, per run)", ratios, unit="x"))
    print(runs_line(f"floor: python -c '{FLOOR_IMPORTS}'", floors, unit="s"))
    first_now = median([t[1] for t in times["now"]])
    verdict = "met" if first_now <= TARGET_S else "NOT met"
    print(f"  target: launch -> first answered request <= {TARGET_S:g} s: {verdict}")


if __name__ == "__main__":
    main()
