"""A run split over processes: each embeds a disjoint slice of the new images as its part,
and the process that completes the last part publishes every part, then syncs.

Plan: every process computes the same work list before anything is written: the
collection's items, in collection order, whose path some condition's index (as committed)
lacks. Part p of n takes the contiguous slice [p W / n, (p + 1) W / n) of the W items and
gives the item at position i the id next_id + i, so ids are unique and increasing across
parts without any coordination, and those a single process gives. A part's rows are staged
where no reader sees them (the store's SharedParts: a part folder merged in by the folder
store, store.parts; rows above the manifest's next_row_id in a Milvus collection,
store.milvus.parts); a part that completes marks it done, and the process that finds every
part done publishes them all in one commit (no collective barrier, so processes may finish
hours apart), then syncs the index with the collection (changed files, moves, removals) as
a single run does. A re-run resumes: an interrupted part skips the rows it already wrote, a
complete one writes nothing, an interrupted publishing is finished first.

A run in one process is the run of one part: nothing to stage, it syncs at once
(indexing.sync), refused while the index holds an unfinished distributed run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

from dior_search.data.collections import Item
from dior_search.data.paths import name_bytes
from dior_search.errors import IndexStoreError, UsageError
from dior_search.indexing.job import (
    ConditionRun,
    IndexJob,
    IndexReport,
    IndexTarget,
    PartSpec,
    Progress,
    SyncCounts,
    embed_items,
)
from dior_search.indexing.sync import ConfirmRemoval, sync_targets
from dior_search.store.backend import IndexState, PartPlan

# The part a process runs when the run is not split.
ONE_PART = PartSpec(0, 1)


def launched_part() -> PartSpec | None:
    """This process's part under `accelerate launch` / torchrun (RANK of WORLD_SIZE > 1)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return None
    return PartSpec(int(os.environ.get("RANK", "0")), size)


def requested_part(part: int | None, parts: int | None) -> PartSpec | None:
    """The part `--part K --parts N` asks this process to run alone (None: not asked)."""
    if (part is None) != (parts is None):
        raise UsageError("give --part and --parts together")
    if part is None or parts is None:
        return None
    if launched_part() is not None:
        raise UsageError("--part/--parts run one part in one process; not under accelerate launch")
    return PartSpec(part, parts)


def process_device(device: str) -> str:
    """`auto` becomes this process's own GPU (LOCAL_RANK) when launched on several."""
    if device != "auto" or launched_part() is None:
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"


def work_list(items: Sequence[Item], states: Sequence[IndexState]) -> list[Item]:
    """Items, in collection order, whose path some condition's index does not hold yet (the
    merge's sync handles changed files, moves and removals)."""
    return [item for item in items if any(item.path not in s.paths for s in states)]


def work_digest(work: Sequence[Item], next_id: int) -> str:
    digest = hashlib.sha256(f"{next_id}\n".encode())
    for item in work:
        digest.update(name_bytes(item.path) + b"\n")
    return digest.hexdigest()


def part_plan(part: PartSpec, work: Sequence[Item], next_id: int) -> PartPlan:
    """This process's slice of the work list on an index whose next id is `next_id`."""
    start, stop = part.bounds(len(work))
    paths = tuple(item.path for item in work[start:stop])
    digest = work_digest(work, next_id)
    return PartPlan(part.part, part.parts, start, stop, next_id, digest, len(work), paths)


def index_parts(
    job: IndexJob,
    part: PartSpec = ONE_PART,
    launched: bool = False,
    on_start: Progress | None = None,
    on_progress: Progress | None = None,
    confirm: ConfirmRemoval | None = None,
) -> IndexReport:
    """Run this process's part of the job: embed its slice of the new images (staged); if it
    completes the run, publish every part and sync the indexes with the collection.
    `launched`: the part comes from `accelerate launch` (processes at once), not --part."""
    if part.parts == 1:
        return sync_one_part(job, on_start, on_progress, confirm)
    shared = job.store.shared_parts()
    if launched and shared.single_process:
        raise UsageError(
            f"{job.store.name} is a Milvus Lite database, which one process opens at a time: "
            "a distributed run needs a Milvus server (--store milvus://HOST:PORT), or run the "
            "parts one after another with --part K --parts N"
        )
    report = IndexReport(part=part, indexes={t.condition: t.location for t in job.targets})
    # Indexes whose parts this process published, with the rows published.
    published = resume_publishing(job)
    # The plan comes from the indexes as committed before any part writes: every process
    # computes the same work list.
    states = [shared.state(t.location) for t in job.targets]
    work = work_list(job.collection.items, states)
    if not work and not published:
        return sync_without_work(job, part, report, on_start, on_progress, confirm)
    if work:
        job.check_index_types(len(work))
        plans = [part_plan(part, work, state.next_id) for state in states]
        embed_part(job, plans, work, states, report, on_start, on_progress)
        published.update(publish_parts(job, plans, report))
    sync_merged(job, list(published.values()), report, confirm)
    return report


