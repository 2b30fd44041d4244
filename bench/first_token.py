"""Time to first token of a local answer: from the turn's start to its first streamed token.

The real device model (SmolLM2 from the converted cache, loaded before timing), real MiniLM
embeddings, a real (empty) Chroma memory, an in-memory checkpointer, no cloud (as
``TMO_CLOUD__MODE=off``: the local answer is final, so its tokens are shown as they come).
A turn is a new dialogue sent through ``tmo_graph.conversation.stream_turn`` (LangGraph's
``stream_mode="messages"``), timed from the call to the first token it yields. Answers are
cut at 8 new tokens (the first token does not depend on the answer's length).

Baseline, interleaved in the same process: the raw model on the same messages (the default
persona and the question, through the chat template): the decoder alone
(``LocalModel.decoder.generate``), from the call to its first token that shows as text.
Short prompts (a kitchen question, about 35 tokens with the persona) and long ones (a note
of about 250 words to summarise, about 310 tokens). Medians of each run's p50, and of the
per-run ratios.
The "before" side, also interleaved: the same raw decoding on the float32 weights (the
default until ``local.precision: int4``).

python bench/first_token.py [--runs 5] [--turns 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from instant import load_average, median, ms, runs_line  # bench/instant.py
from langgraph.checkpoint.memory import InMemorySaver

from tmo_graph.context import Context
from tmo_graph.conversation import Token, stream_turn
from tmo_graph.graph import build_graph
from tmo_graph.models.embeddings import local_embeddings
from tmo_graph.models.local.model import get_local_model
from tmo_graph.models.local.weights import resolve_local_model
from tmo_graph.services import Services
from tmo_graph.settings import Settings

TARGET_MS = 300.0
MAX_NEW_TOKENS = 8
SHORT = [
    "How long should I boil an egg?",
    "Is the pot on the stove boiling yet?",
    "What can I cook with tomatoes and basil?",
    "Write a message to Sam that dinner is at seven.",
]
NOTE = (
    "Summarise this note from my neighbour in two sentences. "
    "Hi! Thanks again for watching the cat last weekend, she clearly liked you better than "
    "me. A few things for the next time we are away, which will be the second week of "
    "March: the food is in the blue tin on the top shelf of the pantry, half a scoop in the "
    "morning and half in the evening, never more, whatever she tells you. The water bowl "
    "by the back door needs fresh water every day, and the fountain upstairs can be "
    "ignored because she never drinks from it anyway. The litter box is in the laundry "
    "room; the bags and the scoop are in the cupboard above it, and the bin for it is the "
    "grey one at the side of the house, not the green one. If she hides under the bed, "
    "which she does when the bins are collected on Tuesday mornings, just leave her alone "
    "and she will come out by lunchtime. The plants in the kitchen need watering on "
    "Thursday, the big one by the window a full jug and the small ones a glass each. "
    "Please take in the post and put it on the hall table. The heating is on a timer and "
    "should be left as it is. Our vet is on the fridge in case anything happens, and my "
    "sister lives two streets away and has a key as well. We will bring you something "
    "nice back from the trip. Note {i}."
)


def first_token_of_turn(graph: Any, text: str, thread_id: str, context: Context) -> float:
    """Seconds from the start of a turn to its first shown token (the turn is run to its
    end before returning, so the next one starts on an idle model)."""
    start = time.perf_counter()
    first = None
    for event in stream_turn(graph, {"messages": [("user", text)]}, thread_id, context):
        if first is None and isinstance(event, Token) and event.text.strip():
            first = time.perf_counter() - start
    if first is None:
        raise RuntimeError(f"the turn streamed no token for {text[:40]!r}")
    return first


def raw_first_token(local: Any, system: str, text: str) -> float:
    """Seconds from the decoder being called (chat template included) to its first token
    that shows as text: the model alone, with no graph, scores or LangChain around it."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    tokenizer = local.tokenizer
    start = time.perf_counter()
    tokens = local.decoder.generate(
        local._prompt_ids(messages), MAX_NEW_TOKENS, end_token=tokenizer.eos_token_id
    )
    answer: list[int] = []
    for token in tokens:
        answer.append(token)
        if tokenizer.decode(answer, skip_special_tokens=True).strip():
            tokens.close()
            return time.perf_counter() - start
    raise RuntimeError(f"the raw model streamed no text for {text[:40]!r}")


