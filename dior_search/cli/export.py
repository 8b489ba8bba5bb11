"""`dior-search export`: a collection's vectors and rows as Parquet (or .npy) for other tools."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
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
    given_path,
    opened_store,
)
from dior_search.data.collections import check_condition
from dior_search.errors import OutputError, UsageError


@app.command()
def export(
    out: Annotated[Path, typer.Argument(parser=given_path, help="Folder to write the files into.")],
    condition: Annotated[
        list[str] | None,
        typer.Option(
            "--condition", "-c", help="Condition to export (repeatable). Default: all indexed."
        ),
    ] = None,
    dataset: DatasetOpt = None,
    images: ImagesOpt = None,
    index_path: Annotated[
        Path | None,
        typer.Option(
            "--index", parser=given_path, help="One index directory (instead of a collection)."
        ),
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
    for asked in condition or ():
        check_condition(asked)
    if index_path is not None:
        if dataset is not None or images is not None or condition or store is not None:
            raise UsageError(
                "--index names one index folder: give no --dataset, --images, -c or --store"
            )
    elif collection_name(dataset, images) is None:
        raise UsageError("give one of --dataset NAME, --images DIR or --index DIR")
    check_out_folder(out)
    # Only now the store's libraries (torch, FAISS): every usage error above answers at once.
    from dior_search.store.export import EXPORT_FORMATS, export_collection, export_index
    from dior_search.store.stores import open_reader

    if export_format not in EXPORT_FORMATS:
        valid = ", ".join(EXPORT_FORMATS)
        raise UsageError(f"unknown format '{export_format}'; valid: {valid}")
    if index_path is not None:
        reader = open_reader(index_path)
        with output_errors(out):
            exported = [export_index(reader, out, export_format)]
    else:
        with opened_store(store, indexes) as index_store, output_errors(out):
            exported = export_collection(
                index_store,
                str(collection_name(dataset, images)),  # one of them, checked above
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


def check_out_folder(out: Path) -> None:
    """OutputError now, before any index is read, where `out` is not a folder (a file, a
    device) or cannot be made or written in."""
    try:
        info = out.stat()
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise OutputError(f"cannot write into {out}: {exc.strerror}") from None
    if info is not None and not stat.S_ISDIR(info.st_mode):
        raise OutputError(f"{out} is not a folder: give a folder to write the files into")
    ancestor = out.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"cannot make folder {out}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {out}: {os.strerror(errno.EACCES)}")


@contextmanager
def output_errors(out: Path) -> Iterator[None]:
    """What a failed write into `out` raises: one OutputError line (exit 7) naming the file
    and the reason (a folder that cannot be made, a full disk)."""
    try:
        yield
    except OSError as exc:
        named = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(out) else ""
        raise OutputError(f"cannot write into {out}{named}: {exc.strerror or exc}") from None
