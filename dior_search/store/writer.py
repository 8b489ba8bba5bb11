"""Writing one index directory: rows added and deleted a commit at a time, resumable, crash-safe.

Every file is written to a temporary name, fsynced and renamed into place, and the manifest
is replaced after each shard, so an interrupted run loses at most the shard in progress.
Files that the manifest does not list are leftovers of such a run and are removed on resume.

Vectors are staged as exact `Flat` shards while they arrive; when the index type is another
(see index_types), `pack()` trains it once on a sample of the staged vectors and packs the
staged shards into shards of that type (see packing). A type or memory budget asked for with
`set_index_type` takes effect there too (repacking a packed index) and is recorded only once
it is packed.

Deleting a row writes its shard's tombstones (a new file of the shard's deleted ids) and
lists them in the manifest with the next shard, in the same commit: a change that deletes
some rows and adds others is published at once. Deleted rows stay in the shard files, and
their vectors can still be copied (a renamed image keeps its vector), until compaction
rewrites the shard (see compaction).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dior_search import defaults
from dior_search.errors import IndexStoreError
from dior_search.models.answers import Answer
from dior_search.store.backend import Compaction
from dior_search.store.compaction import compact_shards
from dior_search.store.files import atomic_file, error_reason, io_errors, sha256_file, take_lock
from dior_search.store.index_types import FLAT, canonical_spec
from dior_search.store.manifest import (
    MANIFEST,
    SHARD_PREFIX,
    TRAINED,
    Manifest,
    Shard,
    check_same_index,
    listed_files,
    next_shard_number,
    now,
    shard_name,
    tombstones_name,
    write_manifest,
)
from dior_search.store.packing import change_index_type, pack_staged_shards
from dior_search.store.pending import PendingRows
from dior_search.store.schema import normalize
from dior_search.store.shards import (
    faiss_path,
    parquet_path,
    read_answers,
    read_keys,
    read_shard_index,
    read_table,
    reconstruct_ids,
    write_faiss,
    write_parquet,
    write_tombstones,
    written_shard,
)

log = logging.getLogger(__name__)


class IndexWriter(PendingRows):
    """Adds and deletes rows of one index directory, a commit at a time; resumes where it
    stopped.

    Holds the directory's lock from construction to `close()`, which writes what is queued,
    packs and compacts, or `abort()`, which drops it; a `with` block closes on success and
    aborts on an exception. `packs=False` (a part of a distributed run) keeps the shards
    Flat: the run that merges the parts trains and packs them.

    What the index holds is kept as (path, content hash) per live id; `holds`, `can_copy`,
    `live_rows` answer from it. Where the manifest says the index stores answers, every row
    added carries one (a copied row copies its source's).
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
                self.read_rows()
        except BaseException:
            self.lock.close()
            raise
        self.next_id = self.manifest.next_id
        self._open_shards: dict[str, tuple[Any, dict[int, float], dict[int, Answer]]] = {}
        # The index type and memory budget asked for (None: the index's own), and what
        # packing changed, for the run's report.
        self.asked: tuple[str | None, int | None] = (None, None)
        self.notes: list[str] = []

    @property
    def location(self) -> Path:
        """Where the index is: its directory."""
        return self.directory

    @classmethod
    def existing(cls, directory: Path, wait_for_lock: bool = False) -> IndexWriter:
        """A writer of an index that exists, as it is (to delete rows or compact it)."""
        return cls(directory, Manifest.read(directory), wait_for_lock=wait_for_lock)

    def open_manifest(self, new_manifest: Manifest) -> Manifest:
        """The index's manifest, or `new_manifest` published at once for a new index."""
        directory = self.directory
        if (directory / MANIFEST).is_file():
            manifest = Manifest.read(directory)
            check_same_index(directory, manifest, new_manifest)
            return manifest
        new_manifest.created = now()
        # Published at once, empty: the directory is an index from its first moment.
        write_manifest(directory, new_manifest)
        return new_manifest

    def remove_leftovers(self) -> None:
        """Delete index files the manifest does not list (and temporaries): what a crash or a
        commit that replaced them left behind."""
        listed = listed_files(self.manifest)
        for path in self.directory.iterdir():
            name = path.name
            unlisted = (name.startswith(SHARD_PREFIX) or name == TRAINED) and name not in listed
            if path.is_file() and (unlisted or name.endswith(".tmp")):
                log.info("removing %s, left by an interrupted run", path)
                path.unlink()

    # -- what the index holds -------------------------------------------------------------

    def read_rows(self) -> None:
        """Every stored row's (path, content hash): the live ones by id and key, and a source
        id for each content hash whose vector is still stored (deleted rows included)."""
        self.start_rows()
        self.dead: dict[str, np.ndarray] = {}
        for shard in self.manifest.shards:
            found = read_keys(self.directory, shard)
            self.dead[shard.name] = found.ids[~found.live]
            live, answered = found.live.tolist(), found.answered.tolist()
            rows = zip(found.ids.tolist(), found.paths, found.hashes, live, answered, strict=True)
            for row_id, path, content_hash, is_live, has_answer in rows:
                self.remember(row_id, path, content_hash, is_live, has_answer)

    # -- changes --------------------------------------------------------------------------

    def set_index_type(self, spec: str | None, memory_budget: int | None) -> None:
        """Ask for another index type or memory budget (None: keep the index's own).

        It takes effect when the run packs (`close()`): staged shards are packed into it, and
        an index already packed into another type is unpacked and packed again.
        """
        self.asked = (None if spec is None else canonical_spec(spec), memory_budget)

    def stored(self, row_id: int) -> tuple[np.ndarray, Answer | None]:
        """The raw vector (unit vector x stored norm) of a row in a written shard, deleted or
        not (what its shard's codes give back), and its stored answer (None if none)."""
        shard = self.shard_of(row_id)
        if shard.name not in self._open_shards:
            index = read_shard_index(faiss_path(self.directory, shard), mmap=True)
            path = parquet_path(self.directory, shard)
            table = read_table(path, ["id", "norm"])
            norms = dict(
                zip(table.column("id").to_pylist(), table.column("norm").to_pylist(), strict=True)
            )
            self._open_shards[shard.name] = (index, norms, read_answers(path))
        index, norms, answers = self._open_shards[shard.name]
        unit = reconstruct_ids(index, np.array([row_id], dtype=np.int64))[0]
        raw: np.ndarray = unit * np.float32(norms[row_id])
        return raw, answers.get(row_id)

    def shard_of(self, row_id: int) -> Shard:
        for shard in self.manifest.shards:
            if shard.first_id <= row_id <= shard.last:
                return shard
        raise IndexStoreError(f"no stored row {row_id} in {self.directory}")

    def commit(self) -> None:
        """Commit: write the queued vectors as a new shard and the tombstones of the rows
        deleted since the last commit, and publish both in one manifest replace."""
        if not self.rows and not self.deleting:
            return
        published = list(self.manifest.shards)
        generation = self.manifest.generation + 1
        replaced: list[Shard] = []
        dead: dict[str, np.ndarray] = {}
        name = shard_name(next_shard_number(self.manifest))
        try:
            shards = [self.with_tombstones(s, generation, replaced, dead) for s in published]
            if self.rows:
                shards.append(self.write_rows(name))
            self.manifest.shards = shards
            write_manifest(self.directory, self.manifest)
        except (OSError, RuntimeError) as exc:  # FAISS reports write failures as RuntimeError
            # The manifest on disk still lists only the earlier shards; files of this commit
            # are leftovers that the next run removes.
            self.manifest.shards = published
            reason = error_reason(exc)
            raise IndexStoreError(
                f"cannot write {name} in {self.directory}: {reason}; the index keeps its "
                f"{self.manifest.rows} rows written before"
            ) from None
        for shard in replaced:
            (self.directory / shard.tombstones).unlink(missing_ok=True)
        self.dead.update(dead)
        self.committed()

    def with_tombstones(
        self, shard: Shard, generation: int, replaced: list[Shard], dead: dict[str, np.ndarray]
    ) -> Shard:
        """`shard` with the rows deleted since the last commit added to its tombstones (a new
        file, written now); `replaced` collects the entries whose old file goes, `dead` the
        new deleted ids."""
        own = [i for i in self.deleting if shard.first_id <= i <= shard.last]
        if not own:
            return shard
        ids = np.union1d(self.dead.get(shard.name, np.empty(0, np.int64)), own)
        name = tombstones_name(shard.name, generation)
        with atomic_file(self.directory / name) as tmp:
            write_tombstones(tmp, ids)
        if shard.tombstones:
            replaced.append(shard)
        dead[shard.name] = ids
        return replace(
            shard,
            deleted=len(ids),
            tombstones=name,
            tombstones_sha256=sha256_file(self.directory / name),
        )

    def write_rows(self, name: str) -> Shard:
        """The queued rows as the files of shard `name` (staged: exact vectors)."""
        ids = np.array(self.ids, dtype=np.int64)
        raw = np.stack(self.vectors).astype(np.float32)
        norms = np.linalg.norm(raw, axis=1)
        with atomic_file(faiss_path(self.directory, name)) as tmp:
            write_faiss(tmp, normalize(raw), ids, FLAT)
        answers = [a for a in self.answers if a is not None] if self.stores_answers else None
        with atomic_file(parquet_path(self.directory, name)) as tmp:
            write_parquet(tmp, ids, norms, self.rows, answers)
        return written_shard(self.directory, name, ids, FLAT)

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

    def compact(self, threshold: float = defaults.COMPACT_THRESHOLD) -> Compaction:
        """Commit, then rewrite the shards whose deleted rows pass `threshold` (see
        compaction); vectors of deleted rows cannot be copied after it."""
        self.commit()
        done = compact_shards(self.directory, self.manifest, threshold)
        if done.shards_rewritten or done.shards_dropped:
            self._open_shards = {}
            self.read_rows()
        return done

    def close(self, threshold: float = defaults.COMPACT_THRESHOLD) -> Compaction:
        """Write what is queued (a last, partial shard), pack, compact, release the lock."""
        try:
            self.commit()
            self.pack()
            return self.compact(threshold) if self.packs else Compaction()
        finally:
            self.abort()

    def abort(self) -> None:
        """Release the lock; anything still queued is dropped, the index stays as published."""
        self.lock.close()


def compact_index(
    directory: Path, threshold: float = defaults.COMPACT_THRESHOLD, wait_for_lock: bool = False
) -> Compaction:
    """Compact an existing index on its own (`dior-search compact`), holding its lock."""
    writer = IndexWriter.existing(directory, wait_for_lock)
    try:
        return writer.compact(threshold)
    finally:
        writer.abort()