def sync_one_part(
    job: IndexJob,
    on_start: Progress | None,
    on_progress: Progress | None,
    confirm: ConfirmRemoval | None,
) -> IndexReport:
    """The run's one part: nothing to stage, the sync embeds the new images itself; refused
    while an index holds an unfinished distributed run."""
    shared = job.store.shared_parts()
    for target in job.targets:
        unfinished = shared.unfinished(target.location)
        if unfinished is not None:
            raise IndexStoreError(unfinished)
    job.check_index_types(len(job.collection.items))
    report = IndexReport()
    sync_targets(job, job.targets, report, on_start, on_progress, confirm)
    return report


def resume_publishing(job: IndexJob) -> dict[str, tuple[IndexTarget, int]]:
    """Finish the publishing a crash interrupted: the indexes published, with their rows."""
    shared, settings = job.store.shared_parts(), job.settings
    published = {}
    for target in job.targets:
        rows = shared.resume(
            target.location, target.manifest, settings.index_type, settings.memory_bytes
        )
        if rows is not None:
            published[target.condition] = (target, rows)
    return published


def publish_parts(
    job: IndexJob, plans: Sequence[PartPlan], report: IndexReport
) -> dict[str, tuple[IndexTarget, int]]:
    """Publish the parts of every index whose parts are all done (the others wait, in the
    report): the indexes this process published, with their rows."""
    shared, settings = job.store.shared_parts(), job.settings
    published = {}
    for target, plan in zip(job.targets, plans, strict=True):
        missing = shared.missing(target.location, plan)
        if missing:
            report.waiting[target.condition] = missing
            continue
        rows = shared.publish(
            target.location, plan, target.manifest, settings.index_type, settings.memory_bytes
        )
        if rows is not None:
            published[target.condition] = (target, rows)
    return published


def embed_part(
    job: IndexJob,
    plans: Sequence[PartPlan],
    work: Sequence[Item],
    states: Sequence[IndexState],
    report: IndexReport,
    on_start: Progress | None,
    on_progress: Progress | None,
) -> None:
    """Embed this process's slice into each index's staged writer and mark the part done
    (nothing where an earlier run completed it)."""
    shared = job.store.shared_parts()
    runs: list[ConditionRun] = []
    try:
        for target, state, plan in zip(job.targets, states, plans, strict=True):
            writer = shared.staged_writer(target.location, target.manifest, plan)
            runs.append(ConditionRun(target.condition, writer, skip=state.hashes))
        done = all(shared.is_done(t.location, p) for t, p in zip(job.targets, plans, strict=True))
        start, stop = plans[0].start, plans[0].stop
        if on_start is not None:
            on_start(0 if done else stop - start)
        if not done:
            embed_slice(job, runs, work, (start, stop), states, report, on_progress)
            for target, state, plan, run in zip(job.targets, states, plans, runs, strict=True):
                run.writer.commit()
                low, high = state.next_id + start, state.next_id + stop
                rows = sum(1 for i in run.writer.live_rows() if low <= i < high)
                shared.mark_done(target.location, plan, rows)
    finally:
        for run in runs:
            run.writer.abort()
    report.counts = {run.condition: run.counts for run in runs}


def sync_without_work(
    job: IndexJob,
    part: PartSpec,
    report: IndexReport,
    on_start: Progress | None,
    on_progress: Progress | None,
    confirm: ConfirmRemoval | None,
) -> IndexReport:
    """No new path to embed, so nothing to merge: the first process alone syncs (changed
    files, moves, removals); the others have nothing to do."""
    if part.part == 0:
        sync_targets(job, job.targets, report, on_start, on_progress, confirm)
    else:
        unchanged = len(job.collection.items)
        report.counts = {c: SyncCounts(unchanged=unchanged) for c in job.conditions}
    return report


def embed_slice(
    job: IndexJob,
    runs: Sequence[ConditionRun],
    work: Sequence[Item],
    bounds: tuple[int, int],
    states: Sequence[IndexState],
    report: IndexReport,
    on_progress: Progress | None,
) -> None:
    """Embed this part's slice of the work list, the item at position i with id
    next_id + i of each condition's index (the ids a single run gives)."""
    start, stop = bounds
    positions = {item.path: start + offset for offset, item in enumerate(work[start:stop])}
    row_ids = [
        {path: state.next_id + position for path, position in positions.items()} for state in states
    ]
    embed_items(job, runs, work[start:stop], report, on_progress, row_ids)


def sync_merged(
    job: IndexJob,
    merged: Sequence[tuple[IndexTarget, int]],
    report: IndexReport,
    confirm: ConfirmRemoval | None,
) -> None:
    """After the parts of these indexes were merged (or published): sync them with the
    collection, counting the rows the parts added as added, not unchanged."""
    if not merged:
        return
    # The parts added the new files; the sync then finds them unchanged.
    sync_targets(job, [target for target, _ in merged], report, confirm=confirm)
    for target, rows in merged:
        report.counts[target.condition].added += rows
        report.counts[target.condition].unchanged -= rows
    report.merged = [target.condition for target, _ in merged]
