"""What a writer holds between two commits, whatever the store: the live rows it knows of,
the rows queued to be added and the ids queued to be deleted.

Both writers (store.writer for folders, store.milvus for a database) keep what the index
holds as (path, content hash) per live id, and a source row per content hash whose vector a
new row may copy; a commit (`commit`) publishes the queue at once. Where the manifest
says the index stores answers, every row added carries one (a copied row copies its
source's).
"""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

import numpy as np

from dior_search.errors import IndexStoreError
from dior_search.models.answers import Answer
from dior_search.store.backend import IndexLocation, Key
from dior_search.store.manifest import Manifest
from dior_search.store.schema import Row

Self = TypeVar("Self", bound="PendingRows")


class PendingRows:
    """The rows a writer holds and queues; subclasses commit them (`commit`) and read a
    stored row back (`stored`)."""

    manifest: Manifest
    next_id: int

    @property
    def location(self) -> IndexLocation:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def stored(self, row_id: int) -> tuple[np.ndarray, Answer | None]:
        """A stored row's raw vector (unit vector x norm) and its answer (None if none)."""
        raise NotImplementedError

    def close(self) -> object:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self: Self) -> Self:
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

    def start_rows(self) -> None:
        """Nothing known or queued yet (`remember` then records the stored rows)."""
        self.live: dict[int, Key] = {}
        self.keys: dict[Key, int] = {}
        self.sources: dict[str, int] = {}
        # Content hashes whose stored vector has an answer beside it (a source with one).
        self.answered: dict[str, int] = {}
        self.clear_queue()

    def clear_queue(self) -> None:
        self.vectors: list[np.ndarray] = []
        self.rows: list[Row] = []
        self.ids: list[int] = []
        self.answers: list[Answer | None] = []
        # Content hash -> position in the queue, for copies of a vector not written yet.
        self.queued: dict[str, int] = {}
        # Ids deleted since the last commit, to be published with the next one.
        self.deleting: set[int] = set()

    def remember(
        self,
        row_id: int,
        path: str,
        content_hash: str,
        live: bool = True,
        has_answer: bool = False,
    ) -> None:
        """A stored row: live ones by id and key, and a source id for each content hash whose
        vector is still stored (a deleted row's too, until its vector is gone)."""
        if live:
            self.live[row_id] = (path, content_hash)
            # A repeated (path, content) keeps its first id; sync deletes the others.
            self.keys.setdefault((path, content_hash), row_id)
            self.sources[content_hash] = row_id
        else:
            self.sources.setdefault(content_hash, row_id)
        if has_answer:
            self.answered.setdefault(content_hash, row_id)

    def committed(self) -> None:
        """The queue was published: its rows are stored, its deletions done."""
        if self.ids:
            self.next_id = self.ids[-1] + 1
            for row_id, row, answer in zip(self.ids, self.rows, self.answers, strict=True):
                self.sources.setdefault(row.content_hash, row_id)
                if answer is not None:
                    self.answered.setdefault(row.content_hash, row_id)
        self.clear_queue()

    # -- what the index holds -------------------------------------------------------------

    def live_rows(self) -> dict[int, Key]:
        """Live id -> (path, content hash), as of the last change (do not modify)."""
        return self.live

    def holds(self, path: str, content_hash: str) -> bool:
        """Whether a live row has this path and content."""
        return (path, content_hash) in self.keys

    @property
    def stores_answers(self) -> bool:
        """Whether every row of this index carries the model's answer."""
        return self.manifest.answers == "stored"

    def can_copy(self, content_hash: str) -> bool:
        """Whether a vector of this content is stored or queued (a row may copy it), with its
        answer where the index stores answers."""
        if self.stores_answers:
            queued = self.queued.get(content_hash)
            return content_hash in self.answered or (
                queued is not None and self.answers[queued] is not None
            )
        return content_hash in self.queued or content_hash in self.sources

    def store_answers(self) -> None:
        """From now on every row carries the model's answer (`index --answers`): rows without
        one must be embedded again, and are not copied."""
        self.manifest.answers = "stored"

    # -- changes --------------------------------------------------------------------------

    def add(
        self,
        vector: np.ndarray,
        row: Row,
        row_id: int | None = None,
        answer: Answer | None = None,
    ) -> None:
        """Queue one raw vector (with the next id, or `row_id`) and its answer (needed where
        the index stores answers, else dropped); a full shard is committed at once, with the
        deletions made so far."""
        floor = self.ids[-1] + 1 if self.ids else self.next_id
        if row_id is None:
            row_id = floor
        elif row_id < floor:
            raise IndexStoreError(f"id {row_id} is not above the ids already in {self.location}")
        if self.stores_answers and answer is None:
            raise IndexStoreError(
                f"index {self.location} stores the model's answers, and {row.path} has none"
            )
        self.queued.setdefault(row.content_hash, len(self.rows))
        self.live[row_id] = (row.path, row.content_hash)
        self.keys.setdefault((row.path, row.content_hash), row_id)
        self.vectors.append(vector)
        self.rows.append(row)
        self.ids.append(row_id)
        self.answers.append(answer if self.stores_answers else None)
        if len(self.rows) >= self.manifest.shard_size:
            self.commit()

    def add_copy(self, row: Row, row_id: int | None = None) -> None:
        """Queue a row whose vector is the one already stored (or queued) for its content:
        a renamed or copied image is not embedded again."""
        queued = self.queued.get(row.content_hash)
        source = self.answered.get(row.content_hash, self.sources.get(row.content_hash))
        if queued is not None:
            vector, answer = self.vectors[queued], self.answers[queued]
        elif source is not None:
            vector, answer = self.stored(source)
        else:
            raise IndexStoreError(f"no vector of {row.path}'s content in {self.location}")
        self.add(vector, row, row_id, answer)

    def delete(self, ids: list[int]) -> None:
        """Delete live rows; published with the next commit (`commit`)."""
        gone = set(ids)
        for row_id in gone:
            key = self.live.pop(row_id, None)
            if key is None:
                raise IndexStoreError(f"no live row {row_id} in {self.location} to delete")
            if self.keys.get(key) == row_id:
                del self.keys[key]
        queued = gone.intersection(self.ids)
        if queued:  # never written: leave them out of the queue
            kept = [p for p, row_id in enumerate(self.ids) if row_id not in queued]
            self.vectors = [self.vectors[p] for p in kept]
            self.rows = [self.rows[p] for p in kept]
            self.ids = [self.ids[p] for p in kept]
            self.answers = [self.answers[p] for p in kept]
            self.queued = {}
            for position, row in enumerate(self.rows):
                self.queued.setdefault(row.content_hash, position)
        self.deleting |= gone - queued
