"""`dior-search compact`: rewrite shards without their deleted rows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dior_search import defaults
from dior_search.cli.app import app, console
from dior_search.cli.options import (
    DatasetOpt,
    ImagesOpt,
    IndexesOpt,
    StoreOpt,
    collection_name,
    given_path,
    opened_store,
)
from dior_search.data.collections import check_condition
from dior_search.errors import IndexStoreError, UsageError

if TYPE_CHECKING:
    from dior_search.store.backend import IndexLocation


@app.command()
def compact(
    dataset: DatasetOpt = None,
    images: ImagesOpt = None,
    condition: Annotated[
        list[str] | None,
        typer.Option("--condition", "-c", help="Only this condition's index (repeatable)."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Only the indexes built with this model.")
    ] = None,
    index_path: Annotated[
        Path | None,
        typer.Option(
            "--index", parser=given_path, help="One index directory (instead of a search)."
        ),
    ] = None,
    indexes: IndexesOpt = defaults.DEFAULT_INDEXES_DIR,
    store: StoreOpt = None,
    threshold: Annotated[
        float,
        typer.Option(
            help="Rewrite a shard once its deleted rows are more than this share of it "
            "(0: any deleted row)."
        ),
    ] = defaults.COMPACT_THRESHOLD,
) -> None:
    """Rewrite the shards whose deleted rows pass --threshold (an `index` run does this at
    its end): searches get faster and the files smaller; nothing searchable changes. On a
    Milvus store it asks the database to compact."""
    for asked in condition or ():
        check_condition(asked)
    if not 0 <= threshold < 1:
        raise UsageError(f"--threshold must be at least 0 and below 1, got {threshold}")
    if index_path is not None and (dataset is not None or images is not None or condition):
        raise UsageError("give --index alone, or a collection (and conditions) to search")
    if index_path is not None and store is not None:
        raise UsageError("--index names an index folder; give it without --store")
    with opened_store(store, indexes) as index_store:
        if index_path is not None:
            locations: list[IndexLocation] = [index_path]
        else:
            entries = index_store.find(collection_name(dataset, images), model=model)
            locations = [e.location for e in entries if not condition or e.condition in condition]
            indexed = {e.condition for e in entries}
            missing = [c for c in condition or () if c not in indexed]
            if missing:  # as query and facets say it: an index error, not a usage error
                valid = ", ".join(sorted(indexed))
                raise IndexStoreError(
                    f"no index for condition '{missing[0]}' in {index_store.name}; conditions "
                    f"with an index: {valid}"
                )
            if not locations:
                raise IndexStoreError(f"no index to compact in {index_store.name}")
        for location in locations:
            done = index_store.compact(location, threshold)
            if done.rows_dropped:
                message = (
                    f"{location}: {done.rows_dropped} deleted rows dropped "
                    f"({done.shards_rewritten} shards rewritten, {done.shards_dropped} "
                    f"dropped) in {done.seconds:.1f} s"
                )
            else:
                message = f"{location}: nothing to compact"
            console.print(message, markup=False, highlight=False, soft_wrap=True)
