"""Deletions at scale: query latency and recall@10 with 0%, 10% and 40% of rows deleted, and
compaction time, on a compressed (IVF) index.

    python benchmarks/deletions.py [--size 100000] [--dim 3584] [--queries 1000]
        [--index-type auto] [--shard-size 50000] [--seed 0]

The vectors are search_scale.py's embedding-like ones, written through the store's own
IndexWriter as `dior-search index` writes them (Flat staging shards, then training and
packing; `auto` picks `PCA256,IVF512,SQ8,Refine(SQfp16)` at 100,000 x 3,584). Rows are
deleted at random (one commit each step, as a sync removes vanished images: tombstones, no
rewrite), the index is reopened and every query is timed one at a time; recall@10 is measured
against an exact search over the live rows only. Finally the index is compacted (every shard
rewritten without its deleted rows, from the trained index) and measured again.
"""

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from search_scale import CHUNK, Vectors, bench_manifest

from dior_search.store.index_types import canonical_spec
from dior_search.store.reader import IndexReader
from dior_search.store.schema import Row
from dior_search.store.writer import IndexWriter, compact_index

K = 10
SHARES = (0.0, 0.1, 0.4)


def build(directory: Path, vectors: Vectors, n: int, spec: str, shard_size: int) -> float:
    """Write n generated vectors through the store (ids 0..n-1); seconds taken."""
    began = time.perf_counter()
    writer = IndexWriter(directory, bench_manifest(spec, 8 << 30, shard_size, vectors.dim))
    for number, start in enumerate(range(0, n, CHUNK)):
        for offset, vector in enumerate(vectors.chunk(1, number, min(CHUNK, n - start))):
            writer.add(vector, Row(f"v{start + offset:08d}", f"{start + offset:016x}"))
    writer.close()
    return time.perf_counter() - began


def exact_top_k(vectors: Vectors, n: int, queries: np.ndarray, live: np.ndarray) -> np.ndarray:
    """The exact top K live ids of every query, block by block (the set is never in memory)."""
    scores = np.full((len(queries), K), -np.inf, dtype=np.float32)
    ids = np.full((len(queries), K), -1, dtype=np.int64)
    for number, start in enumerate(range(0, n, CHUNK)):
        chunk = vectors.chunk(1, number, min(CHUNK, n - start))
        block = queries @ chunk.T
        block[:, ~live[start : start + len(chunk)]] = -np.inf
        block_ids = np.broadcast_to(np.arange(start, start + len(chunk)), block.shape)
        scores = np.hstack([scores, block])
        ids = np.hstack([ids, block_ids])
        best = np.argpartition(-scores, K - 1, axis=1)[:, :K]
        scores = np.take_along_axis(scores, best, axis=1)
        ids = np.take_along_axis(ids, best, axis=1)
    return ids


def measure(directory: Path, queries: np.ndarray, truth: np.ndarray) -> dict:
    """Open the index as a server would and time every query alone; recall@10 vs `truth`."""
    reader = IndexReader(directory, mmap=True)
    reader.search(queries[:1], K)  # first touch of the mapped pages, not timed
    times, hits = [], 0
    for query, wanted in zip(queries, truth, strict=True):
        began = time.perf_counter()
        _, found = reader.search(query[None, :], K)
        times.append(time.perf_counter() - began)
        hits += len(set(found[0].tolist()) & set(wanted.tolist()))
        assert (found >= 0).all(), "fewer than k results"
    return {
        "rows": len(reader),
        "deleted_rows": reader.deleted,
        "shards": len(reader.manifest.shards),
        "index_type": reader.manifest.index_type,
        "p50_ms": 1000 * float(np.percentile(times, 50)),
        "p99_ms": 1000 * float(np.percentile(times, 99)),
        "recall": hits / (K * len(queries)),
    }


def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    """The generated index's options (shared with filtered_search.py)."""
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--index-type", default="auto")
    parser.add_argument("--shard-size", type=int, default=50_000)
    parser.add_argument("--workdir", type=Path, help="where the index goes (default: temporary)")


def built_index(args: argparse.Namespace, workdir: Path) -> tuple[Path, Vectors, np.ndarray]:
    """The generated index of `args` built in `workdir` (its folder, vectors and queries)."""
    logging.basicConfig(level=logging.WARNING)
    directory = workdir / "index"
    shutil.rmtree(directory, ignore_errors=True)
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    print(f"n={args.size}, d={args.dim}, {args.queries} queries, k={K}, threads={threads}")
    vectors = Vectors(dim=args.dim)
    queries = vectors.chunk(2, 0, args.queries)
    spec = canonical_spec(args.index_type)
    built = build(directory, vectors, args.size, spec, args.shard_size)
    print(f"built in {built:.0f} s", flush=True)
    return directory, vectors, queries


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_index_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="which rows are deleted")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="deletions-"))
    rows = []
    try:
        directory, vectors, queries = built_index(args, workdir)
        order = np.random.default_rng(args.seed).permutation(args.size)
        live = np.ones(args.size, dtype=bool)
        for share in SHARES:
            doomed = order[int(live.size - live.sum()) : int(share * args.size)]
            if len(doomed):
                writer = IndexWriter.existing(directory)
                writer.delete(np.sort(doomed).tolist())
                writer.commit()
                writer.abort()
                live[doomed] = False
            truth = exact_top_k(vectors, args.size, queries, live)
            rows.append({"deleted": f"{share:.0%}", **measure(directory, queries, truth)})
            print(json.dumps(rows[-1]), flush=True)
        began = time.perf_counter()
        done = compact_index(directory)
        compaction = time.perf_counter() - began
        rows.append(
            {"deleted": f"{SHARES[-1]:.0%}, compacted", **measure(directory, queries, truth)}
        )
        rows[-1]["compaction_s"] = compaction
        rows[-1]["shards_rewritten"] = done.shards_rewritten
        print(json.dumps(rows[-1]), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"index type {rows[0]['index_type']}; compaction took {compaction:.1f} s")
    print(
        f"{'deleted':<16} {'rows':>8} {'shards':>6} {'1q p50 ms':>9} {'1q p99 ms':>9} {'R@10':>6}"
    )
    for row in rows:
        print(
            f"{row['deleted']:<16} {row['rows']:>8} {row['shards']:>6} {row['p50_ms']:>9.2f} "
            f"{row['p99_ms']:>9.2f} {row['recall']:>6.3f}"
        )
    return rows


if __name__ == "__main__":
    main()
