"""First token of turn 10 of a dialogue: the key/value cache kept between turns, against none.

The device model (SmolLM2 int4, the default) answers a ten-turn dialogue turn by turn,
through ``LocalModel.answer`` (9 new tokens a turn, so that turn 10's prompt is about 300
tokens; the later prompts hold the earlier turns and the answers the model gave). Turn 10's
prompt repeats turn 9's prompt and answer: only the new question (and the tail of the answer
the chat template re-tokenizes) is read.
Timed: from the call to its first token (``TokenScores.prefill_s``), on the kept cache
("kept") and, right after, on the same prompt with every cache dropped ("cold"), which reads
the whole prompt. Several dialogues (different topics) a run, medians per run, then the
median over runs; the target is the issue's: p50 <= 150 ms for a prompt of about 300
tokens of which about 250 were read before.

python bench/dialogue_cache.py [--runs 3] [--dialogues 4]
"""

from __future__ import annotations

import argparse
import statistics

from instant import load_average  # bench/instant.py

from tmo_graph.models.local.model import LocalModel, get_local_model

TARGET_MS = 150.0
EARLIER_ANSWER_TOKENS = 9  # turns 1-9: short answers keep turn 10's prompt near 300 tokens
SYSTEM = (
    "You are a helpful assistant on a phone. Answer briefly and clearly, in plain words, "
    "and say so when you are not sure."
)
TOPICS = [
    ("my tomato plants on the balcony", "watering", "yellow leaves", "the best fertilizer"),
    ("a weekend trip to the mountains", "packing", "the weather", "a short hike"),
    ("learning to bake bread at home", "flour", "the oven", "a sourdough starter"),
    ("training for my first 10 km run", "shoes", "a rest day", "what to eat"),
    ("setting up a small aquarium", "the filter", "the water", "the first fish"),
]
QUESTIONS = [
    "I want to talk about {0}. Where should I start?",
    "What should I know about {1}?",
    "How often should I think about {1}?",
    "What goes wrong most often with {2}?",
    "And how do I fix {2} if it happens?",
    "Is {3} worth the money?",
    "Could you compare two options for {3}?",
    "What would you do first, {1} or {3}?",
    "Give me a short checklist for {0}.",
    "Thanks. One last thing: what is the single most important tip about {0}, {2} "
    "and {3}, in one sentence?",
]


def dialogue_turn10(local: LocalModel, topic: tuple[str, str, str, str]) -> tuple[dict, dict]:
    """Answers turns 1-9, then turn 10 on the kept cache and again cold: their figures."""
    messages = [{"role": "system", "content": SYSTEM}]
    for question in QUESTIONS[:-1]:
        messages.append({"role": "user", "content": question.format(*topic)})
        text, _ = local.answer(messages, max_new_tokens=EARLIER_ANSWER_TOKENS)
        messages.append({"role": "assistant", "content": text})
    messages.append({"role": "user", "content": QUESTIONS[-1].format(*topic)})
    figures = {}
    for name in ("kept", "cold"):
        if name == "cold":
            local.decoder.caches.clear()
        _, scores = local.answer(messages, max_new_tokens=16)
        figures[name] = {
            "ms": 1000 * (scores.prefill_s or 0.0),
            "read": scores.prompt_tokens,
            "prompt": local.prompt_tokens(messages),
        }
    return figures["kept"], figures["cold"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dialogues", type=int, default=4, choices=range(1, len(TOPICS) + 1))
    args = parser.parse_args()
    print("loading the local model ...", flush=True)
    local = get_local_model()
    print(f"loaded in {local.load_seconds:.1f} s; {load_average()}", flush=True)
    kept_p50, cold_p50, ratios = [], [], []
    prompts, reads = [], []
    for run in range(1, args.runs + 1):
        kept, cold = [], []
        for topic in TOPICS[: args.dialogues]:
            k, c = dialogue_turn10(local, topic)
            kept.append(k["ms"])
            cold.append(c["ms"])
            prompts.append(k["prompt"])
            reads.append(k["read"])
            print(
                f"  run {run}, {topic[0]}: prompt {k['prompt']} tokens, read {k['read']} "
                f"(kept) -> first token {k['ms']:.0f} ms; cold (read {c['read']}): "
                f"{c['ms']:.0f} ms",
                flush=True,
            )
        kept_p50.append(statistics.median(kept))
        cold_p50.append(statistics.median(cold))
        ratios.append(cold_p50[-1] / kept_p50[-1])
        print(
            f"run {run}: p50 kept {kept_p50[-1]:.0f} ms, cold {cold_p50[-1]:.0f} ms "
            f"({load_average()})"
        )
    kept_ms = statistics.median(kept_p50)
    print(
        f"\nturn 10's first token, median of {args.runs} runs' p50 over {args.dialogues} "
        f"dialogues (prompt {min(prompts)}-{max(prompts)} tokens, "
        f"{min(reads)}-{max(reads)} read on the kept cache):\n"
        f"  kept cache {kept_ms:.0f} ms (runs {', '.join(f'{v:.0f}' for v in kept_p50)})\n"
        f"  cold       {statistics.median(cold_p50):.0f} ms "
        f"(runs {', '.join(f'{v:.0f}' for v in cold_p50)})\n"
        f"  cold / kept {statistics.median(ratios):.1f}x\n"
        f"  target: kept p50 <= {TARGET_MS:.0f} ms: {'met' if kept_ms <= TARGET_MS else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