def prompt_tokens(local: Any, system: str, text: str) -> int:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    ids = local.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True
    )["input_ids"]
    return len(ids)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--turns", type=int, default=4, help="turns per prompt kind and run")
    args = parser.parse_args()

    settings = Settings.model_validate({"local": {"max_new_tokens": MAX_NEW_TOKENS}})
    start = time.perf_counter()
    folder = resolve_local_model(settings.local.source, settings.model_cache_dir())
    local = get_local_model(folder, MAX_NEW_TOKENS, precision=settings.local.precision)
    local32 = get_local_model(folder, MAX_NEW_TOKENS, precision="float32")
    embeddings = local_embeddings()
    print(f"models loaded in {time.perf_counter() - start:.1f} s (not timed below)")
    context = Context(policy="always-local", user_id="bench")
    system = context.system_prompt
    kinds = {"short": lambda i: SHORT[i % len(SHORT)], "long": lambda i: NOTE.format(i=i)}
    sizes = {kind: prompt_tokens(local, system, make(0)) for kind, make in kinds.items()}
    with tempfile.TemporaryDirectory():
        services = Services(
            settings=settings,
            local=local,
            cloud=None,  # device only: the local answer is final and streams as it comes
            embeddings=embeddings,
        )
        graph = build_graph(services, checkpointer=InMemorySaver())
        for i in range(2):  # warm-up, both sides
            for make in kinds.values():
                first_token_of_turn(graph, make(100 + i), f"warm-{i}", context)
                raw_first_token(local, system, make(100 + i))
                raw_first_token(local32, system, make(100 + i))
        load_before = load_average()
        sides = ("graph", "raw", "raw float32")
        times: dict[str, dict[str, list[list[float]]]] = {
            side: {kind: [] for kind in kinds} for side in sides
        }
        for run in range(args.runs):
            for kind, make in kinds.items():
                this_run: dict[str, list[float]] = {side: [] for side in sides}
                for i in range(args.turns):
                    text = make(run * args.turns + i)
                    shift = (run + i) % len(sides)  # which side goes first rotates
                    for side in sides[shift:] + sides[:shift]:
                        # Every side reads its whole prompt: the same text was just read by
                        # another side, whose kept cache would answer it (a dialogue's next
                        # turn does gain that: bench/dialogue_cache.py).
                        local.decoder.caches.clear()
                        local32.decoder.caches.clear()
                        if side == "graph":
                            thread = f"{kind}-{run}-{i}"
                            seconds = first_token_of_turn(graph, text, thread, context)
                        else:
                            model = local if side == "raw" else local32
                            seconds = raw_first_token(model, system, text)
                        this_run[side].append(seconds)
                for side in sides:
                    times[side][kind].append(this_run[side])
        load_after = load_average()

    print(
        f"\ntime to first token of a local answer (model load excluded), {args.runs} runs x "
        f"{args.turns} turns per prompt kind, interleaved; {load_before} -> {load_after}:"
    )
    precision = settings.local.precision
    for kind in kinds:
        graph_p50 = [ms(run) for run in times["graph"][kind]]
        raw_p50 = [ms(run) for run in times["raw"][kind]]
        raw32_p50 = [ms(run) for run in times["raw float32"][kind]]
        print(f" {kind} prompts (~{sizes[kind]} prompt tokens with the persona):")
        print(runs_line(f"graph turn through stream_turn ({precision}): p50", graph_p50))
        print(runs_line(f"raw decoder ({precision}): p50", raw_p50))
        print(runs_line("before: raw, float32 weights: p50", raw32_p50))
        extra = [g - r for g, r in zip(graph_p50, raw_p50, strict=True)]
        print(runs_line("graph - raw (p50 per run)", extra))
        ratios = [g / r for g, r in zip(graph_p50, raw_p50, strict=True)]
        print(runs_line("graph / raw (p50 per run)", ratios, unit="x"))
        ratios = [g / r for g, r in zip(graph_p50, raw32_p50, strict=True)]
        print(runs_line("graph / raw float32 (p50 per run)", ratios, unit="x"))
        verdict = "met" if median(graph_p50) <= TARGET_MS else "NOT met"
        print(f"  target: p50 <= {TARGET_MS:g} ms: {verdict}")


if __name__ == "__main__":
    main()
