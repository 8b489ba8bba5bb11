"""`dior-search export`: a collection's vectors and rows as Parquet (or .npy) for other tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dior_search import defaults
from dior_search.cli.app import app, console
from dior_search.cli.options import (
    DatasetOpt,
    ImagesOpt,
    IndexesOpt,
    PickModelOpt,
    StoreOpt,
    collection_name,
    opened_store,
)
from dior_search.errors import UsageError


@app.command()
def export(
    out: Annotated[Path, typer.Argument(help="Folder to write the files into.")],
    condition: Annotated[
        list[str] | None,
        typer.Option(
            "--condition", "-c", help="Condition to export (repeatable). Default: all indexed."
        ),
    ] = None,
    dataset: DatasetOpt = None,
    images: ImagesOpt = None,
    index_path: Annotated[
        Path | None, typer.Option("--index", help="One index directory (instead of a collection).")
    ] = None,
    export_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="parquet: one Parquet file per condition, the vector a fixed-size list of "
            "float32; npy: a float32 matrix per condition and a Parquet table of its rows.",
        ),
    ] = "parquet",
    model: PickModelOpt = None,
    indexes: IndexesOpt = defaults.DEFAULT_INDEXES_DIR,
    store: StoreOpt = None,
) -> None:
    """Write indexed vectors with their ids, paths, content hashes and labels to files that
    pyarrow, pandas, DuckDB or a vector database read directly."""
    from dior_search.store.export import EXPORT_FORMATS, export_collection, export_index
    from dior_search.store.reader import IndexReader

    if export_format not in EXPORT_FORMATS:
        valid = ", ".join(EXPORT_FORMATS)
        raise UsageError(f"unknown format {export_format!r}; valid: {valid}")
    if index_path is not None:
        if dataset is not None or images is not None or condition or store is not None:
            raise UsageError(
                "--index names one index folder: give no --dataset, --images, -c or --store"
            )
        exported = [export_index(IndexReader(index_path), out, export_format)]
    else:
        name = collection_name(dataset, images)
        if name is None:
            raise UsageError("give one of --dataset NAME, --images DIR or --index DIR")
        with opened_store(store, indexes) as index_store:
            exported = export_collection(
                index_store,
                name,
                out,
                export_format,
                condition,
                model,
            )
    table = Table(title=escape(f"exported to {out}"))
    for column in ("condition", "rows", "dim", "files"):
        numeric = column in ("rows", "dim")
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for done in exported:
        files = ", ".join(path.name for path in done.files)
        table.add_row(escape(done.condition), str(done.rows), str(done.dim), escape(files))
    console.print(table)
