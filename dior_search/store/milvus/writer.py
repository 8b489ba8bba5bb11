"""`MilvusWriter`: adds and deletes rows of one index a commit at a time (mirrors
store.writer)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dior_search.errors import IndexStoreError
from dior_search.models.answers import Answer
from dior_search.store.backend import (
    Compaction,
    DatabaseIndex,
)
from dior_search.store.index_types import AUTO
from dior_search.store.manifest import (
    Database,
    Manifest,
    advance,
    check_same_index,
    now,
)
from dior_search.store.milvus.connection import ID_BATCH
from dior_search.store.milvus.layout import KIND
from dior_search.store.milvus.rows import exact_path, stored_answer
from dior_search.store.milvus.types import (
    FLAT,
    canonical_milvus_spec,
    choose_milvus_type,
    default_search_params,
    same_index,
)
from dior_search.store.pending import PendingRows
from dior_search.store.schema import (
    ANSWER,
)

if TYPE_CHECKING:
    from dior_search.store.milvus.store import MilvusStore

log = logging.getLogger(__name__)


class MilvusWriter(PendingRows):
    """Adds and deletes rows of one index of a Milvus store, a commit at a time.

    `staged` (a part of a distributed run): rows are written above the manifest's
    `next_row_id`, where readers do not see them, and nothing is published; the process
    that completes the run publishes every part at once (MilvusParts.publish). Milvus has no
    locks: one writer per index at a time (one run), or the parts of one distributed run.
    """

    def __init__(
        self,
        store: MilvusStore,
        location: DatabaseIndex,
        new_manifest: Manifest,
        staged: bool = False,
    ) -> None:
        self.store, self._location, self.staged = store, location, staged
        # Vectors of rows this writer deleted that a new row may still copy (a rename).
        self.retired = Spill()
        self.retired_answers: dict[int, Answer] = {}
        self.manifest = self.open_manifest(new_manifest)
        self.next_id = self.manifest.next_id
        self.changed_type = False
        self.notes: list[str] = []
        store.load(location)
        if not staged:
            self.remove_leftovers()
        self.read_rows()

    @property
    def location(self) -> DatabaseIndex:
        return self._location

    def open_manifest(self, new_manifest: Manifest) -> Manifest:
        """The index's manifest, or a new collection created with `new_manifest`."""
        store, location = self.store, self._location
        if not store.exists(location):
            manifest = as_database_manifest(new_manifest, store.lite)
            try:
                store.create(location, manifest)
                return manifest
            except IndexStoreError:
                if not store.exists(location):  # not another part that created it first
                    raise
        stored = store.read_manifest(location)[0]
        check_same_index(location, stored, new_manifest)
        return stored

    def remove_leftovers(self) -> None:
        """Delete rows an interrupted commit wrote but never published, and bring the row
        count up to date where it deleted rows without publishing."""
        store, location, manifest = self.store, self._location, self.manifest
        store.remove(location, where=f"id >= {manifest.next_id}")
        live = store.count(location, manifest.next_id)
        if live != manifest.rows:
            log.info("%s: %d rows, not %d; publishing the count", location, live, manifest.rows)
            self.publish(live)

    def read_rows(self) -> None:
        """The rows of the index (a staged writer: the rows its run staged so far)."""
        self.start_rows()
        edge = self.manifest.next_id
        where = f"id >= {edge}" if self.staged else f"id < {edge}"
        rows = self.store.iterate(self._location, where, ["id", "path", "content_hash", "$meta"])
        for row in sorted(rows, key=lambda r: int(r["id"])):
            has_answer = row.get(ANSWER) is not None
            self.remember(int(row["id"]), exact_path(row), row["content_hash"], True, has_answer)

    def publish(self, rows: int) -> None:
        """Publish the manifest as the next generation, with `rows` live rows."""
        self.manifest.database = Database(KIND, rows)
        advance(self.manifest)
        self.store.write_manifest(self._location, self.manifest)

    def set_index_type(self, spec: str | None, memory_budget: int | None) -> None:
        """Use another index type or budget; the index is rebuilt when the run packs (a
        database index can change its type at any time)."""
        manifest = self.manifest
        if spec is not None:
            spec = canonical_milvus_spec(spec, self.store.lite)
            if spec != manifest.index_spec:
                manifest.index_spec = spec
                self.changed_type = True
        if memory_budget is not None and memory_budget != manifest.memory_budget:
            manifest.memory_budget = memory_budget
            self.changed_type = True

    def stored(self, row_id: int) -> tuple[np.ndarray, Answer | None]:
        """The raw vector (unit vector x norm) and answer of a stored row, or of one this
        writer deleted."""
        retired = self.retired.get(row_id)
        if retired is not None:
            return retired, self.retired_answers.get(row_id)
        found = self.stored_rows([row_id]).get(row_id)
        if found is None:
            raise IndexStoreError(f"no stored row {row_id} in {self._location}")
        return found

    def stored_rows(self, ids: Sequence[int]) -> dict[int, tuple[np.ndarray, Answer | None]]:
        """Raw vectors (unit vector x norm) and answers of the stored rows among `ids`."""
        fields = ["vector", "norm", "$meta"]
        found = self.store.fetch(self._location, np.asarray(ids, np.int64), fields)
        return {
            row_id: (
                np.asarray(row["vector"], dtype=np.float32) * np.float32(row["norm"]),
                stored_answer(row),
            )
            for row_id, row in found.items()
        }

    def retire(self, ids: Sequence[int]) -> None:
        """Keep, before they are deleted, the vectors of rows that are their content's source:
        a file renamed in this run copies its vector after the old row is gone (a folder's
        shards keep deleted rows until compaction; a database drops them at once). A content's
        source with an answer counts too: a copy takes its vector and answer from it."""
        sources = set(self.sources.values()) | set(self.answered.values())
        wanted = [i for i in ids if i in sources]
        for low in range(0, len(wanted), ID_BATCH):
            found = self.stored_rows(wanted[low : low + ID_BATCH])
            self.retired.put({row_id: vector for row_id, (vector, _) in found.items()})
            self.retired_answers.update(
                {row_id: answer for row_id, (_, answer) in found.items() if answer is not None}
            )

    def commit(self) -> None:
        """Commit: write the queued rows, delete the rows deleted since the last commit, and
        publish the manifest (a staged writer publishes nothing)."""
        if not self.rows and not self.deleting:
            return
        location = self._location
        before = self.manifest.rows
        try:
            self.store.put(
                location, self.ids, self.vectors, self.rows, self.answers, replace=self.staged
            )
            self.retire(sorted(self.deleting))
            self.store.remove(location, sorted(self.deleting))
            if not self.staged:
                if self.ids:
                    self.manifest.next_row_id = max(self.manifest.next_row_id, self.ids[-1] + 1)
                self.publish(before + len(self.rows) - len(self.deleting))
        except IndexStoreError as exc:
            raise IndexStoreError(
                f"{exc}; the index keeps its {before} rows of its last commit"
            ) from None
        self.committed()

    def pack(self) -> None:
        """Build the index type the manifest asks for (`auto`: FLAT while small, then chosen
        by size and budget, once) and flush the rows to the database's storage."""
        if self.staged:
            return
        self.commit()
        manifest, location = self.manifest, self._location
        target = manifest.index_type
        if manifest.index_spec == AUTO:
            if manifest.index_type == FLAT:
                target = choose_milvus_type(
                    manifest.rows, manifest.dim, manifest.memory_budget
                ).spec
        else:
            target = manifest.index_spec
        if not same_index(self.store.built_index(location), target):
            log.info("%s: building a %s index", location, target)
            self.store.rebuild_index(location, target)
            if manifest.rows:
                self.notes.append(f"the index is now {target}")
        if target != manifest.index_type or self.changed_type:
            manifest.index_type = target
            manifest.search_params = default_search_params(target)
            self.publish(manifest.rows)
            self.changed_type = False
        self.store.conn.call(f"flush {location.name}", "flush", location.name)

    def compact(self, threshold: float = 0.0) -> Compaction:
        """Commit, then let the database compact (it drops deleted rows itself)."""
        self.commit()
        if not self.staged:
            self.store.conn.call(f"compact {self._location.name}", "compact", self._location.name)
        return Compaction()

    def close(self, threshold: float = 0.0) -> Compaction:
        """Commit what is queued, build the index type, compact."""
        try:
            self.commit()
            self.pack()
            return self.compact(threshold)
        finally:
            self.retired.close()

    def abort(self) -> None:
        """Drop what is queued: the index stays as of its last commit (no lock to release)."""
        self.clear_queue()
        self.retired.close()


