"""Filtered search at scale: recall@10, hits per query and latency with 1%, 10% and 50% of
the rows passing a filter, on a compressed (IVF) index.

    python benchmarks/filtered_search.py [--size 100000] [--dim 3584] [--queries 1000]
        [--index-type auto] [--shard-size 50000] [--shares 0.01 0.1 0.5] [--seed 0]

The index is deletions.py's: search_scale.py's embedding-like vectors written through the
store's own IndexWriter (`auto` picks `PCA256,IVF512,SQ8,Refine(SQfp16)` at 100,000 x 3,584).
For each share a random set of rows passes (as a `--where` on an answer or a label would make
it); every query is timed alone through `IndexReader.search(queries, k, allowed_ids)`, and
recall@10 is measured against an exact search over the passing rows only. Each row of the
table also says how many queries got fewer than k hits (0 is the requirement) and, beside it,
what filtering FAISS's own candidates would give: the unfiltered top-100 with the rows that
do not pass removed, the recall that a filter applied inside the probed lists loses.
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from deletions import add_index_arguments, built_index, exact_top_k

from dior_search.store.reader import IndexReader

K = 10
SHARES = (0.01, 0.1, 0.5)
# The naive comparison: filter the unfiltered top this many.
NAIVE_FETCH = 100


def measure(
    reader: IndexReader, queries: np.ndarray, truth: np.ndarray, allowed: np.ndarray
) -> dict:
    """Time every query alone among `allowed`; recall@10 vs `truth`, short answers."""
    reader.search(queries[:1], K, allowed)  # first touch of the mapped pages, not timed
    times, hits, short, naive_hits = [], 0, 0, 0
    passing = np.zeros(int(reader.ids[-1]) + 1, dtype=bool)
    passing[allowed] = True
    for query, wanted in zip(queries, truth, strict=True):
        began = time.perf_counter()
        _, found = reader.search(query[None, :], K, allowed)
        times.append(time.perf_counter() - began)
        found = found[0][found[0] >= 0]
        short += len(found) < K
        hits += len(set(found.tolist()) & set(wanted.tolist()))
        _, unfiltered = reader.search(query[None, :], NAIVE_FETCH)
        kept = [i for i in unfiltered[0].tolist() if i >= 0 and passing[i]][:K]
        naive_hits += len(set(kept) & set(wanted.tolist()))
    return {
        "passing_rows": len(allowed),
        "p50_ms": 1000 * float(np.percentile(times, 50)),
        "p99_ms": 1000 * float(np.percentile(times, 99)),
        "recall": hits / (K * len(queries)),
        "short_answers": short,
        "naive_recall": naive_hits / (K * len(queries)),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_index_arguments(parser)
    parser.add_argument("--shares", type=float, nargs="+", default=list(SHARES))
    parser.add_argument("--seed", type=int, default=0, help="which rows pass")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="filtered-"))
    rows = []
    try:
        directory, vectors, queries = built_index(args, workdir)
        reader = IndexReader(directory, mmap=True)
        print(f"index type {reader.manifest.index_type}", flush=True)
        rng = np.random.default_rng(args.seed)
        for share in args.shares:
            allowed = np.sort(rng.choice(args.size, int(share * args.size), replace=False))
            live = np.zeros(args.size, dtype=bool)
            live[allowed] = True
            truth = exact_top_k(vectors, args.size, queries, live)
            row = {"passing": f"{share:.0%}", **measure(reader, queries, truth, allowed)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{'passing':<8} {'rows':>8} {'1q p50 ms':>9} {'1q p99 ms':>9} {'R@10':>6} "
        f"{'short':>6} {'top-100 then filter R@10':>25}"
    )
    for row in rows:
        print(
            f"{row['passing']:<8} {row['passing_rows']:>8} {row['p50_ms']:>9.2f} "
            f"{row['p99_ms']:>9.2f} {row['recall']:>6.3f} {row['short_answers']:>6} "
            f"{row['naive_recall']:>25.3f}"
        )
    return rows


if __name__ == "__main__":
    main()
