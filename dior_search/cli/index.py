"""`dior-search index`: embed a collection under conditions into indexes (sharded FAISS
folders, or a Milvus database with --store)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from dior_search import defaults
from dior_search.cli.app import app, console, err_console
from dior_search.cli.hub import settle_hub_access
from dior_search.cli.options import (
    DatasetOpt,
    DatasetsDirOpt,
    ImageColumnOpt,
    ImagesOpt,
    IndexesOpt,
    StoreOpt,
    check_store,
    choose_model,
    collection_name,
    default_model_hint,
    open_collection,
    opened_store,
    with_embedder_options,
)
from dior_search.cli.progress import progress_bar
from dior_search.data.collections import DATASETS, UNCONDITIONAL, check_conditions
from dior_search.data.paths import shown
from dior_search.errors import IndexStoreError, UsageError
from dior_search.models.settings import DiorSettings, EmbedderOptions

if TYPE_CHECKING:
    from dior_search.indexing.job import IndexReport
    from dior_search.indexing.sync import ConfirmRemoval, Removal
    from dior_search.models.embedder import Embedder
    from dior_search.store.backend import IndexLocation

SUMMARY = ("added", "changed", "moved", "removed", "unchanged")

ConditionsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--condition",
        "-c",
        help="Condition to index (repeatable): a dataset's condition name, free text, or "
        "'unconditional'. Default: all of the dataset's conditions; for --images, every "
        "condition already indexed for those images with this model (a re-sync).",
    ),
]
IndexTypeOpt = Annotated[
    str | None,
    typer.Option(
        help="auto (Flat while small, else a compressed type within --memory-budget), "
        "flat, or a FAISS factory string such as 'PCA256,IVF2048,SQ8,Refine(SQ8)'. "
        "Default: the index's own type, auto for a new index.",
    ),
]


@app.command()
@with_embedder_options()
def index(
    options: EmbedderOptions,
    dataset: DatasetOpt = None,
    images: ImagesOpt = None,
    image_column: ImageColumnOpt = None,
    condition: ConditionsOpt = None,
    datasets_dir: DatasetsDirOpt = defaults.DEFAULT_DATASETS_DIR,
    indexes: IndexesOpt = defaults.DEFAULT_INDEXES_DIR,
    store: StoreOpt = None,
    shard_size: Annotated[
        int | None,
        typer.Option(
            help=f"Vectors per shard of a new index (default {defaults.DEFAULT_SHARD_SIZE}); "
            "an existing index keeps its own."
        ),
    ] = None,
    index_type: IndexTypeOpt = None,
    memory_budget: Annotated[
        str | None,
        typer.Option(help="Size the index may take for auto, e.g. 8G (default: 8G)."),
    ] = None,
    part: Annotated[
        int | None,
        typer.Option(help="Embed only this part (0-based) of --parts: re-runs one failed part."),
    ] = None,
    parts: Annotated[
        int | None,
        typer.Option(help="Number of parts of a distributed run (accelerate launch sets it)."),
    ] = None,
    keep_missing: Annotated[
        bool,
        typer.Option(
            "--keep-missing",
            help="Keep the entries of images whose files are gone (e.g. an unmounted drive).",
        ),
    ] = False,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            "-y",
            help="Remove the entries of vanished images even if that is most of "
            "an index (without it such a run asks, or is refused when not on a terminal).",
        ),
    ] = False,
    answers: Annotated[
        bool | None,
        typer.Option(
            "--answers/--no-answers",
            help="The model's one-word answer of every image, stored beside its vector for "
            "text queries, facets and filters (default: for new indexes). --answers also adds "
            "them to an existing index, by embedding its images again; --no-answers builds "
            "new indexes without them.",
        ),
    ] = None,
) -> None:
    """Make each condition's index hold exactly the collection's current images.

    New and changed images are embedded, renamed or copied ones keep their vectors, entries of
    vanished ones are removed; resumable. Under `accelerate launch` every process embeds its
    own part and the last one to finish merges the parts into the index.
    """
    # Light modules only until every option is checked: a usage error answers at once,
    # before torch and the model libraries load.
    from dior_search.indexing.settings import IndexSettings

    settings = IndexSettings(
        indexes_dir=indexes,
        shard_size=shard_size,
        index_type=index_type,
        memory_budget=memory_budget,
        keep_missing=keep_missing,
        answers=answers is not False,
        add_answers=answers is True,
    )
    asked = check_conditions(condition or [])
    check_dataset_conditions(dataset, asked)
    if (dataset is None) == (images is None):
        raise UsageError("give exactly one of --dataset NAME or --images DIR")
    check_store(store)
    options.dior()  # every embedding option checked: batch size, dtype, template, ...
    named = collection_name(dataset, images) or ""
    settle_hub_access([options.model or defaults.default_model([named])])
    from dior_search.indexing.parts import launched_part, process_device, requested_part
    from dior_search.indexing.run import index_collection, refuse_new_empty
    from dior_search.models import load_embedder
    from dior_search.store.stores import open_store

    spec = requested_part(part, parts)
    settings = replace(settings, part=spec)
    collection = open_collection(dataset, images, datasets_dir, image_column)
    conditions = asked or list(collection.conditions)
    if not conditions:
        model = options.for_collections([collection.name]).model
        conditions = indexed_conditions(store, indexes, collection.name, model, images)
        err_console.print(
            f"re-syncing the conditions already indexed: {', '.join(map(shown, conditions))}",
            markup=False,
            highlight=False,
        )
    refuse_new_empty(collection, lambda: open_store(store, indexes))
    texts = [collection.condition_text(c) for c in conditions]
    chosen = choose_model(options, [collection.name], [t for t in texts if t is not None])
    model_settings = replace(chosen, device=process_device(options.device)).dior()
    model_settings = dtype_of_indexed(store, indexes, collection.name, conditions, model_settings)
    with default_model_hint(options):
        embedder = load_embedder(model_settings)
    if answers is True:  # refused now, before any index folder is made (not by the first sync)
        check_answers(embedder, conditions)
    running = spec or launched_part()
    label = f"indexing {collection.name}" + (f" ({running.name})" if running else "")
    # Under accelerate launch, one bar (the first process's) rather than one per process.
    quiet = running is not None and running.part != 0 and spec is None
    with (
        opened_store(store, indexes, create=True) as index_store,
        progress_bar(label, "img", err_console) as bar,
    ):
        report = index_collection(
            collection,
            conditions,
            embedder,
            settings,
            on_start=None if quiet else bar.start,
            on_progress=None if quiet else bar.advance,
            confirm_removal=removal_confirmation(yes),
            store=index_store,
        )
    print_summary(collection.name, len(collection.items), report)
    for path, reason in report.skipped:
        err_console.print(
            f"[yellow]skipped[/yellow] {escape(shown(path))}: {escape(shown(reason))}",
            highlight=False,
        )
    lines = [*report.notes]
    lines += [
        f"{name}: all parts complete, merged into {report.indexes[name]}" for name in report.merged
    ]
    lines += [
        f"{name}: waiting for parts {', '.join(map(str, missing))}; the last to finish "
        "merges (re-run a failed one with the same command, or --part K --parts N)"
        for name, missing in report.waiting.items()
    ]
    for line in lines:
        console.print(shown(line), markup=False, highlight=False, soft_wrap=True)


def dtype_of_indexed(
    store: str | None,
    indexes: Path,
    collection: str,
    conditions: Sequence[str],
    asked: DiorSettings,
) -> DiorSettings:
    """`asked`, where its dtype is `auto` and the conditions' indexes exist: in the dtype their
    manifests record, so that added vectors match those indexed (see docs/cpu.md)."""
    from dior_search.models.loading import follow_recorded_dtype

    if asked.dtype != "auto":
        return asked
    try:
        with opened_store(store, indexes) as index_store:
            entries = index_store.find(collection, "dior", asked.model, damaged={})
    except IndexStoreError:  # no indexes folder or database yet
        return asked
    recorded = [entry.manifest.embedder for entry in entries if entry.condition in conditions]
    return follow_recorded_dtype(asked, recorded)


def check_dataset_conditions(dataset: str | None, conditions: Sequence[str]) -> None:
    """UsageError for a condition that a named dataset does not have: its images are indexed
    under its own conditions (free text is for --images folders), so an unknown name is a typo,
    not 400 images embedded under it."""
    if dataset not in DATASETS:
        return  # no dataset, or an unknown one (open_collection says which exist)
    known = DATASETS[dataset].conditions
    for name in conditions:
        if name != UNCONDITIONAL and name not in known:
            valid = ", ".join([*known, UNCONDITIONAL])
            raise UsageError(
                f"'{name}' is not a condition of the {dataset} dataset; valid: {valid} (free "
                "text conditions are for --images folders)"
            )


def check_answers(embedder: Embedder, conditions: Sequence[str]) -> None:
    """UsageError where `--answers` cannot be honoured by this embedder (its layer is not
    the last, or it reads no answers at all)."""
    from dior_search.models.embedder import answers_given

    state = answers_given(embedder)
    if state == "stored":
        return
    reason = (
        "its vectors are not the last layer's, which the output head reads"
        if state == "not-last-layer"
        else "this embedder gives no answers"
    )
    raise UsageError(f"--answers: the index of '{conditions[0]}' cannot have answers: {reason}")


def indexed_conditions(
    store: str | None, indexes: Path, collection: str, model: str | None, images: Path | None
) -> list[str]:
    """The conditions `collection` (of the folder or files `images`) is indexed under with
    `model` (what `index` without --condition re-syncs), in name order; UsageError where it
    has none yet."""
    damaged: dict[IndexLocation, IndexStoreError] = {}
    with opened_store(store, indexes) as index_store:
        entries = index_store.find(collection, "dior", model, damaged=damaged)
        where = index_store.name
    conditions = sorted({entry.condition for entry in entries})
    if not conditions:
        by = f" with model {model}" if model else ""
        raise UsageError(
            f"--images needs at least one --condition (any free text): there is no index of "
            f"{shown(str(images))}{by} in {shown(where)} to re-sync"
        )
    return conditions


def removal_confirmation(yes: bool) -> ConfirmRemoval | None:
    """How a run that would remove most of an index is confirmed: --yes, a question on a
    terminal, or not at all (refused)."""
    if yes:
        return lambda removals: True
    if not sys.stdin.isatty():
        return None

    def ask(removals: Sequence[Removal]) -> bool:
        for removal in removals:
            err_console.print(
                f"{shown(removal.condition)}: {removal.removed} of the {removal.indexed} "
                "indexed images have no file any more",
                markup=False,
                highlight=False,
            )
        return typer.confirm("Remove them from the index?", default=False, err=True)

    return ask


def print_summary(collection: str, images: int, report: IndexReport) -> None:
    """One line per condition: what the run did to its index, and where it is."""
    title = f"{collection}: {images} images"
    if report.part is not None:
        title += f", {report.part.name}"
    console.print(shown(title), markup=False, highlight=False, soft_wrap=True)
    for name, directory in report.indexes.items():
        counts = report.counts.get(name)
        if counts is None:
            continue
        done = ", ".join(f"{getattr(counts, key)} {key}" for key in SUMMARY)
        console.print(
            shown(f"{name}: {done} ({directory})"), markup=False, highlight=False, soft_wrap=True
        )
        compacted = report.compacted.get(name)
        if compacted is not None and compacted.rows_dropped:
            console.print(
                shown(
                    f"{name}: compacted, {compacted.rows_dropped} deleted rows dropped "
                    f"({compacted.shards_rewritten} shards rewritten, "
                    f"{compacted.shards_dropped} dropped, {compacted.seconds:.1f} s)"
                ),
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    listing = report.skipped_listing
    console.print(
        f"{len(report.skipped)} skipped"
        + (f" (listed in {shown(str(listing))})" if listing else ""),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
