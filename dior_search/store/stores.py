"""Choosing a store: `--store` names one, and an index's location says which store opens it.

    (no --store)                 the folder store under --indexes (store.folder)
    milvus-lite:PATH.db          Milvus Lite, embedded in this process   (store.milvus)
    milvus://HOST:PORT[/DB]      a Milvus server                         (store.milvus)
    https://HOST[:PORT][/DB]     a Milvus server over TLS; the token in $DIOR_MILVUS_TOKEN

The Milvus store needs the optional packages of `pip install 'dior-search[milvus]'`, imported
only when such a store is opened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dior_search.errors import IndexStoreError, UsageError
from dior_search.store import layout
from dior_search.store.backend import DatabaseIndex, IndexLocation, IndexStore, Reader
from dior_search.store.folder import FolderStore
from dior_search.store.folder import index_first as index_first
from dior_search.store.index_types import parse_search_params, search_params_of
from dior_search.store.manifest import Stamp
from dior_search.store.manifest import manifest_stamp as manifest_stamp
from dior_search.store.reader import IndexReader

# A folder index's manifest stamp: what a layer above compares to see a new commit cheaply.
ManifestStamp = Stamp

DATABASE_PREFIXES = ("milvus-lite:", "milvus://", "http://", "https://")


@dataclass(frozen=True)
class SearchParams:
    """Search parameters over an index's own (`nprobe`, `efSearch`, `k_factor_rf`, ...; the
    Milvus store maps them to its own), parsed and range-checked once, when made (`parse`).
    `text`: the `name=value,...` list a reader is opened with."""

    text: str = ""
    values: tuple[tuple[str, float], ...] = ()

    @classmethod
    def parse(
        cls, text: str | None, nprobe: int | None = None, ef_search: int | None = None
    ) -> SearchParams:
        """A query's --search-params, --nprobe and --ef-search as one list; UsageError for a
        pair that is not name=number or a value out of its range.

        >>> SearchParams.parse("k_factor_rf=4", nprobe=32).values
        (('k_factor_rf', 4.0), ('nprobe', 32.0))
        """
        joined = search_params_of(text, nprobe, ef_search)
        return cls(joined, tuple(parse_search_params(joined).items()))


def open_store(spec: str | None, indexes_dir: Path, create: bool = False) -> IndexStore:
    """The store `--store` names (None: the folder store under `indexes_dir`). `create`: a
    Milvus Lite database that does not exist yet is made (for `index`)."""
    if not spec:
        return FolderStore(indexes_dir)
    if not spec.startswith(DATABASE_PREFIXES):
        raise UsageError(
            f"--store {spec!r} is not a store: give milvus-lite:PATH.db, milvus://HOST:PORT or "
            "https://HOST[:PORT] (omit --store for the index folders under --indexes)"
        )
    try:
        import milvus_lite  # noqa: F401  (Milvus Lite's server, used for milvus-lite: stores)
        import pymilvus  # noqa: F401
    except ImportError:
        raise UsageError(
            f"--store {spec}: the Milvus store needs pymilvus and milvus-lite: "
            "pip install 'dior-search[milvus]'"
        ) from None
    from dior_search.store.milvus import MilvusStore

    return MilvusStore(spec, create=create, listings_dir=indexes_dir)


def check_has_indexes(store: IndexStore) -> None:
    """Raise unless the store can hold indexes already: the folder store's folder must exist
    (a database store always can; it says what it lacks when searched)."""
    if isinstance(store, FolderStore) and not store.root.is_dir():
        raise IndexStoreError(
            f"no indexes folder {os.path.abspath(store.root)}: {index_first(store)}"
        )


def open_reader(
    location: IndexLocation, mmap: bool | None = None, search_params: str | SearchParams = ""
) -> Reader:
    """The reader of the index at `location`, whichever store holds it."""
    if isinstance(search_params, SearchParams):
        search_params = search_params.text
    if isinstance(location, DatabaseIndex):
        return location.store.reader(location, mmap, search_params)
    return IndexReader(location, mmap, search_params)


def is_index_of(location: IndexLocation, collection: str, condition: str) -> bool:
    """Whether `location` is where the index of (collection, condition) is: by its names
    alone (all that is known of an index whose manifest cannot be read)."""
    if isinstance(location, DatabaseIndex):
        return (location.collection, location.condition) == (collection, condition)
    return layout.is_index_of(location, collection, condition)
