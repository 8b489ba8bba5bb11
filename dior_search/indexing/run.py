"""`index_collection`: make each condition's index hold exactly a collection's current images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from dior_search.data.collections import Collection
from dior_search.data.paths import shown
from dior_search.errors import IndexStoreError, InputError
from dior_search.indexing.job import IndexJob, IndexReport, IndexSettings, Progress, plan_job
from dior_search.indexing.parts import index_part, launched_part, parts_dir
from dior_search.indexing.shared_parts import index_shared
from dior_search.indexing.sync import ConfirmRemoval, sync_targets
from dior_search.models.embedder import Embedder
from dior_search.store.backend import IndexLocation, IndexStore
from dior_search.store.files import atomic_file, io_errors
from dior_search.store.folder import directory_of
from dior_search.store.layout import skipped_listing


def index_collection(
    collection: Collection,
    conditions: Sequence[str],
    embedder: Embedder,
    settings: IndexSettings,
    on_start: Progress | None = None,
    on_progress: Progress | None = None,
    job: IndexJob | None = None,
    confirm_removal: ConfirmRemoval | None = None,
) -> IndexReport:
    """Sync every condition's index with the collection; resumable and incremental.

    New and changed images are embedded, moved and copied ones keep their stored vector,
    rows of vanished files are removed (not with `settings.keep_missing`; removing more than
    half of an index needs `confirm_removal` to say yes, else RemovalRefused), and shards
    with many deleted rows are compacted (see indexing.sync). Images that cannot be read or
    embedded are skipped and listed in the report and in `skipped.tsv` beside the indexes.
    Under `accelerate launch` (or with `settings.part`) this process embeds only its part of
    the new images; see indexing.parts. `job`: one planned
    beforehand (several layers of one forward pass, see indexing.layers).
    """
    job = job or plan_job(collection, conditions, embedder, settings)
    check_not_empty(job)
    part = settings.part or launched_part()
    shared = settings.index_store().shared_parts()
    if part is not None and part.parts > 1 and shared is not None:
        report = index_shared(
            job, part, shared, settings.part is None, on_start, on_progress, confirm_removal
        )
    elif part is not None and part.parts > 1:
        report = index_part(job, part, on_start, on_progress, confirm_removal)
    else:
        report = IndexReport()
        for target in job.targets if shared is None else ():
            parts = parts_dir(directory_of(target.location))
            if parts.is_dir():
                raise IndexStoreError(
                    f"{parts} holds an unfinished distributed run: "
                    "finish it with the same launch command (or --part K --parts N for each "
                    "missing part), or delete that folder"
                )
        job.check_index_types(len(collection.items))
        sync_targets(job, job.targets, report, on_start, on_progress, confirm_removal)
    # Files that could not even be listed come first, whichever way the run went.
    report.skipped[:0] = collection.unreadable
    report.skipped_listing = write_skipped(
        skipped_listing(settings.indexes_dir, collection.name, job.description), report
    )
    return report


def refuse_new_empty(collection: Collection, open_store: Callable[[], IndexStore]) -> None:
    """Before a model is loaded: InputError for a collection without images (or files it
    could not read) that the store holds no index of (`open_store`: the store as it is,
    never created). One that has indexes syncs them to empty."""
    if collection.items or collection.unreadable:
        return
    try:
        store = open_store()
    except IndexStoreError:  # no indexes folder or database: nothing indexed
        raise InputError(f"no images in {collection.root}") from None
    try:
        damaged: dict[IndexLocation, IndexStoreError] = {}
        if not store.find(collection.name, damaged=damaged) and not damaged:
            raise InputError(f"no images in {collection.root}")
    finally:
        store.close()


def check_not_empty(job: IndexJob) -> None:
    """A collection without images (or files it could not read) can only empty indexes it
    already has: with none, InputError, before anything is written."""
    collection = job.collection
    if collection.items or collection.unreadable:
        return
    store = job.settings.index_store()
    if all(store.manifest_at(target.location) is None for target in job.targets):
        raise InputError(f"no images in {collection.root}")


def write_skipped(listing: Path, report: IndexReport) -> Path | None:
    """List the run's skipped images (path, reason) in `listing`, or remove an old listing
    when the run skipped none; None if none was skipped.

    Tabs, newlines and other invisible characters in a name are backslash-escaped
    (`data.paths.shown`), so each line is one image and its two fields.
    """
    with io_errors(f"cannot write {listing}"):
        if not report.skipped:
            listing.unlink(missing_ok=True)  # a fixed image must not stay listed
            return None
        lines = [f"{shown(path)}\t{shown(reason)}\n" for path, reason in report.skipped]
        listing.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(listing) as tmp:
            tmp.write_text("path\treason\n" + "".join(lines), encoding="utf-8")
    return listing
