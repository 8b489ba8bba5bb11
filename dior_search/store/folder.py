"""The folder store (the default): FAISS shards and Parquet tables in one directory per index
under `--indexes` (see layout, reader, writer and docs/index-format.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dior_search import defaults
from dior_search.errors import IndexStoreError
from dior_search.models.embedder import EmbedderDescription
from dior_search.store import layout
from dior_search.store.backend import Compaction, IndexEntry, IndexLocation, SharedParts
from dior_search.store.index_types import (
    AUTO,
    FLAT,
    canonical_spec,
    check_index_spec,
    choose_index_type,
)
from dior_search.store.manifest import MANIFEST, Manifest
from dior_search.store.reader import IndexReader
from dior_search.store.writer import IndexWriter, compact_index


class FolderStore:
    """Indexes as folders under `root`: `<root>/<collection>/<embedder>/<condition>/`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def name(self) -> str:
        """The folder, absolute: a message must say where it looked whatever the current
        folder (`indexes` alone does not)."""
        return os.path.abspath(self.root)

    def location(self, collection: str, description: EmbedderDescription, condition: str) -> Path:
        return layout.index_dir(self.root, collection, description, condition)

    def manifest_at(self, location: IndexLocation) -> Manifest | None:
        directory = directory_of(location)
        return Manifest.read(directory) if (directory / MANIFEST).is_file() else None

    def writer(
        self, location: IndexLocation, manifest: Manifest, wait_for_lock: bool = False
    ) -> IndexWriter:
        return IndexWriter(directory_of(location), manifest, wait_for_lock=wait_for_lock)

    def reader(
        self,
        location: IndexLocation,
        mmap: bool | None = None,
        search_params: str = "",
        verify: bool = True,
    ) -> IndexReader:
        return IndexReader(directory_of(location), mmap, search_params, verify)

    def find(
        self,
        collection: str | None = None,
        method: str | None = None,
        model: str | None = None,
        damaged: dict[IndexLocation, IndexStoreError] | None = None,
    ) -> list[IndexEntry]:
        return layout.find_indexes(self.root, collection, method, model, damaged)

    def compact(
        self, location: IndexLocation, threshold: float, wait_for_lock: bool = False
    ) -> Compaction:
        return compact_index(directory_of(location), threshold, wait_for_lock)

    def check_index_spec(
        self, spec: str, dim: int, n_vectors: int, memory_budget: int, existing: Manifest
    ) -> None:
        spec = canonical_spec(spec)
        if spec == AUTO:
            choose_index_type(n_vectors, dim, memory_budget)  # raises if none fits
        elif existing.trained is None or spec != existing.index_spec:
            check_index_spec(spec, dim, n_vectors)

    def shared_parts(self) -> SharedParts:
        from dior_search.store.parts import FolderParts  # which imports directory_of

        return FolderParts()

    def new_manifest(self, **fields: Any) -> Manifest:
        # A new index starts as auto: the type asked is recorded once it is packed.
        return Manifest(**fields, index_type=FLAT, index_spec=AUTO)

    def skipped_listing(self, collection: str, description: EmbedderDescription) -> Path:
        return layout.skipped_listing(self.root, collection, description)

    def close(self) -> None:
        return None


def directory_of(location: IndexLocation) -> Path:
    """The directory of a folder-store index; IndexStoreError for a database's index."""
    if not isinstance(location, Path):
        raise IndexStoreError(f"{location} is a database's index, not an index folder")
    return location


def index_first(store: object) -> str:
    """What a "no indexes" error asks for: indexing first, or, for index folders, naming
    the folder that holds them (indexes are looked up relative to the current folder)."""
    hint = "run `dior-search index` first"
    if isinstance(store, (FolderStore, Path)):
        hint += f", or give the folder that holds them: --indexes DIR or ${defaults.INDEXES_ENV}"
    return hint
