"""Search at scale: build time, index size, serving memory, latency and recall@10 vs exact.

    python benchmarks/search_scale.py [--sizes 100000 1000000] [--queries 1000]
        [--index-type auto] [--memory-budget 8G] [--search-params nprobe=64]
        [--workdir DIR] [--quick]

Vectors are generated chunk by chunk from seeds (the full set is never held in memory), at
d = 3584 (Qwen2.5-VL-7B's hidden size), with a low-dimensional cluster structure like LVLM
embeddings: points around 2,000 centres in a 64-dimensional latent space with a decaying
spectrum, mapped into d dimensions, plus a direction all vectors share (hidden states have a
large common component: random pairs have cosine ~0.5) and isotropic noise (which decides the
order among close neighbours), L2-normalised. Queries come from the same distribution.

Per size:
1. build, in this process: the vectors go through the store's own IndexWriter, as
   `dior-search index` writes them (Flat staging shards, then training and packing into the
   index type); the exact top-10 of every query is computed by brute force as the chunks are
   generated;
2. serve, in a fresh child process: the index is loaded with IndexReader (memory-mapped,
   checksums verified), queried one at a time and in batches of 64, and the child reports
   its latencies, recall@10 against the exact top-10, and its own peak RSS.

With --workdir DIR the built indexes are kept (DIR/n<N>/) and a later run with the same
size and type only serves: re-measure other --search-params without rebuilding.
"""

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results_file import write_results

from dior_search.defaults import DEFAULT_TEMPLATE
from dior_search.models.embedder import EmbedderDescription
from dior_search.models.prompts import build_prompt
from dior_search.models.settings import DiorSettings
from dior_search.store.index_types import DEFAULT_MEMORY_BUDGET, canonical_spec, parse_size
from dior_search.store.manifest import Manifest
from dior_search.store.reader import IndexReader
from dior_search.store.schema import Row
from dior_search.store.writer import IndexWriter

DIM = 3584
CHUNK = 10_000
K = 10
BATCH = 64


class Vectors:
    """Seeded generator of embedding-like unit vectors, chunk by chunk."""

    def __init__(self, dim: int = DIM, latent: int = 64, clusters: int = 2000, seed: int = 0):
        rng = np.random.default_rng([seed, 0])
        self.dim, self.seed, self.spread = dim, seed, 0.5
        self.scales = (1.0 / np.sqrt(1 + np.arange(latent) / 8)).astype(np.float32)
        self.basis = (rng.normal(size=(latent, dim)) / np.sqrt(latent)).astype(np.float32)
        self.centres = rng.normal(size=(clusters, latent)).astype(np.float32)
        probe = self.latent_part(rng, 1000) @ self.basis
        signal = float(np.linalg.norm(probe, axis=1).mean())
        offset = rng.normal(size=dim).astype(np.float32)
        self.offset = offset / np.linalg.norm(offset) * signal
        self.noise = 0.25 * signal / np.sqrt(dim)

    def latent_part(self, rng: np.random.Generator, n: int) -> np.ndarray:
        centres = self.centres[rng.integers(len(self.centres), size=n)]
        spread = self.spread * rng.standard_normal((n, len(self.scales)), dtype=np.float32)
        return (centres + spread) * self.scales

    def chunk(self, stream: int, number: int, n: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream, number])
        x = self.latent_part(rng, n) @ self.basis + self.offset
        x += self.noise * rng.standard_normal((n, self.dim), dtype=np.float32)
        unit: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
        return unit


def bench_manifest(spec: str, budget: int, shard_size: int, dim: int = DIM) -> Manifest:
    return Manifest(
        collection={"name": "generated", "root": "/dev/null"},
        condition={"name": "generated", "text": None},
        prompt=build_prompt(DEFAULT_TEMPLATE, None),
        # Generated vectors: no model made them; the description only names the benchmark.
        embedder=EmbedderDescription(
            DiorSettings(model="search_scale"), "generated", None, "generated", "float32", dim
        ),
        dim=dim,
        index_type="Flat" if spec == "auto" else spec,
        index_spec=spec,
        memory_budget=budget,
        shard_size=shard_size,
    )


def top_k_merge(scores, ids, new_scores, new_ids):
    """Keep the K best (score, id) per row of two candidate sets."""
    scores = np.hstack([scores, new_scores])
    ids = np.hstack([ids, new_ids])
    best = np.argpartition(-scores, K - 1, axis=1)[:, :K]
    return np.take_along_axis(scores, best, axis=1), np.take_along_axis(ids, best, axis=1)


