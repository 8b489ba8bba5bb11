"""Packing: train an index type once, and turn staged Flat shards into shards of that type.

Vectors arrive in exact `Flat` shards (resumable, searchable at once). When an index's type
is another, packing
1. decides the type: an explicit factory string as asked, or for `auto` the choice of
   `choose_index_type` over every vector of the index (made once: it is fixed as soon as
   there is a trained index);
2. trains it once on a uniform random sample of the staged vectors (not the first ones to
   arrive: collections are often sorted by class) and saves the empty trained index as
   `trained.faiss`, its sha256 in the manifest. Every packed shard is a clone of it, so all
   shards share one PCA, one set of centroids and one code book, and their scores compare;
3. packs each run of consecutive staged shards into shards of up to `packed_shard_size`
   vectors (about 2 GiB): every shard searched costs a PCA projection and a coarse search,
   so fewer, larger shards answer faster. Deleted rows of staged shards are left out (the
   sample, too, is drawn from live rows only).

A later run may ask for another type or memory budget: `change_index_type` then unpacks a
packed index (its shards become staged Flat shards of the vectors their codes reconstruct,
the trained index is dropped) and packing starts again with the new type. The new type is
recorded only by the packing itself: a run that fails to pack leaves the index as it was.

Crash safety: a packed shard's files are written (temp + fsync + rename) before the manifest
swaps it in for the staged shards it replaces, and those are deleted only afterwards. After a
crash the manifest lists either the staged or the packed shards; unlisted files are removed
the next time the index is opened for writing, and packing resumes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dior_search.errors import IndexStoreError
from dior_search.store.files import atomic_file, sha256_file, verify_file
from dior_search.store.index_types import (
    AUTO,
    FLAT,
    GiB,
    canonical_spec,
    choose_index_type,
    default_search_params,
    format_size,
    make_index,
    train_index,
    training_minimum,
    training_size,
)
from dior_search.store.manifest import (
    TRAINED,
    Manifest,
    Shard,
    Trained,
    next_shard_number,
    shard_name,
    write_manifest,
)
from dior_search.store.schema import normalize
from dior_search.store.shards import (
    faiss_path,
    parquet_path,
    read_index_file,
    read_shard_index,
    read_table,
    read_tombstones,
    reconstruct_ids,
    remove_shard_files,
    staged_vectors,
    write_faiss,
    write_index_file,
    write_table,
    written_shard,
)

log = logging.getLogger(__name__)

PACKED_SHARD_BYTES = 2 * GiB
TRAIN_SEED = 0
ADD_CHUNK = 16_384


def pack_staged_shards(directory: Path, manifest: Manifest) -> None:
    """Train the manifest's index type if needed and pack its staged shards (see module)."""
    before = (manifest.index_type, manifest.search_params)
    target = decide_index_type(manifest)
    staged = [s for s in manifest.shards if s.index_type == FLAT]
    if target == FLAT or not any(s.live for s in staged):
        if (manifest.index_type, manifest.search_params) != before and manifest.shards:
            write_manifest(directory, manifest)
        return
    if manifest.trained is None:
        trained = train(directory, manifest, staged, target)
        if trained is None:
            return
    else:
        trained = load_trained(directory, manifest)
    for group in staged_groups(manifest.shards, manifest.packed_shard_size):
        pack_group(directory, manifest, trained, group)


def decide_index_type(manifest: Manifest) -> str:
    """The type to pack into; `auto` chooses it from the index's size the first time."""
    untouched = manifest.trained is None and all(s.index_type == FLAT for s in manifest.shards)
    if manifest.index_spec == AUTO and untouched:
        choice = choose_index_type(manifest.rows, manifest.dim, manifest.memory_budget)
        if choice.factory != manifest.index_type:
            log.info(
                "auto index type for %d vectors of dimension %d: %s (%s, about %s)",
                manifest.rows,
                manifest.dim,
                choice.factory,
                choice.reason,
                format_size(choice.bytes_estimate),
            )
        manifest.index_type = choice.factory
        manifest.search_params = choice.search_params
    return manifest.index_type


