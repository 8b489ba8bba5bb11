"""What reading Parquet on the calling thread costs: the store's reads (`ParquetTable`, no
Arrow threads, no pre-buffering) against pyarrow's defaults (threads and pre-buffering), on
shard tables as `dior-search index` writes them.

    python benchmarks/parquet_reads.py [--rows 10000 50000] [--repeats 30]

Each table has a shard's columns (id, path, content_hash, norm, three labels and the three
answer columns). Timed, per size: the whole table (what a sync's rewrite and a compaction
read), one string column (`path`, as a query's hits and a filter read it) and the `id` column
(as a reader opens a shard); each from a native file and through a Python file object. The
figure is the median of `--repeats` reads after one warm-up; the ratio is ours / pyarrow's
in the same run (above 1: ours slower).
"""

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dior_search.data.parquet import ParquetTable
from dior_search.models.answers import Answer
from dior_search.store.schema import Row
from dior_search.store.shards import write_parquet

COLORS = ("red", "green", "blue", "yellow", "black", "white")
LABELS = ("color", "pattern", "shape")


def write_shard(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(COLORS), size=(rows, len(LABELS)))
    write_parquet(
        path,
        np.arange(rows, dtype=np.int64),
        rng.uniform(1, 90, rows).astype(np.float32),
        [
            Row(
                f"photos/2026/{n // 1000:03d}/img_{n:07d}.jpg",
                f"{n:064x}",
                {name: COLORS[c] for name, c in zip(LABELS, pick, strict=True)},
            )
            for n, pick in enumerate(picks)
        ],
        [Answer(COLORS[pick[0]], -0.1, 12.5) for pick in picks],
    )


def median_ms(read: Callable[[], Any], repeats: int) -> float:
    read()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        read()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def ours(path: Path, columns: list[str] | None, python_file: bool) -> Callable[[], Any]:
    def read() -> Any:
        if python_file:
            with path.open("rb") as handle:
                return ParquetTable(handle).read(columns)
        return ParquetTable(str(path)).read(columns)

    return read


def defaults(path: Path, columns: list[str] | None, python_file: bool) -> Callable[[], Any]:
    import pyarrow.parquet as pq

    def read() -> Any:
        if python_file:
            with path.open("rb") as handle:
                return pq.ParquetFile(handle).read(columns)
        return pq.ParquetFile(str(path)).read(columns)

    return read


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    print("| rows | read | file | ours (ms) | pyarrow defaults (ms) | ours / defaults |")
    print("| ---: | --- | --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as work:
        for rows in args.rows:
            path = Path(work) / f"shard-{rows}.parquet"
            write_shard(path, rows)
            for name, columns in (("whole table", None), ("path", ["path"]), ("id", ["id"])):
                for python_file in (False, True):
                    mine = median_ms(ours(path, columns, python_file), args.repeats)
                    theirs = median_ms(defaults(path, columns, python_file), args.repeats)
                    kind = "Python file" if python_file else "native"
                    print(
                        f"| {rows:,} | {name} | {kind} | {mine:.2f} | {theirs:.2f} "
                        f"| {mine / theirs:.2f}x |"
                    )


if __name__ == "__main__":
    # A process that read through a Python file with Arrow's threads may abort at exit
    # (see dior_search/data/parquet.py); this one does so on purpose, for the comparison.
    import os
    import sys

    main()
    sys.stdout.flush()
    os._exit(0)