def build(folder: Path, n: int, n_queries: int, spec: str, budget: int, shard_size: int) -> dict:
    """Write n generated vectors through the store and the exact top-K of every query."""
    vectors = Vectors()
    queries = vectors.chunk(2, 0, n_queries)
    scores = np.full((n_queries, K), -np.inf, dtype=np.float32)
    truth = np.full((n_queries, K), -1, dtype=np.int64)
    writer = IndexWriter(folder / "index", bench_manifest(spec, budget, shard_size))
    generate = exact = add = 0.0
    for number, start in enumerate(range(0, n, CHUNK)):
        began = time.perf_counter()
        chunk = vectors.chunk(1, number, min(CHUNK, n - start))
        generated = time.perf_counter()
        # Exact ground truth, block by block: inner product of unit vectors is cosine.
        block = queries @ chunk.T
        ids = np.arange(start, start + len(chunk), dtype=np.int64)
        scores, truth = top_k_merge(scores, truth, block, np.broadcast_to(ids, block.shape))
        searched = time.perf_counter()
        for offset, vector in enumerate(chunk):
            writer.add(vector, Row(f"v{start + offset:08d}", f"{start + offset:016x}"))
        generate += generated - began
        exact += searched - generated
        add += time.perf_counter() - searched
    began = time.perf_counter()
    writer.close()
    pack = time.perf_counter() - began
    order = np.argsort(-scores, axis=1)
    np.save(folder / "queries.npy", queries)
    np.save(folder / "truth.npy", np.take_along_axis(truth, order, axis=1))
    manifest = Manifest.read(folder / "index")
    stats = {
        "n": n,
        "spec": spec,
        "budget": budget,
        "index_type": manifest.index_type,
        "shards": len(manifest.shards),
        "train_size": manifest.trained.train_size if manifest.trained else 0,
        "generate_s": generate,
        "exact_s": exact,
        "build_s": add + pack,
        "pack_s": pack,
        "index_bytes": sum(
            p.stat().st_size
            for p in (folder / "index").iterdir()
            if p.suffix in (".faiss", ".parquet")
        ),
        "build_peak_rss": peak_rss(),
    }
    (folder / "build.json").write_text(json.dumps(stats))
    return stats


def serve(folder: Path, search_params: str) -> dict:
    """Run in a fresh process: load the index, time queries, measure recall and peak RSS."""
    queries = np.load(folder / "queries.npy")
    truth = np.load(folder / "truth.npy")
    began = time.perf_counter()
    reader = IndexReader(folder / "index", mmap=True, search_params=search_params)
    load = time.perf_counter() - began
    reader.search(queries[:1], K)  # first touch of the mapped pages, not timed
    single, found = [], []
    for query in queries:
        began = time.perf_counter()
        _, ids = reader.search(query[None, :], K)
        single.append(time.perf_counter() - began)
        found.append(ids[0])
    batches = []
    for start in range(0, len(queries) - BATCH + 1, BATCH):
        began = time.perf_counter()
        reader.search(queries[start : start + BATCH], K)
        batches.append(time.perf_counter() - began)
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return {
        "search_params": reader.search_params,
        "load_s": load,
        "single_ms": [1000 * np.percentile(single, q) for q in (50, 99)],
        "batch_ms": [1000 * np.percentile(batches, q) for q in (50, 99)] if batches else [0, 0],
        "recall": sum(hits) / (K * len(truth)),
        "serve_peak_rss": peak_rss(),
    }


def peak_rss() -> int:
    """This process's peak resident set in bytes.

    VmHWM, not getrusage: Linux carries ru_maxrss over fork and exec, so a child would
    report its parent's peak if that was higher.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--index-type", default="auto")
    parser.add_argument("--memory-budget", default=None, help="e.g. 8G (default: 8G)")
    parser.add_argument("--search-params", default="", help="e.g. nprobe=64,k_factor_rf=8")
    parser.add_argument("--shard-size", type=int, default=50_000)
    parser.add_argument("--workdir", type=Path, help="keep indexes here (default: temporary)")
    parser.add_argument("--quick", action="store_true", help="one size of 60,000, 200 queries")
    parser.add_argument("--tag", default="", help="results file: search_scale-TAG.json")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        print(json.dumps(serve(args.serve, args.search_params)))
        return
    if args.quick:
        args.sizes, args.queries = [60_000], 200
    # Training and packing report their progress at INFO.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    spec = canonical_spec(args.index_type)
    budget = parse_size(args.memory_budget) if args.memory_budget else DEFAULT_MEMORY_BUDGET
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="search_scale-"))
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    load_start = os.getloadavg()[0]
    print(
        f"d={DIM}, {args.queries} queries, k={K}, OMP_NUM_THREADS={threads}, "
        f"load average at start {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows = []
    try:
        for n in args.sizes:
            folder = workdir / f"n{n}"
            built = folder / "build.json"
            stats = json.loads(built.read_text()) if built.is_file() else None
            if stats is None or (stats["spec"], stats["budget"]) != (spec, budget):
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                stats = build(folder, n, args.queries, spec, budget, args.shard_size)
            command = [sys.executable, __file__, "--serve", str(folder)]
            command += ["--search-params", args.search_params]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"serving {folder} failed:\n{done.stderr}")
            served = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append((stats, served))
            print(json.dumps({**stats, **served}), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    header = (
        f"{'N':>9} {'index type':<36} {'params':<26} {'build s':>8} {'index GiB':>9} "
        f"{'load s':>6} {'RSS GiB':>7} {'1q p50':>7} {'1q p99':>7} {'64q p50':>8} "
        f"{'64q p99':>8} {'R@10':>6}"
    )
    print(header)
    for stats, served in rows:
        print(
            f"{stats['n']:>9} {stats['index_type']:<36} {served['search_params']:<26} "
            f"{stats['build_s']:>8.0f} {gib(stats['index_bytes']):>9} {served['load_s']:>6.1f} "
            f"{gib(served['serve_peak_rss']):>7} {served['single_ms'][0]:>7.2f} "
            f"{served['single_ms'][1]:>7.2f} {served['batch_ms'][0]:>8.1f} "
            f"{served['batch_ms'][1]:>8.1f} {served['recall']:>6.3f}"
        )
    print("latencies in ms (1q: one query; 64q: a batch of 64); RSS: the serving process's peak")
    write_results(
        "search_scale",
        {
            "dim": DIM,
            "queries": args.queries,
            "k": K,
            "omp_num_threads": threads,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg()[0],
            "rows": [{**stats, **served} for stats, served in rows],
        },
        tag=args.tag or ("quick" if args.quick else ""),
    )


if __name__ == "__main__":
    main()
