"""One shard's files: a FAISS index of unit vectors with their ids, a Parquet table, and the
ids of its deleted rows.

    shard-00000.faiss                  FAISS index of L2-normalised vectors, ids stored with them
    shard-00000.parquet                one row per vector: id, path, content_hash, norm, label_*,
                                       and the model's answer where the index stores answers
    shard-00000.deleted-7.parquet      ids of the rows deleted since (written at generation 7)

Image paths are data (see data.paths): a name that is valid UTF-8 is stored as it is in the
`path` column; a name that is not is stored in `path` with U+FFFD for each byte that is not
UTF-8 (readable, lossy) and exactly, as bytes, in a `path_bytes` column (null elsewhere;
absent from a shard none of whose names needs it). Every file is opened through the helpers
below, which give FAISS and Arrow an open file where the index folder's own path is not
UTF-8 (neither library can take such a name).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dior_search.data.parquet import ParquetTable
from dior_search.data.paths import fs_path, is_text, name_bytes, readable
from dior_search.errors import IndexStoreError
from dior_search.models.answers import Answer
from dior_search.store.files import sha256_file, verify_file
from dior_search.store.manifest import Shard
from dior_search.store.schema import (
    ANSWER,
    ANSWER_COLUMNS,
    ANSWER_LOGPROB,
    LOG_PARTITION,
    PATH_BYTES,
    Row,
    stored_paths,
)

# Shards at least this large are memory-mapped by default rather than read into RAM.
MMAP_MIN_BYTES = 16 << 20


def faiss_path(directory: Path, shard: Shard | str) -> Path:
    name = shard if isinstance(shard, str) else shard.name
    return directory / f"{name}.faiss"


def parquet_path(directory: Path, shard: Shard | str) -> Path:
    name = shard if isinstance(shard, str) else shard.name
    return directory / f"{name}.parquet"


def written_shard(directory: Path, name: str, ids: np.ndarray, index_type: str) -> Shard:
    """The manifest entry of shard `name`, whose two files are written: its rows' ids
    (ascending), its index type and the files' checksums."""
    return Shard(
        name,
        len(ids),
        int(ids[0]),
        sha256_file(faiss_path(directory, name)),
        sha256_file(parquet_path(directory, name)),
        last_id=int(ids[-1]),
        index_type=index_type,
    )


def tombstones_path(directory: Path, shard: Shard) -> Path:
    return directory / shard.tombstones


def remove_shard_files(directory: Path, shard: Shard) -> None:
    """Delete a shard's files (once the manifest no longer lists it); gone ones are fine."""
    for name in shard.files():
        (directory / name).unlink(missing_ok=True)


def write_tombstones(path: Path, ids: np.ndarray) -> None:
    """A Parquet table of one int64 column `id`: the shard's deleted rows, ascending."""
    import pyarrow as pa

    write_table(pa.table({"id": pa.array(np.sort(ids), type=pa.int64())}), path)


def read_tombstones(directory: Path, shard: Shard, verify: bool = True) -> np.ndarray:
    """The ids of a shard's deleted rows, ascending (empty if none); checked if `verify`."""
    if not shard.tombstones:
        return np.empty(0, dtype=np.int64)
    path = tombstones_path(directory, shard)
    if verify:
        verify_file(path, shard.tombstones_sha256)
    ids = read_table(path, ["id"]).column("id").to_numpy()
    dead = np.sort(np.asarray(ids, dtype=np.int64))
    if len(dead) != shard.deleted:
        raise IndexStoreError(
            f"{path} lists {len(dead)} deleted rows, the manifest {shard.deleted}: "
            "rebuild the index"
        )
    return dead


def read_ids(directory: Path, shard: Shard, verify: bool = True) -> np.ndarray:
    """Every stored row's id in a shard, in its storage order (ascending)."""
    path = parquet_path(directory, shard)
    if verify:
        verify_file(path, shard.parquet_sha256)
    ids = read_table(path, ["id"]).column("id").to_numpy()
    return np.asarray(ids, dtype=np.int64)


@dataclass(frozen=True)
class ShardKeys:
    """Every stored row of a shard: id, path and content hash, whether it is live, and
    whether it has an answer."""

    ids: np.ndarray
    paths: list[str]
    hashes: list[str]
    live: np.ndarray
    answered: np.ndarray


def read_keys(directory: Path, shard: Shard, verify: bool = True) -> ShardKeys:
    """A shard's rows as (id, path, content hash, live, answered), from its table and
    tombstones."""
    path = parquet_path(directory, shard)
    if verify:
        verify_file(path, shard.parquet_sha256)
    table = read_table(path, ["id", "path", "content_hash"], optional=[PATH_BYTES, ANSWER])
    has_answers = ANSWER in table.column_names
    ids = np.asarray(table.column("id").to_numpy(), dtype=np.int64)
    answered = np.zeros(len(ids), dtype=bool)
    if has_answers:
        answered = ~np.asarray(table.column(ANSWER).is_null().to_numpy(zero_copy_only=False))
    return ShardKeys(
        ids,
        table_paths(table),
        table.column("content_hash").to_pylist(),
        ~np.isin(ids, read_tombstones(directory, shard, verify)),
        answered,
    )


