"""Exporting an index for other tools: Parquet (vectors inside) or a .npy matrix plus Parquet.

`export_index` writes one index (one condition) through the reader's API, a batch of rows at a
time, so memory stays bounded whatever the index's size:

- `parquet`: `<name>.parquet` with every column of the index's tables but the internal ones
  (`id`, `path`, `content_hash`, `label_<name>`, and whatever later versions add), `source`
  and `key` for items of shards or Parquet files, and `vector`, the embedding as the model
  made it (a fixed-size list of float32; unit vector x stored norm).
- `npy`: `<name>.npy`, the vectors as a float32 matrix, row i for the table's row i, and
  `<name>.parquet` with the same columns but `vector`.

pyarrow, pandas, DuckDB, Polars, LanceDB and Milvus read both. The manifest's description of
the vectors (collection, condition, prompt, model and settings) is in the Parquet file's
metadata under `dior_search`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dior_search.data.sources import split_source_key
from dior_search.errors import IndexStoreError, UsageError
from dior_search.store.backend import IndexStore, Reader
from dior_search.store.files import atomic_file
from dior_search.store.folder import FolderStore, index_first
from dior_search.store.layout import condition_folder

ExportFormat = Literal["parquet", "npy"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("parquet", "npy")
# Columns that describe how a vector is stored, not the image: folded into `vector`.
INTERNAL_COLUMNS = frozenset({"norm"})
VECTOR = "vector"
METADATA_KEY = b"dior_search"
BATCH_ROWS = 8192


@dataclass(frozen=True)
class Exported:
    """What one index's export wrote."""

    condition: str
    rows: int
    dim: int
    files: list[Path]


def export_index(
    reader: Reader,
    out_dir: Path,
    export_format: ExportFormat = "parquet",
    name: str | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Exported:
    """Write one index's rows and vectors to `out_dir` (file names: `name`, default the
    condition's index folder name); every file is written aside and renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if export_format not in EXPORT_FORMATS:
        valid = ", ".join(EXPORT_FORMATS)
        raise UsageError(f"unknown export format {export_format!r}; valid: {valid}")
    manifest = reader.manifest
    condition = str(manifest.condition["name"])
    stem = name or condition_folder(condition)
    out_dir.mkdir(parents=True, exist_ok=True)
    dim = manifest.dim
    with_vectors = export_format == "parquet"
    schema = export_schema(reader, dim, with_vectors).with_metadata(
        {METADATA_KEY: json.dumps(describe(reader)).encode()}
    )
    table_path = out_dir / f"{stem}.parquet"
    matrix_path = out_dir / f"{stem}.npy"
    ids = reader.ids
    # The writer gets an open file: Arrow cannot open a name that is not UTF-8.
    with (
        atomic_file(table_path) as table_tmp,
        table_tmp.open("wb") as table_file,
        pq.ParquetWriter(table_file, schema) as writer,
    ):
        if export_format == "npy":
            with atomic_file(matrix_path) as matrix_tmp:
                matrix = np.lib.format.open_memmap(
                    matrix_tmp, mode="w+", dtype=np.float32, shape=(len(ids), dim)
                )
                for start, columns, vectors in batches(reader, schema, batch_rows):
                    matrix[start : start + len(vectors)] = vectors
                    writer.write_table(pa.table(columns, schema=schema))
                matrix.flush()
                del matrix
        else:
            for _, columns, vectors in batches(reader, schema, batch_rows):
                flat = pa.array(vectors.reshape(-1), type=pa.float32())
                columns[VECTOR] = pa.FixedSizeListArray.from_arrays(flat, dim)
                writer.write_table(pa.table(columns, schema=schema))
    files = [table_path] if with_vectors else [matrix_path, table_path]
    return Exported(condition, len(ids), dim, files)


def export_collection(
    indexes: Path | IndexStore,
    collection: str,
    out_dir: Path,
    export_format: ExportFormat = "parquet",
    conditions: Sequence[str] | None = None,
    model: str | None = None,
) -> list[Exported]:
    """Export a collection's indexes of one embedder (any method), one file set per condition.

    `indexes`: a folder of indexes or any store. `model` picks the embedder (a model as
    given when indexing, or an embedder folder name) where the collection has indexes of
    several; `conditions` default to all of them.
    """
    store = FolderStore(indexes) if isinstance(indexes, Path) else indexes
    entries = store.find(collection, model=model)
    if not entries:
        by = f" built with model {model!r}" if model else ""
        raise IndexStoreError(
            f"no indexes of collection {collection!r}{by} in {store.name}: {index_first(store)}"
        )
    folders = sorted({entry.embedder_folder for entry in entries})
    if len(folders) > 1:
        raise UsageError(
            f"{collection} has indexes of several embedders: {', '.join(folders)}; pick one "
            "with --model"
        )
    by_condition = {entry.condition: entry for entry in entries}
    missing = [c for c in conditions or () if c not in by_condition]
    if missing:
        raise IndexStoreError(
            f"no index for condition {missing[0]!r} of {collection}; conditions with an "
            f"index: {', '.join(sorted(by_condition))}"
        )
    chosen = list(conditions) if conditions else sorted(by_condition)
    return [
        export_index(store.reader(by_condition[c].location), out_dir, export_format) for c in chosen
    ]


def exported_columns(reader: Reader) -> list[str]:
    """The index's table columns an export carries, in the order written."""
    return [name for name in reader.column_names() if name not in INTERNAL_COLUMNS]


def export_schema(reader: Reader, dim: int, with_vectors: bool) -> Any:
    """The export's columns: the tables' (types as stored), source and key, and the vector."""
    import pyarrow as pa

    types = reader.column_types()
    fields = []
    for name in exported_columns(reader):
        fields.append(pa.field(name, types[name]))
        if name == "path" and has_members(reader):
            fields += [pa.field("source", pa.string()), pa.field("key", pa.string())]
    if with_vectors:
        fields.append(pa.field(VECTOR, pa.list_(pa.float32(), dim)))
    return pa.schema(fields)


def has_members(reader: Reader) -> bool:
    return any(split_source_key(path)[1] is not None for path in reader.paths())


def batches(
    reader: Reader, schema: Any, batch_rows: int
) -> Iterator[tuple[int, dict[str, Any], np.ndarray]]:
    """(first row, columns as lists, raw vectors) per batch of rows, in id order."""
    ids = reader.ids
    names = [name for name in schema.names if name not in ("source", "key", VECTOR)]
    values = {name: reader.column(name) for name in names}
    split = [split_source_key(p) for p in values["path"]] if "source" in schema.names else []
    norms = np.asarray(reader.column("norm"), dtype=np.float32)
    for start in range(0, len(ids), batch_rows):
        stop = min(start + batch_rows, len(ids))
        columns: dict[str, Any] = {name: values[name][start:stop] for name in names}
        if split:
            columns["source"] = [source for source, _ in split[start:stop]]
            columns["key"] = [key for _, key in split[start:stop]]
        vectors = reader.vectors(ids[start:stop]) * norms[start:stop, None]
        yield start, columns, vectors


def describe(reader: Reader) -> dict[str, Any]:
    """What the exported vectors are, from the index's manifest."""
    manifest = reader.manifest
    return {
        "collection": manifest.collection,
        "condition": manifest.condition,
        "prompt": manifest.prompt,
        "embedder": manifest.embedder.to_fields(),
        "dim": manifest.dim,
        "index_type": manifest.index_type,
        "exact": reader.exact,
        "vector": "the embedding as made (unit vector x stored norm)",
    }
