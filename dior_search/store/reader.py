"""Reading one index directory: search every shard, merge, and look rows and vectors up by id.

The reader is the only way into an index's files for the layers above: they ask for rows,
vectors, columns and searches by id, never for shards or tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dior_search.errors import IndexStoreError, UsageError
from dior_search.store.files import io_errors, verify_file
from dior_search.store.index_types import (
    FLAT,
    apply_search_params,
    merge_search_params,
    parse_search_params,
)
from dior_search.store.manifest import Manifest
from dior_search.store.shards import (
    PATH_BYTES,
    Row,
    column_names,
    faiss_path,
    normalize,
    parquet_path,
    read_shard_index,
    read_table,
    reconstruct_ids,
    reconstruct_rows,
    row_count,
    stored_paths,
)

LABEL_PREFIX = "label_"


class IndexReader:
    """A loaded index directory.

    `mmap`: map shard files instead of reading them (None: shards of 16 MiB or more).
    `search_params`: `name=value,...` over the manifest's defaults (`nprobe`, `efSearch`,
    `k_factor_rf`, ...), applied to every shard of a non-Flat type. `verify`: check every
    file's sha256 first (streamed: it fills the page cache, not the process's memory).
    """

    def __init__(
        self,
        directory: Path,
        mmap: bool | None = None,
        search_params: str = "",
        verify: bool = True,
    ) -> None:
        self.directory = directory
        self.manifest = Manifest.read(directory)
        self._indexes: list[Any] = []
        self._tables: list[Path] = []
        shard_ids = []
        with io_errors(f"cannot read index {directory}"):
            for shard in self.manifest.shards:
                if verify:
                    verify_file(faiss_path(directory, shard), shard.faiss_sha256)
                    verify_file(parquet_path(directory, shard), shard.parquet_sha256)
                self._indexes.append(read_shard_index(faiss_path(directory, shard), mmap))
                self._tables.append(parquet_path(directory, shard))
                ids = read_table(parquet_path(directory, shard), ["id"]).column("id")
                shard_ids.append(np.asarray(ids.to_numpy(), dtype=np.int64))
        # Ids of each shard's rows, ascending: any increasing ids, not only contiguous ones.
        self._shard_ids = shard_ids
        self._first_ids = np.array([s.first_id for s in self.manifest.shards], dtype=np.int64)
        self.ids: np.ndarray = (
            np.concatenate(shard_ids) if shard_ids else np.empty(0, dtype=np.int64)
        )
        self._columns: dict[str, list[Any]] = {}
        self._column_names: list[str] | None = None
        self.search_params = merge_search_params(self.manifest.search_params, search_params)
        self.set_search_params(self.search_params, strict=bool(search_params))

    def set_search_params(self, text: str, strict: bool = True) -> None:
        """Apply `name=value,...` search parameters to every non-Flat shard.

        Flat shards (exact search) take none: `strict` makes asking for one on an index of
        Flat shards only an error rather than a no-op.
        """
        searched = [
            (index, shard.index_type)
            for index, shard in zip(self._indexes, self.manifest.shards, strict=True)
            if shard.index_type != FLAT
        ]
        if not searched and strict and parse_search_params(text):
            names = ", ".join(parse_search_params(text))
            raise UsageError(
                f"index {self.directory} is exact (Flat): search parameters ({names}) do not "
                "apply to it"
            )
        for index, index_type in searched:
            apply_search_params(index, text, index_type)

    @property
    def exact(self) -> bool:
        """Whether every shard stores its vectors exactly (Flat), so vectors are exact."""
        return all(s.index_type == FLAT for s in self.manifest.shards)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query over all shards; ids are -1 where fewer exist."""
        queries = normalize(np.atleast_2d(queries))
        k = max(1, min(k, len(self)))
        scores = [np.full((len(queries), k), -np.inf, dtype=np.float32)]
        ids = [np.full((len(queries), k), -1, dtype=np.int64)]
        for index in self._indexes:
            shard_scores, shard_ids = index.search(queries, min(k, index.ntotal))
            scores.append(shard_scores)
            ids.append(shard_ids)
        return merge_top_k(np.hstack(scores), np.hstack(ids), k)

    def contains(self, row_id: int) -> bool:
        position = int(np.searchsorted(self.ids, row_id))
        return position < len(self.ids) and int(self.ids[position]) == row_id

    def positions(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Each id's position in `ids` order (0 .. len - 1); IndexStoreError on an unknown id."""
        wanted = np.asarray(ids, dtype=np.int64)
        positions = np.searchsorted(self.ids, wanted)
        found = positions < len(self.ids)
        found[found] = self.ids[positions[found]] == wanted[found]
        if not found.all():
            missing = int(wanted[np.argmin(found)])
            if len(self) == 0:
                raise IndexStoreError(f"no id {missing}: index {self.directory} is empty")
            raise IndexStoreError(
                f"no id {missing} in {self.directory} (ids {self.ids[0]}..{self.ids[-1]})"
            )
        return positions

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored (normalised) vectors of `ids`: (len(ids), dim); reconstructed from codes
        unless the shards are Flat."""
        wanted = np.asarray(ids, dtype=np.int64)
        self.positions(wanted)  # raises on an unknown id
        out = np.empty((len(wanted), self.manifest.dim), dtype=np.float32)
        shards = np.searchsorted(self._first_ids, wanted, side="right") - 1
        for shard in np.unique(shards).tolist():
            rows = np.flatnonzero(shards == shard)
            out[rows] = self._reconstruct(shard, np.ascontiguousarray(wanted[rows]))
        return out

    def vector(self, row_id: int) -> np.ndarray:
        found: np.ndarray = self.vectors([row_id])[0]
        return found

    def _reconstruct(self, shard: int, ids: np.ndarray) -> np.ndarray:
        return reconstruct_ids(self._indexes[shard], ids)

    def column(self, name: str) -> list[Any]:
        """A Parquet column of every row, in id order (None in shards without it); read once."""
        if name not in self._columns:
            values: list[Any] = []
            for path in self._tables:
                if name in column_names(path):
                    values += read_table(path, [name]).column(name).to_pylist()
                else:
                    values += [None] * row_count(path)
            self._columns[name] = values
        return self._columns[name]

    def column_names(self) -> list[str]:
        """Every column any shard's table has."""
        if self._column_names is None:
            names: dict[str, None] = {}
            for path in self._tables:
                names.update(dict.fromkeys(column_names(path)))
            self._column_names = list(names)
        return self._column_names

    def label_names(self) -> list[str]:
        """The labels stored beside the vectors (the collection's label columns)."""
        return [
            name.removeprefix(LABEL_PREFIX)
            for name in self.column_names()
            if name.startswith(LABEL_PREFIX)
        ]

    def labels(self, name: str) -> list[str | None]:
        """One label of every row, in id order (None where a row has none)."""
        return [None if v is None else str(v) for v in self.column(LABEL_PREFIX + name)]

    def content_hashes(self) -> list[str]:
        """Every row's content hash, in id order."""
        return self.column("content_hash")

    def paths(self) -> list[str]:
        """Every row's image path, in id order (exact, also where a name is not UTF-8)."""
        exact = self.column(PATH_BYTES) if PATH_BYTES in self.column_names() else None
        return stored_paths(self.column("path"), exact)

    def rows(self, ids: Sequence[int] | np.ndarray) -> list[Row]:
        """The metadata of `ids`, in the order given."""
        positions = self.positions(ids).tolist()
        paths, hashes = self.paths(), self.content_hashes()
        labels = {name: self.labels(name) for name in self.label_names()}
        return [
            Row(
                paths[p],
                hashes[p],
                {name: values[p] for name, values in labels.items() if values[p] is not None},
            )
            for p in positions
        ]

    def row(self, row_id: int) -> Row:
        return self.rows([row_id])[0]

    def all_vectors(self, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every row in id order: unit vectors, or raw embeddings if `raw`.

        Exact for Flat shards; for other types, what the codes reconstruct (see `exact`).
        """
        import faiss

        # The wrapped index holds the vectors in insertion order, which is id order here.
        parts = [
            reconstruct_rows(faiss.downcast_index(index.index), 0, index.ntotal)
            for index in self._indexes
        ]
        vectors = np.vstack(parts) if parts else np.empty((0, self.manifest.dim), np.float32)
        if raw:
            vectors *= np.asarray(self.column("norm"), dtype=np.float32)[:, None]
        return self.ids.copy(), vectors


def merge_top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k highest scores per row (inner product: higher is closer); ties by lower id."""
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
