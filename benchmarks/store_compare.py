"""The two stores side by side: FAISS folders (index type auto) and Milvus Lite (its auto
choice), on the same vectors: insert rate, query latency, recall@10 against exact search.

    python benchmarks/store_compare.py [--n 100000] [--dim 3584] [--queries 200]
        [--memory-budget 8G] [--stores folder milvus-lite] [--workdir DIR] [--quick]

Vectors come from search_scale's generator (embedding-like clusters, unit length), chunk by
chunk; the exact top-10 of every query is computed by brute force as they are generated.
Each store gets them through its own writer, as `dior-search index` writes them (commits of
10,000 rows, then `close()`: FAISS trains and packs its compressed type, Milvus builds its
index and flushes). Insert rate: vectors / (time to add and commit + close). Then a reader is
opened (its load time reported) and every query is searched alone (p50, p99) and all in one
batch (mean per query); recall@10 counts the exact top-10 found by the single searches.
Milvus Lite runs in this process (its gRPC server in a thread), so both stores share the
two cores; run nothing else meanwhile.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from search_scale import CHUNK, K, Vectors, bench_manifest, peak_rss, top_k_merge

from dior_search.store.index_types import parse_size
from dior_search.store.schema import Row
from dior_search.store.stores import open_store

STORES = ("folder", "milvus-lite")


def store_spec(kind: str, work: Path) -> str | None:
    return None if kind == "folder" else f"milvus-lite:{work / 'milvus.db'}"


def exact_top_k(vectors: Vectors, n: int, queries: np.ndarray) -> np.ndarray:
    """The exact top-K ids of every query (cosine), by brute force over the chunks."""
    scores = np.full((len(queries), K), -np.inf, dtype=np.float32)
    truth = np.full((len(queries), K), -1, dtype=np.int64)
    for number, start in enumerate(range(0, n, CHUNK)):
        chunk = vectors.chunk(1, number, min(CHUNK, n - start))
        block = queries @ chunk.T
        ids = np.broadcast_to(np.arange(start, start + len(chunk), dtype=np.int64), block.shape)
        scores, truth = top_k_merge(scores, truth, block, ids)
    order = np.argsort(-scores, axis=1)
    return np.take_along_axis(truth, order, axis=1)


def run_store(kind: str, work: Path, vectors: Vectors, n: int, budget: int, queries, truth):
    """Write n vectors into one store, then search it: one row of the comparison."""
    store = open_store(store_spec(kind, work), work / "indexes", create=True)
    try:
        manifest = bench_manifest("auto", budget, CHUNK, vectors.dim)
        location = store.location("generated", manifest.embedder, "generated")
        writer = store.writer(location, manifest)
        began = time.perf_counter()
        generating = 0.0
        for number, start in enumerate(range(0, n, CHUNK)):
            made = time.perf_counter()
            chunk = vectors.chunk(1, number, min(CHUNK, n - start))
            generating += time.perf_counter() - made
            for offset, vector in enumerate(chunk):
                row = start + offset
                writer.add(vector, Row(f"v{row:08d}", f"{row:064x}"))
        added = time.perf_counter()
        writer.close()
        closed = time.perf_counter()
        reader = store.reader(location)
        opened = time.perf_counter()
        reader.search(queries[:1], K)  # first touch, not timed
        single, found = [], []
        for query in queries:
            began_query = time.perf_counter()
            _, ids = reader.search(query[None, :], K)
            single.append(time.perf_counter() - began_query)
            found.append(ids[0])
        batch_began = time.perf_counter()
        reader.search(queries, K)
        batch = time.perf_counter() - batch_began
        hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
        insert_s = closed - began - generating
        return {
            "store": kind,
            "index_type": reader.manifest.index_type,
            "search_params": reader.manifest.search_params,
            "insert_per_s": n / insert_s,
            "add_s": added - began - generating,
            "close_s": closed - added,
            "open_s": opened - closed,
            "p50_ms": 1000 * float(np.percentile(single, 50)),
            "p99_ms": 1000 * float(np.percentile(single, 99)),
            "batch_ms_per_query": 1000 * batch / len(queries),
            "recall@10": sum(hits) / (K * len(truth)),
            "peak_rss": peak_rss(),
        }
    finally:
        store.close()


def table(rows: list[dict]) -> str:
    head = "| store | index type | inserts/s | open s | p50 ms | p99 ms | batch ms/query | R@10 |"
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['store']} | `{r['index_type']}` | {r['insert_per_s']:,.0f} | "
            f"{r['open_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['batch_ms_per_query']:.2f} | {r['recall@10']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--memory-budget", default="8G")
    parser.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES))
    parser.add_argument("--workdir", type=Path, help="keep the indexes here")
    parser.add_argument("--quick", action="store_true", help="3,000 vectors of 256: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.dim, args.queries = 3000, 256, 20
    vectors = Vectors(dim=args.dim)
    queries = vectors.chunk(2, 0, args.queries)
    truth = exact_top_k(vectors, args.n, queries)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="store-compare-"))
    rows = []
    try:
        for kind in args.stores:
            shutil.rmtree(work / kind, ignore_errors=True)
            (work / kind).mkdir(parents=True)
            budget = parse_size(args.memory_budget)
            rows.append(run_store(kind, work / kind, vectors, args.n, budget, queries, truth))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{args.n:,} vectors of dimension {args.dim}, {args.queries} queries, k = {K}")
    print(table(rows))
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
