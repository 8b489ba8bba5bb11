"""Parquet files read on the calling thread: the one way this package reads Parquet.

Arrow decodes columns and prefetches byte ranges on its own thread pools. A file opened as
a Python object (as the store opens shard tables it rewrites, and any file whose name is not
UTF-8) leaves Python-owned buffers with those threads; a thread that drops the last of them
while the interpreter exits can no longer take the GIL, and the process aborts with
"terminate called without an active exception" (apache/arrow#34314). A resumed
`dior-search index` ended that way, exit 134 after a complete run, about one run in four.
The tables read here are a shard's rows or one image column of a row group; for what reading
them on the calling thread costs, see `benchmarks/parquet_reads.py`.
"""

from collections.abc import Sequence
from typing import Any


class ParquetTable:
    """A Parquet file (a path or an open file) whose reads never use Arrow's threads."""

    def __init__(self, source: Any) -> None:
        import pyarrow.parquet as pq

        self.file = pq.ParquetFile(source, pre_buffer=False)

    @property
    def schema(self) -> Any:
        """The file's Arrow schema."""
        return self.file.schema_arrow

    @property
    def names(self) -> list[str]:
        """The file's column names."""
        return list(self.file.schema_arrow.names)

    def group_rows(self) -> list[int]:
        """How many rows each row group holds, in order."""
        metadata = self.file.metadata
        return [metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)]

    def read(self, columns: Sequence[str] | None = None) -> Any:
        """An Arrow table of `columns` (None: all of them)."""
        chosen = None if columns is None else list(columns)
        return self.file.read(columns=chosen, use_threads=False)

    def read_row_group(self, group: int, columns: Sequence[str]) -> Any:
        """An Arrow table of `columns` from row group `group`."""
        return self.file.read_row_group(group, columns=list(columns), use_threads=False)