def read_answers(path: Path) -> dict[int, Answer]:
    """The stored answers of a shard table's rows, by id (none if it has no answers)."""
    if ANSWER not in column_names(path):
        return {}
    table = read_table(path, ["id", *ANSWER_COLUMNS])
    columns = [table.column(name).to_pylist() for name in ("id", *ANSWER_COLUMNS)]
    return {
        row_id: Answer(word, logprob, log_partition)
        for row_id, word, logprob, log_partition in zip(*columns, strict=True)
        if word is not None
    }


def write_faiss(path: Path, vectors: np.ndarray, ids: np.ndarray, index_type: str) -> None:
    import faiss

    index = faiss.index_factory(
        vectors.shape[1], f"IDMap2,{index_type}", faiss.METRIC_INNER_PRODUCT
    )
    index.add_with_ids(vectors, ids)
    write_index_file(index, path)


def write_index_file(index: Any, path: Path) -> None:
    """Write a FAISS index to `path`, whatever bytes its folder's name holds.

    Always through a Python file: FAISS's own writer only prints a failed close (a full disk)
    on stderr and returns as if it had written, leaving an empty or cut file behind; Python's
    close raises the OSError, so the write fails and nothing is renamed into place.
    """
    import faiss

    with path.open("wb") as handle:
        faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))  # type: ignore[attr-defined]


def read_index_file(path: Path, mmap: bool = False) -> Any:
    """Read a FAISS index from `path`; memory-mapped if asked and its name allows."""
    import faiss

    name = fs_path(path)
    if name is not None:
        flags = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) if mmap else 0
        return faiss.read_index(name, flags)
    with path.open("rb") as handle:  # FAISS can map only a file it opens by name
        return faiss.read_index(faiss.PyCallbackIOReader(handle.read))  # type: ignore[attr-defined]


def write_parquet(
    path: Path,
    ids: np.ndarray,
    norms: np.ndarray,
    rows: Sequence[Row],
    answers: Sequence[Answer] | None = None,
) -> None:
    """A shard's table: a row per vector; the answer columns where `answers` are given."""
    import pyarrow as pa

    scalars = [r.scalar_columns() for r in rows]
    columns: dict[str, Any] = {
        "id": pa.array(ids, type=pa.int64()),
        **path_columns([r.path for r in rows]),
        "content_hash": pa.array([r.content_hash for r in rows], type=pa.string()),
        # The vector's length before normalisation: unit vector * norm is the raw embedding.
        "norm": pa.array(norms, type=pa.float32()),
    }
    for name in sorted({name for r in scalars for name in r} - {"path", *columns}):
        columns[name] = pa.array([r.get(name) for r in scalars], type=pa.string())
    if answers is not None:
        columns[ANSWER] = pa.array([a.word for a in answers], type=pa.string())
        columns[ANSWER_LOGPROB] = pa.array([a.logprob for a in answers], type=pa.float32())
        columns[LOG_PARTITION] = pa.array([a.log_partition for a in answers], type=pa.float32())
    write_table(pa.table(columns), path)


def path_columns(paths: Sequence[str]) -> dict[str, Any]:
    """The `path` column (and `path_bytes`, if a name is not UTF-8) of `paths`."""
    import pyarrow as pa

    exact = [None if is_text(p) else name_bytes(p) for p in paths]
    columns = {"path": pa.array([readable(p) for p in paths], type=pa.string())}
    if any(raw is not None for raw in exact):
        columns[PATH_BYTES] = pa.array(exact, type=pa.binary())
    return columns


def table_paths(table: Any) -> list[str]:
    """The image paths of a table read with its `path` (and `path_bytes`, if any) columns."""
    names = table.column_names
    exact = table.column(PATH_BYTES).to_pylist() if PATH_BYTES in names else None
    return stored_paths(table.column("path").to_pylist(), exact)


def write_table(table: Any, path: Path) -> None:
    """Write a Parquet table to `path`, whatever bytes its folder's name holds."""
    import pyarrow.parquet as pq

    with path.open("wb") as handle:
        pq.write_table(table, handle)


def read_table(
    path: Path, columns: Sequence[str] | None = None, optional: Sequence[str] = ()
) -> Any:
    """A Parquet table from `path`: every column, or `columns` and those of `optional` that
    the table has."""
    with path.open("rb") as handle:
        parquet = ParquetTable(handle)
        if columns is None:
            return parquet.read()
        present = set(parquet.names)
        return parquet.read([*columns, *(c for c in optional if c in present)])


def open_table(path: Path) -> Any:
    """`path` as an open Arrow file for reading (a native one where its name allows)."""
    import pyarrow as pa

    name = fs_path(path)
    if name is not None:
        return pa.OSFile(name, "r")
    return pa.PythonFile(path.open("rb"), mode="r")


def column_names(path: Path) -> list[str]:
    with path.open("rb") as handle:
        return ParquetTable(handle).names


def read_shard_index(path: Path, mmap: bool | None = None) -> Any:
    """A shard's FAISS index, memory-mapped if asked (None: if the file is large).

    FAISS 1.10+ maps the file's contents in place (IO_FLAG_MMAP_IFC) for flat codes, IVF
    lists and HNSW storage, so only the pages a search touches are read.
    """
    if mmap is None:
        mmap = path.stat().st_size >= MMAP_MIN_BYTES
    return read_index_file(path, mmap)


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
