"""`dior-search facets`: the model's answers under a condition, with how many images gave each."""

from __future__ import annotations

import json
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
    WhereOpt,
    collection_name,
    opened_store,
)
from dior_search.data.collections import check_condition
from dior_search.errors import UsageError


@app.command()
def facets(
    condition: Annotated[
        list[str] | None,
        typer.Option("--condition", "-c", help="Condition whose answers to count (repeatable)."),
    ] = None,
    dataset: DatasetOpt = None,
    images: ImagesOpt = None,
    where: WhereOpt = None,
    top: Annotated[int, typer.Option(help="Show this many answers, most frequent first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
    model: PickModelOpt = None,
    indexes: IndexesOpt = defaults.DEFAULT_INDEXES_DIR,
    store: StoreOpt = None,
) -> None:
    """List the model's answers under each condition with their counts: the collection's
    automatic tags (an unlabelled folder's colours, seasons, ...). Loads no model."""
    from dior_search.search.filters import parse_filters

    if not condition:
        raise UsageError("--condition is required: the condition whose answers to count")
    if top < 1:
        raise UsageError("--top must be at least 1")
    for asked in condition:
        check_condition(asked)
    parse_filters(where or ())
    name = collection_name(dataset, images)
    if name is None:
        raise UsageError("give one of --dataset NAME or --images DIR")
    from dior_search.search.searcher import Searcher  # torch: after every check

    with opened_store(store, indexes) as index_store:
        searcher = Searcher.open(index_store, collection=name, model=model)
        found = [searcher.facets(name, c, tuple(where or ()), top) for c in condition]
    if as_json:
        print(json.dumps({f.condition: f.to_json() for f in found}, indent=2))
        return
    for counted in found:
        filters = f" where {', '.join(where)}" if where else ""
        table = Table(
            title=escape(
                f"{counted.collection} under '{counted.condition}'{filters}: {counted.images} "
                f"images, {counted.distinct} answers"
            )
        )
        for column in ("answer", "images", "share"):
            if column == "answer":
                table.add_column(column, overflow="fold")
            else:
                table.add_column(column, justify="right", no_wrap=True)
        for answer, count in counted.counts:
            share = count / counted.images if counted.images else 0.0
            table.add_row(escape(answer), str(count), f"{share:.1%}")
        if counted.unanswered:
            table.add_row("(no answer)", str(counted.unanswered), "")
        console.print(table)
