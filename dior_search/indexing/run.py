"""`index_collection`: embed every image of a collection not indexed yet, under each condition."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dior_search.data.collections import Collection
from dior_search.data.paths import shown
from dior_search.errors import IndexStoreError
from dior_search.indexing.job import (
    IndexReport,
    IndexSettings,
    Progress,
    embed_items,
    plan_job,
)
from dior_search.indexing.parts import index_part, launched_part, parts_dir
from dior_search.models.embedder import Embedder
from dior_search.store.files import atomic_file, io_errors
from dior_search.store.layout import skipped_listing
from dior_search.store.writer import IndexWriter


def index_collection(
    collection: Collection,
    conditions: Sequence[str],
    embedder: Embedder,
    settings: IndexSettings,
    on_start: Progress | None = None,
    on_progress: Progress | None = None,
) -> IndexReport:
    """Embed every not-yet-indexed image under each condition; resumable and incremental.

    Images that cannot be read or embedded are skipped and listed in the report and in
    `skipped.tsv` beside the indexes. Under `accelerate launch` (or with `settings.part`)
    this process embeds only its part of the work; see indexing.parts.
    """
    job = plan_job(collection, conditions, embedder, settings)
    part = settings.part or launched_part()
    if part is not None and part.parts > 1:
        report = index_part(job, part, on_start, on_progress)
        report.skipped[:0] = collection.unreadable
    else:
        report = IndexReport(skipped=list(collection.unreadable))
        for target in job.targets:
            if parts_dir(target.directory).is_dir():
                raise IndexStoreError(
                    f"{parts_dir(target.directory)} holds an unfinished distributed run: "
                    "finish it with the same launch command (or --part K --parts N for each "
                    "missing part), or delete that folder"
                )
        job.check_index_types(len(collection.items))
        writers: list[IndexWriter] = []
        try:
            for target in job.targets:
                writer = IndexWriter(target.directory, target.manifest)
                writers.append(writer)
                writer.set_index_type(settings.index_type, settings.memory_budget)
                report.directories[target.condition] = target.directory
                report.added[target.condition] = 0
                kept = writer.manifest.shard_size
                if settings.shard_size not in (None, kept):
                    report.notes.append(
                        f"{target.condition}: the index keeps its shard size of {kept} "
                        f"vectors (--shard-size {settings.shard_size} applies to new indexes)"
                    )
            if on_start is not None:
                on_start(len(collection.items))
            embed_items(job, writers, collection.items, report, on_progress)
            for target, writer in zip(job.targets, writers, strict=True):
                writer.close()
                report.notes += [f"{target.condition}: {note}" for note in writer.notes]
        finally:
            for writer in writers:
                writer.abort()
    report.skipped_listing = write_skipped(
        skipped_listing(settings.indexes_dir, collection.name, job.description), report
    )
    return report


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
