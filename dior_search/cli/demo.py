"""`dior-search demo`: the offline demo, the bundled tiny model on generated images."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dior_search import defaults
from dior_search.cli.app import app, console, err_console
from dior_search.cli.options import with_embedder_options
from dior_search.cli.progress import progress_bar
from dior_search.data.synthetic import MAX_SPLIT_IMAGES, MIN_EVALUABLE_IMAGES
from dior_search.models.settings import EmbedderOptions


@app.command()
@with_embedder_options(exclude=("source",), batch_size=16, model=defaults.DEMO_MODEL)
def demo(
    options: EmbedderOptions,
    data_dir: Annotated[
        Path,
        typer.Option(
            help="The demo's own folder for its images (never the synthetic dataset's labels)."
        ),
    ] = defaults.DEFAULT_DEMO_DIR,
    n_images: Annotated[
        int,
        typer.Option(
            help=f"Images of the synthetic test split ({MIN_EVALUABLE_IMAGES} to "
            f"{MAX_SPLIT_IMAGES})."
        ),
    ] = 400,
) -> None:
    """Offline demo: embed the synthetic test split under each condition and score retrieval."""
    settings = options.dior()  # every option checked before torch loads
    from dior_search.evaluation.demo import run_demo

    started = time.perf_counter()
    with progress_bar("embedding", "emb", err_console) as bar:
        result = run_demo(
            settings, data_dir, n_images=n_images, on_start=bar.start, on_progress=bar.advance
        )
    table = Table(
        title=escape(f"recall@1 on {result.n_images} synthetic test images, model {options.model}")
    )
    table.add_column("condition")
    table.add_column("prompt condition")
    table.add_column("recall@1 (conditional)", justify="right")
    table.add_column("recall@1 (unconditional)", justify="right")
    for score in result.scores:
        table.add_row(
            score.condition,
            score.prompt_condition,
            f"{score.recall_at_1:.3f}",
            f"{score.unconditional_recall_at_1:.3f}",
        )
    console.print(table)
    for example in result.examples:
        query = example.query
        hits = Table(
            title=f"query {query.file_name} ({query.size} {query.color} {query.pattern} shape on "
            f"{query.background}) under condition '{example.condition}'"
        )
        for column in ("rank", "score", "image", "color", "background", "pattern", "size"):
            hits.add_column(column)
        for rank, (item, similarity) in enumerate(example.hits, start=1):
            hits.add_row(
                str(rank),
                f"{similarity:.3f}",
                item.file_name,
                item.color,
                item.background,
                item.pattern,
                item.size,
            )
        console.print(hits)
    console.print(f"done in {time.perf_counter() - started:.1f} s")