class Spill:
    """Raw vectors by row id in a temporary file: any number of them, in bounded memory."""

    def __init__(self) -> None:
        self.file: Any = None
        self.where: dict[int, tuple[int, int]] = {}

    def put(self, vectors: dict[int, np.ndarray]) -> None:
        if self.file is None:
            # Open for the writer's life; closed (and gone) in close().
            self.file = tempfile.TemporaryFile()  # noqa: SIM115
        for row_id, vector in vectors.items():
            data = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
            self.file.seek(0, os.SEEK_END)
            self.where[row_id] = (self.file.tell(), len(data))
            self.file.write(data)

    def get(self, row_id: int) -> np.ndarray | None:
        found = self.where.get(row_id)
        if found is None or self.file is None:
            return None
        self.file.seek(found[0])
        vector: np.ndarray = np.frombuffer(self.file.read(found[1]), dtype=np.float32).copy()
        return vector

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.file, self.where = None, {}


def as_database_manifest(manifest: Manifest, lite: bool) -> Manifest:
    """A new index's manifest as a Milvus store keeps it: Milvus index types, no shards."""
    spec = canonical_milvus_spec(manifest.index_spec, lite)
    manifest.index_spec = spec
    manifest.index_type = FLAT if spec == AUTO else spec
    manifest.search_params = "" if spec == AUTO else default_search_params(spec)
    manifest.created = now()
    manifest.database = Database(KIND, 0)
    advance(manifest)
    return manifest