def train(directory: Path, manifest: Manifest, staged: list[Shard], target: str) -> Any | None:
    """Train `target` on a sample of the staged vectors and record it; None if too few."""

    empty = make_index(target, manifest.dim)
    rows = sum(s.live for s in staged)
    if rows < training_minimum(empty):
        log.warning(
            "%s: index type %s needs at least %d vectors to train, the index has %d; its "
            "shards stay Flat (exact) until a later run adds more",
            directory,
            target,
            training_minimum(empty),
            rows,
        )
        return None
    size = max(training_size(empty, rows), min(rows, 1000))
    started = time.perf_counter()
    sample = sample_vectors(directory, staged, size, TRAIN_SEED, manifest.dim)
    if not manifest.search_params:
        manifest.search_params = default_search_params(empty)
    trained = train_index(target, manifest.dim, sample, manifest.search_params)
    per_vector = bytes_per_vector(trained, sample[:1000])
    path = directory / TRAINED
    with atomic_file(path) as tmp:
        write_index_file(trained, tmp)
    manifest.trained = Trained(TRAINED, sha256_file(path), size, TRAIN_SEED, per_vector)
    if manifest.packed_shard_size <= 0:
        manifest.packed_shard_size = max(manifest.shard_size, PACKED_SHARD_BYTES // per_vector)
    write_manifest(directory, manifest)
    log.info(
        "trained %s on %d vectors in %.1f s (%d bytes per vector)",
        target,
        size,
        time.perf_counter() - started,
        per_vector,
    )
    return trained


def load_trained(directory: Path, manifest: Manifest) -> Any:
    if manifest.trained is None:
        raise IndexStoreError(f"index {directory} has no trained index to pack into")
    path = directory / manifest.trained.name
    verify_file(path, manifest.trained.sha256)
    return read_index_file(path)


def sample_vectors(
    directory: Path, shards: Sequence[Shard], size: int, seed: int, dim: int
) -> np.ndarray:
    """`size` live vectors drawn uniformly without replacement from staged shards."""
    import faiss

    total = sum(s.live for s in shards)
    picks = np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))
    sample = np.empty((size, dim), dtype=np.float32)
    start = 0
    for shard in shards:
        low, high = np.searchsorted(picks, [start, start + shard.live])
        if high > low:
            index = read_shard_index(faiss_path(directory, shard), mmap=True)
            flat = faiss.downcast_index(index.index)
            stored_ids = faiss.vector_to_array(index.id_map)
            live = np.flatnonzero(~np.isin(stored_ids, read_tombstones(directory, shard)))
            sample[low:high] = flat.reconstruct_batch(live[picks[low:high] - start])
        start += shard.live
    return sample


def bytes_per_vector(trained: Any, sample: np.ndarray) -> int:
    """Bytes a vector adds to a shard file of this type, measured on a clone."""
    import faiss

    probe = clone_index(trained)
    empty = len(faiss.serialize_index(probe))
    probe.add_with_ids(sample, np.arange(len(sample), dtype=np.int64))
    return max(1, math.ceil((len(faiss.serialize_index(probe)) - empty) / len(sample)))


def staged_groups(shards: Sequence[Shard], packed_shard_size: int) -> list[list[Shard]]:
    """Runs of consecutive staged shards, cut at `packed_shard_size` vectors (at least one)."""
    groups: list[list[Shard]] = []
    current: list[Shard] = []
    for shard in [*shards, None]:
        full = current and sum(s.live for s in current) + (shard.live if shard else 0) > max(
            packed_shard_size, 1
        )
        if shard is None or shard.index_type != FLAT or full:
            if current:
                groups.append(current)
            current = []
        if shard is not None and shard.index_type == FLAT:
            current.append(shard)
    return groups


def clone_index(trained: Any) -> Any:
    """A copy of an (empty, trained) index to fill."""
    import faiss

    return faiss.deserialize_index(faiss.serialize_index(trained))


def pack_group(directory: Path, manifest: Manifest, trained: Any, group: list[Shard]) -> None:
    """Replace consecutive staged shards by one packed shard of their live rows, crash-safely
    (a group without live rows is dropped)."""
    import pyarrow as pa

    started = time.perf_counter()
    index = clone_index(trained)
    tables, kept = [], []
    for shard in group:
        verify_file(faiss_path(directory, shard), shard.faiss_sha256)
        verify_file(parquet_path(directory, shard), shard.parquet_sha256)
        ids, vectors = staged_vectors(faiss_path(directory, shard))
        live = ~np.isin(ids, read_tombstones(directory, shard))
        ids, vectors = ids[live], np.ascontiguousarray(vectors[live])
        for low in range(0, len(ids), ADD_CHUNK):
            index.add_with_ids(vectors[low : low + ADD_CHUNK], ids[low : low + ADD_CHUNK])
        tables.append(read_table(parquet_path(directory, shard)).filter(pa.array(live)))
        kept.append(ids)
    rows = sum(s.live for s in group)
    if index.ntotal != rows:
        raise IndexStoreError(f"packing {directory}: read {index.ntotal} vectors, expected {rows}")
    position = manifest.shards.index(group[0])
    name = shard_name(next_shard_number(manifest))
    if rows:
        with atomic_file(faiss_path(directory, name)) as tmp:
            write_index_file(index, tmp)
        with atomic_file(parquet_path(directory, name)) as tmp:
            write_table(pa.concat_tables(tables, promote_options="default"), tmp)
        packed = [written_shard(directory, name, np.concatenate(kept), manifest.index_type)]
    else:
        packed = []
    manifest.shards[position : position + len(group)] = packed
    write_manifest(directory, manifest)
    for shard in group:
        remove_shard_files(directory, shard)
    log.info(
        "packed %d staged shards (%d vectors) into %s in %.1f s",
        len(group),
        rows,
        name,
        time.perf_counter() - started,
    )


