"""The readers a searcher keeps open: one per index, reopened when a newer generation is
committed; the joins of several indexes that recent requests searched through; and the
indexes found damaged when opened, remembered until their files change.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from dior_search.errors import IndexStoreError, first_line
from dior_search.search.catalogue import ConditionIndex, NotIndexed
from dior_search.search.joined import JoinedIndexes
from dior_search.store.backend import DatabaseIndex, IndexEntry, IndexLocation, Reader
from dior_search.store.stores import SearchParams, open_reader

log = logging.getLogger(__name__)

JOINED_CACHE_ENTRIES = 64

Stamp = tuple[tuple[str, int, int, int], ...]


class DamagedIndex(NotIndexed):
    """An index whose files were found damaged (or gone) when it was opened."""


def files_stamp(location: IndexLocation) -> Stamp | None:
    """What changes when any file of a folder index does (stats, no reads); None for a
    database's index, or a folder that cannot be listed."""
    if isinstance(location, DatabaseIndex):
        return None
    try:
        with os.scandir(location) as entries:
            found = [(e.name, *_stat_of(e)) for e in entries]
    except OSError:
        return None
    return tuple(sorted(found))


def _stat_of(entry: os.DirEntry[str]) -> tuple[int, int, int]:
    try:
        status = entry.stat(follow_symlinks=False)
    except OSError:
        return (-1, -1, -1)
    return status.st_ino, status.st_size, status.st_mtime_ns


class ReaderCache:
    """Readers and joins, safe to use from several threads; `opened` hears of every reader
    opened or reopened (the catalogue's row counts follow it)."""

    def __init__(
        self,
        mmap: bool | None,
        search_params: SearchParams,
        opened: Callable[[IndexEntry], None],
    ) -> None:
        self.mmap = mmap
        self.search_params = search_params
        self.opened = opened
        self._readers: dict[IndexLocation, Reader] = {}
        self._reader_locks: dict[IndexLocation, threading.Lock] = {}
        self._readers_lock = threading.Lock()
        self._joined: OrderedDict[tuple[tuple[IndexLocation, int, int], ...], JoinedIndexes] = (
            OrderedDict()
        )
        self._joined_lock = threading.Lock()
        # Indexes found damaged when opened: the error, until their files change (so a
        # request after it does not re-open and re-hash the whole index).
        self._damage: dict[IndexLocation, tuple[Stamp, str]] = {}

    def reader(self, condition: ConditionIndex) -> Reader:
        """The condition's index as of its latest generation: opened (and checked) on first
        use, reopened when a newer generation was committed (a stat of its manifest, or a
        look at its database collection's, per call). A reader already handed out stays
        valid: it keeps its files open (a database reader filters by its commit)."""
        location = condition.location
        with self._readers_lock:
            reader = self._readers.get(location)
            lock = self._reader_locks.setdefault(location, threading.Lock())
        if reader is not None and reader.is_current():
            return reader
        with lock:
            with self._readers_lock:
                reader = self._readers.get(location)
            if reader is not None and reader.is_current():
                return reader
            reader = self._open(location, reader)
            with self._readers_lock:
                self._readers[location] = reader
                self.opened(IndexEntry(location, reader.manifest))
            self._forget_joined(location, reader)
            return reader

    def _open(self, location: IndexLocation, stale: Reader | None) -> Reader:
        """The index opened (or `stale` reopened); DamagedIndex, remembered until its files
        change, if it cannot be."""
        stamp = files_stamp(location)
        remembered = self._damage.get(location)
        if remembered is not None and stamp is not None and remembered[0] == stamp:
            raise DamagedIndex(remembered[1])  # a new one: a raised one keeps its frames
        try:
            if stale is None:
                reader = open_reader(location, mmap=self.mmap, search_params=self.search_params)
            else:
                log.info("%s: switching to a newer generation", location)
                reader = stale.reopen()
        except NotIndexed:
            raise
        except IndexStoreError as exc:
            message = first_line(exc)
            if stamp is not None:
                self._damage[location] = (stamp, message)
            raise DamagedIndex(message) from None
        self._damage.pop(location, None)
        return reader

    def _forget_joined(self, location: IndexLocation, current: Reader) -> None:
        """Drop the cached joins of an older generation of an index: once the requests using
        them end, its old files are closed (and their disk space freed)."""
        with self._joined_lock:
            for key in list(self._joined):
                if any(d == location and r != id(current) for d, _, r in key):
                    del self._joined[key]

    def joined(self, conditions: Sequence[ConditionIndex]) -> JoinedIndexes:
        """The conditions' indexes joined, each as of its latest generation: one request
        searches through one JoinedIndexes, so it never sees half of a change."""
        readers = [self.reader(c) for c in conditions]
        key = tuple(
            (c.location, r.generation, id(r)) for c, r in zip(conditions, readers, strict=True)
        )
        with self._joined_lock:
            joined = self._joined.get(key)
            if joined is not None:
                self._joined.move_to_end(key)
                return joined
        joined = JoinedIndexes(readers)
        with self._joined_lock:
            self._joined[key] = joined
            while len(self._joined) > JOINED_CACHE_ENTRIES:
                self._joined.popitem(last=False)
        return joined

    def joins(self) -> list[JoinedIndexes]:
        """The joins cached now, least recently used first."""
        with self._joined_lock:
            return list(self._joined.values())
