"""`index_collection`: make each condition's index hold exactly a collection's current images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from dior_search.data.collections import Collection
from dior_search.data.paths import shown
from dior_search.errors import IndexStoreError, InputError
from dior_search.files import atomic_file, io_errors
from dior_search.indexing.job import IndexJob, IndexReport, IndexSettings, Progress, plan_job
from dior_search.indexing.parts import ONE_PART, index_parts, launched_part
from dior_search.indexing.sync import ConfirmRemoval
from dior_search.models.embedder import Embedder
from dior_search.store.backend import IndexLocation, IndexStore
from dior_search.store.stores import open_store


def index_collection(
    collection: Collection,
    conditions: Sequence[str],
    embedder: Embedder,
    settings: IndexSettings,
    on_start: Progress | None = None,
    on_progress: Progress | None = None,
    job: IndexJob | None = None,
    confirm_removal: ConfirmRemoval | None = None,
    store: IndexStore | None = None,
) -> IndexReport:
    """Sync every condition's index in `store` with the collection; resumable and
    incremental. `store`: where the indexes are (None: the folder store under
    `settings.indexes_dir`).

    1. plan: each condition's index and the manifest it starts with (plan_job);
    2. scan, embed and commit this process's part (indexing.parts: a run in one process is
       its one part; under `accelerate launch` or with `settings.part`, a slice of the new
       images, published with the other parts by the process that completes the run):
       new and changed images are embedded, moved and copied ones keep their stored vector,
       rows of vanished files are removed (not with `settings.keep_missing`; removing more
       than half of an index needs `confirm_removal` to say yes, else RemovalRefused);
    3. compact: shards with many deleted rows are rewritten (see indexing.sync);
    4. list the images that could not be read or embedded, in the report and in
       `skipped.tsv` beside the indexes.
    `job`: one planned beforehand (several layers of one forward pass, see indexing.layers).
    """
    store = job.store if job is not None else store or open_store(None, settings.indexes_dir)
    job = job or plan_job(collection, conditions, embedder, settings, store)
    check_not_empty(job)
    part = settings.part or launched_part() or ONE_PART
    launched = settings.part is None and part.parts > 1
    report = index_parts(job, part, launched, on_start, on_progress, confirm_removal)
    # Files that could not even be listed come first, whichever way the run went.
    report.skipped[:0] = collection.unreadable
    listing = store.skipped_listing(collection.name, job.description)
    report.skipped_listing = write_skipped(listing, report)
    return report


def refuse_new_empty(collection: Collection, open_existing: Callable[[], IndexStore]) -> None:
    """Before a model is loaded: InputError for a collection without images (or files it
    could not read) that the store holds no index of (`open_existing`: the store as it is,
    never created). One that has indexes syncs them to empty."""
    if collection.items or collection.unreadable:
        return
    try:
        store = open_existing()
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
    if all(job.store.manifest_at(target.location) is None for target in job.targets):
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
