"""One shard's files: a FAISS index of unit vectors with their ids, a Parquet table, and the
ids of its deleted rows.

    shard-00000.faiss                  FAISS index of L2-normalised vectors, ids stored with them
    shard-00000.parquet                one row per vector: id, path, content_hash, norm, label_*
    shard-00000.deleted-7.parquet      ids of the rows deleted since (written at generation 7)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dior_search.errors import IndexStoreError
from dior_search.store.files import verify_file
from dior_search.store.manifest import Shard

LABEL_PREFIX = "label_"
# Shards at least this large are memory-mapped by default rather than read into RAM.
MMAP_MIN_BYTES = 16 << 20


@dataclass(frozen=True)
class Row:
    """Metadata stored beside one vector."""

    path: str
    content_hash: str
    labels: dict[str, str] = field(default_factory=dict)

    def scalar_columns(self) -> dict[str, Any]:
        """The row's columns beside its id, vector and norm, as every store writes them:
        `path`, `content_hash` and `label_<name>` (only the labels it has)."""
        columns: dict[str, Any] = {"path": self.path, "content_hash": self.content_hash}
        for name, value in sorted(self.labels.items()):
            columns[f"{LABEL_PREFIX}{name}"] = value
        return columns


def faiss_path(directory: Path, shard: Shard | str) -> Path:
    name = shard if isinstance(shard, str) else shard.name
    return directory / f"{name}.faiss"


def parquet_path(directory: Path, shard: Shard | str) -> Path:
    name = shard if isinstance(shard, str) else shard.name
    return directory / f"{name}.parquet"


def tombstones_path(directory: Path, shard: Shard) -> Path:
    return directory / shard.tombstones


def write_tombstones(path: Path, ids: np.ndarray) -> None:
    """A Parquet table of one int64 column `id`: the shard's deleted rows, ascending."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": pa.array(np.sort(ids), type=pa.int64())}), path)


def read_tombstones(directory: Path, shard: Shard, verify: bool = True) -> np.ndarray:
    """The ids of a shard's deleted rows, ascending (empty if none); checked if `verify`."""
    import pyarrow.parquet as pq

    if not shard.tombstones:
        return np.empty(0, dtype=np.int64)
    path = tombstones_path(directory, shard)
    if verify:
        verify_file(path, shard.tombstones_sha256)
    ids = pq.read_table(path, columns=["id"]).column("id").to_numpy()
    dead = np.sort(np.asarray(ids, dtype=np.int64))
    if len(dead) != shard.deleted:
        raise IndexStoreError(
            f"{path} lists {len(dead)} deleted rows, the manifest {shard.deleted}: "
            "rebuild the index"
        )
    return dead


def read_ids(directory: Path, shard: Shard, verify: bool = True) -> np.ndarray:
    """Every stored row's id in a shard, in its storage order (ascending)."""
    import pyarrow.parquet as pq

    path = parquet_path(directory, shard)
    if verify:
        verify_file(path, shard.parquet_sha256)
    ids = pq.read_table(path, columns=["id"]).column("id").to_numpy()
    return np.asarray(ids, dtype=np.int64)


@dataclass(frozen=True)
class ShardKeys:
    """Every stored row of a shard: id, path and content hash, and whether it is live."""

    ids: np.ndarray
    paths: list[str]
    hashes: list[str]
    live: np.ndarray


def read_keys(directory: Path, shard: Shard, verify: bool = True) -> ShardKeys:
    """A shard's rows as (id, path, content hash, live), from its table and tombstones."""
    import pyarrow.parquet as pq

    path = parquet_path(directory, shard)
    if verify:
        verify_file(path, shard.parquet_sha256)
    table = pq.read_table(path, columns=["id", "path", "content_hash"])
    ids = np.asarray(table.column("id").to_numpy(), dtype=np.int64)
    return ShardKeys(
        ids,
        table.column("path").to_pylist(),
        table.column("content_hash").to_pylist(),
        ~np.isin(ids, read_tombstones(directory, shard, verify)),
    )


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, so inner product is cosine similarity."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: np.ndarray = vectors / np.maximum(norms, 1e-12)
    return unit


def write_faiss(path: Path, vectors: np.ndarray, ids: np.ndarray, index_type: str) -> None:
    import faiss

    index = faiss.index_factory(
        vectors.shape[1], f"IDMap2,{index_type}", faiss.METRIC_INNER_PRODUCT
    )
    index.add_with_ids(vectors, ids)
    faiss.write_index(index, str(path))


def write_parquet(path: Path, ids: np.ndarray, norms: np.ndarray, rows: Sequence[Row]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    scalars = [r.scalar_columns() for r in rows]
    columns: dict[str, Any] = {
        "id": pa.array(ids, type=pa.int64()),
        "path": pa.array([r.path for r in rows], type=pa.string()),
        "content_hash": pa.array([r.content_hash for r in rows], type=pa.string()),
        # The vector's length before normalisation: unit vector * norm is the raw embedding.
        "norm": pa.array(norms, type=pa.float32()),
    }
    for name in sorted({name for r in scalars for name in r} - set(columns)):
        columns[name] = pa.array([r.get(name) for r in scalars], type=pa.string())
    pq.write_table(pa.table(columns), path)


def read_shard_index(path: Path, mmap: bool | None = None) -> Any:
    """A shard's FAISS index, memory-mapped if asked (None: if the file is large).

    FAISS 1.10+ maps the file's contents in place (IO_FLAG_MMAP_IFC) for flat codes, IVF
    lists and HNSW storage, so only the pages a search touches are read.
    """
    import faiss

    if mmap is None:
        mmap = path.stat().st_size >= MMAP_MIN_BYTES
    flags = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) if mmap else 0
    return faiss.read_index(str(path), flags)


def reconstruct_rows(index: Any, start: int, count: int) -> np.ndarray:
    """Rows start .. start + count - 1 of an index's storage, as float32 numpy.

    The output buffer is passed in: faiss.contrib.torch_utils (which some libraries import,
    pytorch-metric-learning among them) makes FAISS return torch tensors otherwise.
    """
    out = np.empty((count, index.d), dtype=np.float32)
    index.reconstruct_n(start, count, out)
    return out


def reconstruct_ids(index: Any, ids: np.ndarray) -> np.ndarray:
    """The stored vectors of `ids` (each in the index) from an IDMap2 shard index."""
    import faiss

    ids = np.ascontiguousarray(ids, dtype=np.int64)
    try:
        vectors = index.reconstruct_batch(ids)
    except RuntimeError:
        # An IVF without a re-ranking copy finds a vector through its direct map.
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None:
            raise
        ivf.make_direct_map()
        vectors = index.reconstruct_batch(ids)
    out: np.ndarray = np.asarray(vectors, dtype=np.float32)
    return out


def staged_vectors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of a staged (IDMap2,Flat) shard file, in its storage order."""
    import faiss

    staged = read_shard_index(path, mmap=True)
    flat = faiss.downcast_index(staged.index)
    return faiss.vector_to_array(staged.id_map), reconstruct_rows(flat, 0, staged.ntotal)
