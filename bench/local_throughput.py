"""Local decoding speed against raw float32 decoding, and the machine's limit.

One process, one prompt, greedy, ``--max-new-tokens`` tokens. Each round runs, in a rotating
order so a busy machine slows every path alike:

- raw float32 ``LocalModel.generate_raw``: the baseline (how the model was loaded before
  int4);
- raw ``LocalModel.generate_raw`` of ``--precision`` (default: ``local.precision``, int4);
- ``LocalModel.answer`` in that precision: its LangChain chat model with the answer's
  per-token log-probs and entropies recorded for the confidence check;
- the whole graph turn on that model (routing, generation with the scores, accounting);
- raw ``LocalModel.generate_raw`` of each ``--also`` precision (default: bfloat16).

The first round warms up. Printed: each path's median tokens/s and the median of its
per-round ratios to the float32 baseline of the same round. Tokens are counted alike on every
path: the answer text's tokens (the end token excluded).

The limit: a decoding step reads every weight once, so memory bandwidth over the bytes of
weights read per token bounds tokens/s. Bandwidth: the faster of numpy and torch summing a
256 MB array (median of 7 each; numpy's is one thread, torch's uses its threads).

python bench/local_throughput.py [--runs 9] [--max-new-tokens 64] [--also bfloat16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from tmo_graph.context import DEFAULT_SYSTEM_PROMPT, Context
from tmo_graph.graph import build_graph
from tmo_graph.models.embeddings import local_embeddings
from tmo_graph.models.local.model import PRECISIONS, LocalModel, get_local_model
from tmo_graph.prompts import text_dialogue
from tmo_graph.sections import LocalModelSettings, LocalPrecision
from tmo_graph.services import Services
from tmo_graph.settings import Settings

PROMPT = "Give me three tips for keeping fresh herbs fresh for longer in the kitchen."
BASELINE = "raw generate, float32"
ARRAY_BYTES = 256 * 2**20


def memory_bandwidth(repeats: int = 7) -> tuple[float, float]:
    """Bytes a second read by numpy's and by torch's sum of a 256 MB array (medians)."""
    array = np.ones(ARRAY_BYTES // 8)
    tensor = torch.ones(ARRAY_BYTES // 4)
    speeds: dict[str, list[float]] = {"numpy": [], "torch": []}
    for _ in range(repeats):
        start = time.perf_counter()
        array.sum()
        speeds["numpy"].append(ARRAY_BYTES / (time.perf_counter() - start))
        start = time.perf_counter()
        tensor.sum()
        speeds["torch"].append(ARRAY_BYTES / (time.perf_counter() - start))
    return statistics.median(speeds["numpy"]), statistics.median(speeds["torch"])


def load_average() -> str:
    try:
        return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        return "load unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--precision", choices=PRECISIONS, default=LocalModelSettings().precision)
    parser.add_argument(
        "--also", nargs="*", choices=PRECISIONS, default=["bfloat16"], help="raw only"
    )
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for every path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_new = args.max_new_tokens
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {load_average()}")

    settings = Settings(local=LocalModelSettings(max_new_tokens=n_new, precision=args.precision))
    models: dict[LocalPrecision, LocalModel] = {}
    for precision in dict.fromkeys(["float32", args.precision, *args.also]):
        print(f"loading the local model in {precision} ...", end=" ", flush=True)
        models[precision] = get_local_model(settings.local.source, n_new, precision=precision)
        print(f"{models[precision].load_seconds:.1f} s", flush=True)
    local = models[args.precision]
    tokenizer = local.tokenizer
    messages = text_dialogue([HumanMessage(content=PROMPT)], [], DEFAULT_SYSTEM_PROMPT)

    def tokens(text: str) -> int:
        return len(tokenizer(text.strip())["input_ids"])

    def raw(model: LocalModel) -> Callable[[], str]:
        return lambda: model.generate_raw(messages, n_new)[0]

    with tempfile.TemporaryDirectory():
        services = Services(
            settings=settings,
            local=local,
            cloud=None,
            embeddings=local_embeddings(),
        )
        graph = build_graph(services, checkpointer=InMemorySaver())
        context = Context(policy="always-local")
        turn = 0

        def graph_turn() -> str:
            nonlocal turn
            turn += 1
            out = graph.invoke(
                {"messages": [("user", PROMPT)]},
                {"configurable": {"thread_id": f"bench-{turn}"}},
                context=context,
            )
            return str(out["turns"][-1]["answer"])

        paths: dict[str, Callable[[], str]] = {
            BASELINE: raw(models["float32"]),
            f"raw generate, {args.precision}": raw(local),
            f"LocalModel.answer (+scores), {args.precision}": lambda: local.answer(messages, n_new)[
                0
            ],
            f"whole graph turn, {args.precision}": graph_turn,
        }
        for precision in args.also:
            paths.setdefault(f"raw generate, {precision}", raw(models[precision]))
        speeds: dict[str, list[float]] = {name: [] for name in paths}
        counts: dict[str, int] = {}
        names = list(paths)
        for run in range(args.runs + 1):  # round 0 warms every path up
            shift = run % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                text = paths[name]()
                elapsed = time.perf_counter() - start
                counts[name] = tokens(text)
                if run:
                    speeds[name].append(counts[name] / elapsed)
            line = "  ".join(f"{speeds[n][-1]:5.1f}" for n in names) if run else "warm-up"
            print(f"round {run}/{args.runs}: {line}  ({load_average()})", flush=True)

    base = speeds[BASELINE]
    width = max(len(name) for name in names)
    print(
        f"\nlocal decoding, {n_new} new tokens at most, median of {args.runs} rounds "
        "(order rotating), ratio = median of per-round ratios to the float32 baseline:"
    )
    for name in names:
        ratio = statistics.median(s / b for s, b in zip(speeds[name], base, strict=True))
        print(
            f"  {name:<{width}}  {statistics.median(speeds[name]):6.2f} tokens/s"
            f"   ratio {ratio:5.2f}   ({counts[name]} tokens)"
        )
    own_raw = speeds[f"raw generate, {args.precision}"]
    graph_ratio = statistics.median(
        g / r for g, r in zip(speeds[f"whole graph turn, {args.precision}"], own_raw, strict=True)
    )
    print(
        f"  whole graph turn / raw generate, both {args.precision}: {graph_ratio:.3f}\n"
        "  targets: raw generate >= 2x the float32 baseline; graph turn >= 0.95x its raw"
    )

    numpy_bw, torch_bw = memory_bandwidth()
    bandwidth = max(numpy_bw, torch_bw)
    print(
        f"\nmachine limit: memory reads {bandwidth / 1e9:.1f} GB/s (sum of a 256 MB array, "
        f"median of 7: numpy {numpy_bw / 1e9:.1f}, torch {torch_bw / 1e9:.1f})"
    )
    for precision, model in models.items():
        per_token = model.weight_bytes_per_token()
        bound = bandwidth / per_token
        reached = statistics.median(speeds[f"raw generate, {precision}"])
        print(
            f"  {precision:<9} {per_token / 1e6:6.1f} MB of weights a token -> at most "
            f"{bound:6.1f} tokens/s; raw generate reaches {reached:6.2f} ({reached / bound:.0%})"
        )


if __name__ == "__main__":
    main()
