"""Compaction: rewrite shards without their deleted rows once those pass a share of the shard.

A deleted row stays in its shard's files (listed in the shard's tombstones) until its shard is
rewritten: searches filter it out, but it still takes memory and search time. Compaction
rewrites every shard whose deleted rows are more than `threshold` of its rows (default 20%)
as a new shard of its live rows:

- a Flat shard (staged, or of a Flat index) copies its exact vectors;
- a packed shard (IVF, PCA, HNSW, ...) is a new clone of the index's `trained.faiss`, so it
  keeps the training every other shard shares, filled with the vectors its codes
  reconstruct (with a Refine copy they are the vectors written, to fp16 or 8-bit precision).

A shard whose rows are all deleted is dropped. Ids, paths and labels of live rows do not
change. Crash safety is packing's: the new shard's files are written (temp + fsync + rename)
before the manifest replaces the old shard by it in one commit, and the old files are deleted
only after; the next writer removes whichever files the manifest does not list.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from dior_search.store.backend import Compaction
from dior_search.store.files import atomic_file, verify_file
from dior_search.store.index_types import FLAT
from dior_search.store.manifest import (
    Manifest,
    Shard,
    next_shard_number,
    shard_name,
    write_manifest,
)
from dior_search.store.packing import ADD_CHUNK, clone_index, load_trained
from dior_search.store.shards import (
    faiss_path,
    parquet_path,
    read_ids,
    read_shard_index,
    read_table,
    read_tombstones,
    reconstruct_ids,
    reconstruct_rows,
    remove_shard_files,
    write_faiss,
    write_index_file,
    write_table,
    written_shard,
)

log = logging.getLogger(__name__)


def needs_compaction(shard: Shard, threshold: float) -> bool:
    """Whether a shard's deleted rows are more than `threshold` of its rows (0: any)."""
    return shard.deleted > 0 and shard.deleted > threshold * shard.rows


def compact_shards(directory: Path, manifest: Manifest, threshold: float) -> Compaction:
    """Rewrite (or drop) every shard of `manifest` that needs compaction; one commit each."""
    done = Compaction()
    started = time.perf_counter()
    trained = None
    for shard in [s for s in manifest.shards if needs_compaction(s, threshold)]:
        if shard.index_type != FLAT and trained is None:
            trained = load_trained(directory, manifest)
        rewrite_shard(directory, manifest, shard, trained, done)
    done.seconds = time.perf_counter() - started
    if done.shards_rewritten or done.shards_dropped:
        log.info(
            "compacted %s: %d shards rewritten, %d dropped, %d deleted rows removed in %.1f s",
            directory,
            done.shards_rewritten,
            done.shards_dropped,
            done.rows_dropped,
            done.seconds,
        )
    return done


def rewrite_shard(
    directory: Path, manifest: Manifest, shard: Shard, trained: Any | None, done: Compaction
) -> None:
    """Replace `shard` by a shard of its live rows (none: drop it), crash-safely."""
    import pyarrow as pa

    verify_file(faiss_path(directory, shard), shard.faiss_sha256)
    dead = read_tombstones(directory, shard)
    ids = read_ids(directory, shard)
    keep = ~np.isin(ids, dead)
    live = ids[keep]
    position = manifest.shards.index(shard)
    if len(live) == 0:
        manifest.shards.pop(position)
        done.shards_dropped += 1
    else:
        name = shard_name(next_shard_number(manifest))
        index = read_shard_index(faiss_path(directory, shard), mmap=True)
        with atomic_file(faiss_path(directory, name)) as tmp:
            if shard.index_type == FLAT:
                write_flat(tmp, index, keep, live)
            else:
                write_packed(tmp, index, trained, live)
        table = read_table(parquet_path(directory, shard)).filter(pa.array(keep))
        with atomic_file(parquet_path(directory, name)) as tmp:
            write_table(table, tmp)
        manifest.shards[position] = written_shard(directory, name, live, shard.index_type)
        done.shards_rewritten += 1
    write_manifest(directory, manifest)
    done.rows_dropped += len(dead)
    remove_shard_files(directory, shard)


def write_flat(path: Path, index: Any, keep: np.ndarray, live: np.ndarray) -> None:
    """The exact live vectors of a Flat shard, as a new Flat shard."""
    import faiss

    vectors = reconstruct_rows(faiss.downcast_index(index.index), 0, index.ntotal)
    write_faiss(path, np.ascontiguousarray(vectors[keep]), live, FLAT)


def write_packed(path: Path, index: Any, trained: Any, live: np.ndarray) -> None:
    """The live vectors of a packed shard (as its codes give them), in a clone of the trained
    index, a chunk at a time (a packed shard's vectors need not fit in memory at once)."""
    rewritten = clone_index(trained)
    for low in range(0, len(live), ADD_CHUNK):
        chunk = live[low : low + ADD_CHUNK]
        rewritten.add_with_ids(reconstruct_ids(index, chunk), chunk)
    write_index_file(rewritten, path)
