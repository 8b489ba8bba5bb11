"""`dior-search groups`: a collection's images clustered under one condition, each group named
by the model's answers (search.groups)."""

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
    collection_name,
    opened_store,
)
from dior_search.data.paths import shown
from dior_search.errors import UsageError


@app.command()
def groups(
    condition: Annotated[
        str | None, typer.Option("--condition", "-c", help="Condition to group the images under.")
    ] = None,
    dataset: DatasetOpt = None,
    images: ImagesOpt = None,
    k: Annotated[
        int | None,
        typer.Option(
            "--k",
            help="Number of groups (default: the answers the model gave to at least 2% of the "
            "images; without answers, the best silhouette in 2..12).",
        ),
    ] = None,
    members: Annotated[int, typer.Option(help="Members shown per group.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the k-means restarts.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the groups as JSON.")] = False,
    model: PickModelOpt = None,
    indexes: IndexesOpt = defaults.DEFAULT_INDEXES_DIR,
    store: StoreOpt = None,
) -> None:
    """Cluster a collection's images under one condition (k-means on the stored vectors) and
    name each group by the model's most common answer in it. Loads no model."""
    from dior_search.search.groups import group_images
    from dior_search.search.searcher import Searcher

    if not condition:
        raise UsageError("--condition is required: the condition to group the images under")
    if members < 0:
        raise UsageError("--members must be at least 0")
    name = collection_name(dataset, images)
    if name is None:
        raise UsageError("give one of --dataset NAME or --images DIR")
    with opened_store(store, indexes) as index_store:
        searcher = Searcher.open(index_store, collection=name, model=model)
        found = group_images(searcher, name, condition, k, seed)
    if as_json:
        print(json.dumps(found.to_json(members), indent=2))
        return
    table = Table(
        title=escape(
            shown(
                f"{found.collection} under '{found.condition}': {found.k} groups "
                f"(k by {found.k_chosen_by})"
            )
        )
    )
    for column in ("group", "images", "named by", "members"):
        table.add_column(column, justify="right" if column == "images" else "left")
    for group in found.groups:
        table.add_row(
            escape(shown(group.name)),
            str(group.size),
            group.named_by,
            escape(shown(", ".join(group.paths[:members]))),
        )
    console.print(table)
