"""Writing one index directory: vectors appended a shard at a time, resumable, crash-safe.

Every file is written to a temporary name, fsynced and renamed into place, and the manifest
is replaced after each shard, so an interrupted run loses at most the shard in progress.
Files that the manifest does not list are leftovers of such a run and are removed on resume.

Vectors are staged as exact `Flat` shards while they arrive; when the index type is another
(see index_types), `pack()` trains it once on a sample of the staged vectors and packs the
staged shards into shards of that type (see packing). A type or memory budget asked for with
`set_index_type` takes effect there too (repacking a packed index) and is recorded only once
it is packed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType

import numpy as np

from dior_search.errors import IndexStoreError
from dior_search.store.files import (
    atomic_file,
    error_reason,
    io_errors,
    sha256_file,
    take_lock,
    verify_file,
)
from dior_search.store.index_types import FLAT, canonical_spec
from dior_search.store.manifest import (
    MANIFEST,
    SHARD_PREFIX,
    TRAINED,
    Manifest,
    Shard,
    check_same_embedder,
    next_shard_number,
    now,
    shard_name,
    write_manifest,
)
from dior_search.store.packing import change_index_type, pack_staged_shards
from dior_search.store.shards import (
    Row,
    faiss_path,
    normalize,
    parquet_path,
    read_table,
    write_faiss,
    write_parquet,
)

log = logging.getLogger(__name__)


class IndexWriter:
    """Appends vectors to one index directory, a shard at a time; resumes where it stopped.

    Holds the directory's lock from construction to `close()`, which writes what is queued
    and packs, or `abort()`, which drops it; a `with` block closes on success and aborts on
    an exception. `packs=False` (a part of a distributed run) keeps the shards Flat: the run
    that merges the parts trains and packs them.
    """

    def __init__(
        self,
        directory: Path,
        new_manifest: Manifest,
        packs: bool = True,
        wait_for_lock: bool = False,
    ) -> None:
        self.directory = directory
        self.packs = packs
        with io_errors(f"cannot write index {directory}"):
            directory.mkdir(parents=True, exist_ok=True)
            self.lock = take_lock(directory, wait_for_lock)
        try:
            with io_errors(f"cannot open index {directory} for writing"):
                self.manifest = self.open_manifest(new_manifest)
                self.remove_leftovers()
                self.known_hashes = self.read_hashes()
        except BaseException:
            self.lock.close()
            raise
        self.next_id = self.manifest.next_id
        self.vectors: list[np.ndarray] = []
        self.rows: list[Row] = []
        self.ids: list[int] = []
        # The index type and memory budget asked for (None: the index's own), and what
        # packing changed, for the run's report.
        self.asked: tuple[str | None, int | None] = (None, None)
        self.notes: list[str] = []

    def open_manifest(self, new_manifest: Manifest) -> Manifest:
        """The index's manifest, or `new_manifest` published at once for a new index."""
        directory = self.directory
        if (directory / MANIFEST).is_file():
            manifest = Manifest.read(directory)
            check_same_embedder(directory, manifest.embedder, new_manifest.embedder)
            if manifest.condition != new_manifest.condition:
                raise IndexStoreError(
                    f"index {directory} is for condition {manifest.condition}, "
                    f"not {new_manifest.condition}"
                )
            return manifest
        new_manifest.created = now()
        # Published at once, empty: the directory is an index from its first moment.
        write_manifest(directory, new_manifest)
        return new_manifest

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if error is None:
            self.close()
        else:
            self.abort()

    def remove_leftovers(self) -> None:
        listed = {s.name for s in self.manifest.shards}
        if self.manifest.trained is not None:
            listed.add(self.manifest.trained.name)
        for path in self.directory.iterdir():
            stem = path.name.split(".")[0]
            is_shard_file = stem.startswith(SHARD_PREFIX) and stem not in listed
            is_trained_file = path.name == TRAINED and TRAINED not in listed
            if is_shard_file or is_trained_file or path.name.endswith(".tmp"):
                log.info("removing %s, left by an interrupted run", path)
                path.unlink()

    def read_hashes(self) -> set[str]:
        hashes: set[str] = set()
        for shard in self.manifest.shards:
            path = parquet_path(self.directory, shard)
            verify_file(path, shard.parquet_sha256)
            column = read_table(path, ["content_hash"]).column("content_hash")
            hashes.update(column.to_pylist())
        return hashes

    def set_index_type(self, spec: str | None, memory_budget: int | None) -> None:
        """Ask for another index type or memory budget (None: keep the index's own).

        It takes effect when the run packs (`close()`): staged shards are packed into it, and
        an index already packed into another type is unpacked and packed again.
        """
        self.asked = (None if spec is None else canonical_spec(spec), memory_budget)

    def add(self, vector: np.ndarray, row: Row, row_id: int | None = None) -> None:
        """Queue one vector (with the next id, or `row_id`); a full shard is written at once."""
        floor = self.ids[-1] + 1 if self.ids else self.next_id
        if row_id is None:
            row_id = floor
        elif row_id < floor:
            raise IndexStoreError(f"id {row_id} is not above the ids already in {self.directory}")
        self.known_hashes.add(row.content_hash)
        self.vectors.append(vector)
        self.rows.append(row)
        self.ids.append(row_id)
        if len(self.rows) >= self.manifest.shard_size:
            self.write_shard()

    def write_shard(self) -> None:
        """Write the queued vectors as a new shard and publish it in the manifest."""
        if not self.rows:
            return
        name = shard_name(next_shard_number(self.manifest))
        ids = np.array(self.ids, dtype=np.int64)
        raw = np.stack(self.vectors).astype(np.float32)
        norms = np.linalg.norm(raw, axis=1)
        vectors = normalize(raw)
        published = list(self.manifest.shards)
        try:
            # Staged as exact vectors: pack() turns them into the index type.
            with atomic_file(faiss_path(self.directory, name)) as tmp:
                write_faiss(tmp, vectors, ids, FLAT)
            with atomic_file(parquet_path(self.directory, name)) as tmp:
                write_parquet(tmp, ids, norms, self.rows)
            self.manifest.shards.append(
                Shard(
                    name,
                    len(self.rows),
                    int(ids[0]),
                    sha256_file(faiss_path(self.directory, name)),
                    sha256_file(parquet_path(self.directory, name)),
                    last_id=int(ids[-1]),
                )
            )
            write_manifest(self.directory, self.manifest)
        except (OSError, RuntimeError) as exc:  # FAISS reports write failures as RuntimeError
            # The manifest on disk still lists only the earlier shards; files of this one are
            # leftovers that the next run removes.
            self.manifest.shards = published
            reason = error_reason(exc)
            raise IndexStoreError(
                f"cannot write {name} in {self.directory}: {reason}; the index keeps its "
                f"{self.manifest.rows} rows written before"
            ) from None
        self.next_id = int(ids[-1]) + 1
        self.vectors, self.rows, self.ids = [], [], []

    def pack(self) -> None:
        """Train the index type if needed and pack the staged Flat shards into it."""
        if not self.packs:
            return
        manifest = self.manifest
        with io_errors(f"cannot pack index {self.directory}"):
            changed = change_index_type(self.directory, manifest, *self.asked)
            pack_staged_shards(self.directory, manifest)
            if changed is not None:
                write_manifest(self.directory, manifest)  # records the type once it is packed
        if changed is not None:
            self.notes.append(f"{changed}; the index is now {manifest.index_type}")

    def close(self) -> None:
        """Write what is queued (a last, partial shard), pack, and release the lock."""
        try:
            self.write_shard()
            self.pack()
        finally:
            self.abort()

    def abort(self) -> None:
        """Release the lock; anything still queued is dropped, the index stays as published."""
        self.lock.close()
