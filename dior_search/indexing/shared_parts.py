"""Distributed indexing into a database: each process writes its slice of the new images
straight into the index; no merge step.

Every process computes the same work list from the indexes as committed before the run (the
collection's items, in order, whose path some condition's index lacks: parts.work_list) and
takes its contiguous slice; the item at position i gets the id next_id + i, so ids are those
a single process gives. A part's rows are staged: written above the manifest's next_row_id,
where readers do not see them, so nothing a part writes changes what another plans. A part
that completes marks it in the index (with its plan's digest); the process that finds every
part complete publishes them all in one commit, then syncs the index with the collection
(changed files, moves, removals) as a single run does. A re-run resumes: an interrupted part
skips the rows it already wrote (by path and content hash), a complete one writes nothing.

Milvus Lite opens a database in one process at a time: its parts run one after another
(`--part K --parts N`); `accelerate launch` needs a Milvus server.
"""

from __future__ import annotations

from dior_search.errors import UsageError
from dior_search.indexing.job import (
    ConditionRun,
    IndexJob,
    IndexReport,
    PartSpec,
    Progress,
)
from dior_search.indexing.parts import (
    IndexState,
    embed_slice,
    sync_merged,
    sync_without_work,
    work_digest,
    work_list,
)
from dior_search.indexing.sync import ConfirmRemoval
from dior_search.store.backend import IndexLocation, IndexStore, SharedParts


def committed_state(store: IndexStore, location: IndexLocation) -> IndexState:
    """The paths and contents of an index's published rows, and its next id."""
    if store.manifest_at(location) is None:
        return IndexState(frozenset(), frozenset(), 0)
    reader = store.reader(location)
    return IndexState(
        frozenset(reader.paths()), frozenset(reader.content_hashes()), reader.manifest.next_id
    )


def index_shared(
    job: IndexJob,
    part: PartSpec,
    shared: SharedParts,
    launched: bool,
    on_start: Progress | None = None,
    on_progress: Progress | None = None,
    confirm: ConfirmRemoval | None = None,
) -> IndexReport:
    """Write this process's slice of the new images into the indexes (staged); publish every
    part and sync if this process completes the run. `launched`: the part comes from
    `accelerate launch` (processes at once), not from --part."""
    store = job.settings.index_store()
    if launched and shared.single_process:
        raise UsageError(
            f"{store.name} is a Milvus Lite database, which one process opens at a time: a "
            "distributed run needs a Milvus server (--store milvus://HOST:PORT), or run the "
            "parts one after another with --part K --parts N"
        )
    report = IndexReport(part=part)
    report.directories = {t.condition: t.location for t in job.targets}
    states = [committed_state(store, t.location) for t in job.targets]
    items = job.collection.items
    work = work_list(items, states)
    if not work:
        return sync_without_work(job, part, report, on_start, on_progress, confirm)
    job.check_index_types(len(work))
    start, stop = part.bounds(len(work))
    plans = [work_digest(work, state.next_id) for state in states]
    done = all(
        not shared.missing(t.location, [part.name], plan)
        for t, plan in zip(job.targets, plans, strict=True)
    )
    runs: list[ConditionRun] = []
    try:
        for target, state in zip(job.targets, states, strict=True):
            writer = shared.staged_writer(target.location, target.manifest)
            runs.append(ConditionRun(target.condition, writer, skip=state.hashes))
        if on_start is not None:
            on_start(0 if done else stop - start)
        if not done:
            embed_slice(job, runs, work, (start, stop), states, report, on_progress)
            for target, state, plan, run in zip(job.targets, states, plans, runs, strict=True):
                run.writer.write_shard()
                low, high = state.next_id + start, state.next_id + stop
                rows = sum(1 for i in run.writer.live_rows() if low <= i < high)
                shared.mark_done(target.location, part.name, plan, rows)
    finally:
        for run in runs:
            run.writer.abort()
    report.counts = {run.condition: run.counts for run in runs}
    names = [PartSpec(p, part.parts).name for p in range(part.parts)]
    published = []
    for target, state, plan in zip(job.targets, states, plans, strict=True):
        missing = shared.missing(target.location, names, plan)
        if missing:
            report.waiting[target.condition] = [names.index(m) for m in missing]
            continue
        count = shared.publish(target.location, plan, state.next_id + len(work))
        if count is not None:
            published.append((target, count))
    sync_merged(job, published, report, confirm)
    return report
