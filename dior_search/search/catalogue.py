"""Which indexes a searcher serves: per collection, one index per condition, all of one
embedder, with each index's row count as of its newest commit seen; and the damaged ones left
out, whose error a request under their condition gets.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dior_search.errors import IndexStoreError, UsageError
from dior_search.models.embedder import EmbedderDescription
from dior_search.store.backend import DatabaseIndex, IndexEntry, IndexLocation, Manifest, Reader
from dior_search.store.stores import ManifestStamp, is_index_of, manifest_stamp


class NotIndexed(IndexStoreError):
    """A collection, condition or id that the searched indexes do not hold."""

    http_status = 404


@dataclass(frozen=True)
class ConditionIndex:
    """One index (a directory, or a database's collection): a collection's images under one
    condition."""

    name: str
    text: str | None
    location: IndexLocation
    root: Path
    rows: int
    # Whether its rows carry the model's answers (see models.embedder.AnswerState).
    answers: str = "off"


@dataclass(frozen=True)
class CollectionIndexes:
    """A collection's indexes, one per condition, all of one embedder."""

    name: str
    conditions: dict[str, ConditionIndex]

    @property
    def images(self) -> int:
        return max(c.rows for c in self.conditions.values())


def entry_condition(entry: IndexEntry) -> ConditionIndex:
    manifest = entry.manifest
    return ConditionIndex(
        name=entry.condition,
        text=manifest.condition["text"],
        location=entry.location,
        root=Path(manifest.collection["root"]),
        rows=manifest.rows,
        answers=manifest.answers,
    )


def catalog(entries: Sequence[IndexEntry]) -> dict[str, CollectionIndexes]:
    """The entries by collection, each collection's conditions by name (both sorted)."""
    by_collection: dict[str, dict[str, ConditionIndex]] = {}
    for entry in entries:
        by_collection.setdefault(entry.collection, {})[entry.condition] = entry_condition(entry)
    return {
        name: CollectionIndexes(name, dict(sorted(conditions.items())))
        for name, conditions in sorted(by_collection.items())
    }


class Catalogue:
    """The indexes served, by collection and condition, kept as of the newest generation
    seen (row counts change with commits); safe to update from several threads."""

    def __init__(
        self,
        entries: Sequence[IndexEntry],
        damaged: dict[IndexLocation, IndexStoreError] | None = None,
    ) -> None:
        # Indexes whose manifests are damaged: left out, their error raised when a request
        # names their condition.
        self.damaged = dict(damaged or {})
        self.entries = list(entries)
        self.collections = catalog(self.entries)
        self._lock = threading.Lock()
        # Each folder index's manifest stamp when `refresh` last read it.
        self._manifest_stamps: dict[IndexLocation, ManifestStamp] = {}

    @property
    def description(self) -> EmbedderDescription:
        """The embedder description the served indexes were built with."""
        return self.entries[0].manifest.embedder

    def replace(self, entries: Sequence[IndexEntry]) -> None:
        """Serve these entries instead (those built with the loaded model's settings)."""
        with self._lock:
            self.entries = list(entries)
            self.collections = catalog(self.entries)

    def update(self, entry: IndexEntry) -> None:
        """Row counts (and the rest of the catalogue) as of a newly opened generation."""
        with self._lock:
            self.entries = [entry if e.location == entry.location else e for e in self.entries]
            self.collections = catalog(self.entries)

    def refresh(self) -> dict[str, CollectionIndexes]:
        """The collections with each index's row count as of its latest commit, without
        opening any index: a folder index's manifest is read again only when a stat says it
        was replaced; a database's is looked up. An unreadable one keeps its last counts."""
        for entry in list(self.entries):
            location = entry.location
            stamp = None if isinstance(location, DatabaseIndex) else manifest_stamp(location)
            if stamp is not None and stamp == self._manifest_stamps.get(location):
                continue
            try:
                manifest = manifest_of(location)
            except (IndexStoreError, OSError, ValueError):
                continue
            if stamp is not None:
                self._manifest_stamps[location] = stamp
            if manifest != entry.manifest:
                self.update(IndexEntry(location, manifest))
        return self.collections

    def collection(self, name: str | None) -> CollectionIndexes:
        """The collection named (None: the only one)."""
        if name is None:
            if len(self.collections) == 1:
                return next(iter(self.collections.values()))
            valid = ", ".join(self.collections)
            raise UsageError(f"name a collection; searched: {valid}")
        try:
            return self.collections[name]
        except KeyError:
            valid = ", ".join(self.collections)
            raise NotIndexed(f"no collection {name!r}; searched: {valid}") from None

    def condition(self, collection: CollectionIndexes, name: str) -> ConditionIndex:
        """The collection's index under a condition; a damaged one's error if it is left out."""
        try:
            return collection.conditions[name]
        except KeyError:
            for location, problem in self.damaged.items():
                if is_index_of(location, collection.name, name):
                    raise NotIndexed(str(problem)) from None
            valid = ", ".join(collection.conditions)
            raise NotIndexed(
                f"no index for condition {name!r} of {collection.name}; conditions with an "
                f"index: {valid}"
            ) from None


def manifest_of(location: IndexLocation) -> Manifest:
    """The manifest of the index at `location`; IndexStoreError if there is none."""
    if isinstance(location, DatabaseIndex):
        found = location.store.manifest_at(location)
        if found is None:
            raise IndexStoreError(f"no index {location}")
        return found
    return Manifest.read(location)


def check_id(reader: Reader, condition: ConditionIndex, row_id: int) -> None:
    """NotIndexed unless the reader holds a live row `row_id`."""
    if len(reader) == 0:
        raise NotIndexed(f"no id {row_id}: the index of {condition.name!r} is empty")
    if not reader.contains(row_id):
        raise NotIndexed(
            f"no id {row_id} under condition {condition.name!r} "
            f"(ids {reader.ids[0]}..{reader.ids[-1]}; an image's id changes when it is "
            "re-indexed)"
        )