def change_index_type(
    directory: Path, manifest: Manifest, spec: str | None, memory_budget: int | None
) -> str | None:
    """Make `manifest` ask for `spec` and `memory_budget` (None: keep), unpacking a packed
    index whose type must change; what changed, or None. `pack_staged_shards` then packs."""
    spec = None if spec is None else canonical_spec(spec)
    new_spec = spec if spec is not None and spec != manifest.index_spec else None
    new_budget = memory_budget if memory_budget not in (None, manifest.memory_budget) else None
    if new_spec is None and new_budget is None:
        return None
    changes = []
    if new_spec is not None:
        changes.append(f"index type {manifest.index_spec!r} -> {new_spec!r}")
    if new_budget is not None:
        changes.append(
            f"memory budget {format_size(manifest.memory_budget)} -> {format_size(new_budget)}"
        )
    target = new_spec or manifest.index_spec
    packed = manifest.trained is not None or any(s.index_type != FLAT for s in manifest.shards)
    if packed and must_repack(manifest, target, new_budget or manifest.memory_budget):
        was = manifest.index_type
        unpacked = unpack(directory, manifest)
        changes.append(f"{unpacked} vectors unpacked from their {was} codes to be packed again")
    if new_spec is not None:
        manifest.index_spec = new_spec
        manifest.index_type = FLAT if new_spec == AUTO else new_spec
        manifest.search_params = ""
    if new_budget is not None:
        manifest.memory_budget = new_budget
    return "; ".join(changes)


def must_repack(manifest: Manifest, spec: str, memory_budget: int) -> bool:
    """Whether packed shards must change for the index to be of type `spec` (auto: the type
    auto chooses for its size within `memory_budget`)."""
    if spec != AUTO:
        return spec != manifest.index_type
    choice = choose_index_type(manifest.rows, manifest.dim, memory_budget)
    return choice.factory != manifest.index_type


def unpack(directory: Path, manifest: Manifest) -> int:
    """Turn the packed shards back into staged Flat shards (of the vectors their codes
    reconstruct, at most `shard_size` each; deleted rows are left out) and drop the trained
    index; vectors unpacked.

    The staged files are written before the manifest lists them in place of the packed ones,
    which are deleted afterwards: after a crash the manifest lists one set or the other.
    """
    import faiss
    import pyarrow as pa

    number = next_shard_number(manifest)
    shards: list[Shard] = []
    unpacked = 0
    for shard in manifest.shards:
        if shard.index_type == FLAT:
            shards.append(shard)
            continue
        verify_file(faiss_path(directory, shard), shard.faiss_sha256)
        verify_file(parquet_path(directory, shard), shard.parquet_sha256)
        index = read_shard_index(faiss_path(directory, shard), mmap=True)
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        table = read_table(parquet_path(directory, shard))
        if table.column("id").to_pylist() != ids.tolist():
            raise IndexStoreError(f"{parquet_path(directory, shard)} does not match its index")
        live = ~np.isin(ids, read_tombstones(directory, shard))
        ids, table = ids[live], table.filter(pa.array(live))
        for low in range(0, len(ids), manifest.shard_size):
            chunk = ids[low : low + manifest.shard_size]
            name = shard_name(number)
            number += 1
            with atomic_file(faiss_path(directory, name)) as tmp:
                write_faiss(tmp, normalize(reconstruct_ids(index, chunk)), chunk, FLAT)
            with atomic_file(parquet_path(directory, name)) as tmp:
                write_table(table.slice(low, len(chunk)), tmp)
            shards.append(written_shard(directory, name, chunk, FLAT))
        unpacked += len(ids)
    retired = [s for s in manifest.shards if s.index_type != FLAT]
    trained = manifest.trained
    manifest.shards = shards
    manifest.trained = None
    manifest.packed_shard_size = 0
    manifest.search_params = ""
    write_manifest(directory, manifest)
    for shard in retired:
        remove_shard_files(directory, shard)
    if trained is not None:
        (directory / trained.name).unlink(missing_ok=True)
    return unpacked
