"""Sync: make each condition's index hold exactly the collection's current files.

A run compares the collection (its items and each file's content hash, the sha256 of its
bytes) with the live rows of every condition's index. Per condition, a file is

- unchanged: its (path, content hash) has a live row: nothing to do;
- changed: its path has a live row of other content: that row is deleted and the new
  content added;
- moved: a new path whose content was at a path that is gone: a row that copies the stored
  vector (no embedding);
- added: any other new (path, content): a copy when the index stores a vector of that content
  (two paths with one content are both found), else a new embedding;
- skipped: it cannot be read or embedded. A file that cannot be read at all keeps its rows
  (its content is unknown), as do the files under a folder that cannot be listed; one whose
  content changed loses them.

Rows whose file is gone are removed, unless `keep_missing` (an unmounted drive must not empty
an index); so are repeated rows of one (path, content). Removing more than half of an index
needs the caller's confirmation (`--yes`): a run that is refused changes nothing.

Steps, each crash-safe (see store.writer):
1. scan: hash the files whose paths the indexes hold (to see which changed), and, when the
   removals might need confirming, the new files too (so that moves are not counted as
   removals);
2. one commit per condition: the tombstones of every row to remove or replace, with the
   copies of the files scanned that need no embedding;
3. the remaining files are loaded, embedded and added as they come (job.embed_items);
4. each writer's close(): the last shard, packing, compaction.
A killed run leaves the state of its last commit; the next run compares again and finishes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from dior_search import defaults
from dior_search.data.collections import Collection, Item
from dior_search.data.reading import FileHash, hash_files
from dior_search.errors import RemovalRefused, UsageError
from dior_search.indexing.job import (
    ConditionRun,
    IndexJob,
    IndexReport,
    IndexSettings,
    IndexTarget,
    Progress,
    embed_items,
)
from dior_search.store.schema import Row


@dataclass(frozen=True)
class Removal:
    """An index a run would shrink by much: rows whose files are gone, of its live rows."""

    condition: str
    removed: int
    indexed: int


# Asked before a run removes more than half of an index; False refuses the run.
ConfirmRemoval = Callable[[Sequence[Removal]], bool]


@dataclass
class Scan:
    """The collection's files (one item per path) and the hashes read before any change."""

    items: list[Item]
    hashes: dict[str, FileHash]
    # Files and folders the collection could not list (see Collection.unreadable).
    unreadable: tuple[str, ...] = ()

    @property
    def present(self) -> set[str]:
        return {item.path for item in self.items}

    def known(self, path: str) -> str | None:
        """The content hash read for a path (None: not read, or unreadable)."""
        found = self.hashes.get(path)
        return None if found is None else found.content_hash

    def unlisted(self, path: str) -> bool:
        """Whether a path is, or is under, a file or folder that could not be read: its file
        may be there, so its rows stay."""
        return any(path == u or path.startswith(f"{u}/") for u in self.unreadable)

    def counted(self) -> frozenset[str]:
        return frozenset(path for path, found in self.hashes.items() if found.content_hash)


@dataclass
class Stale:
    """One condition's rows to delete: those whose file is gone, and the others (changed or
    repeated)."""

    gone: list[int]
    replaced: list[int]


def sync_targets(
    job: IndexJob,
    targets: Sequence[IndexTarget],
    report: IndexReport,
    on_start: Progress | None = None,
    on_progress: Progress | None = None,
    confirm: ConfirmRemoval | None = None,
) -> None:
    """Sync the indexes of `targets` (some of `job`'s) with the collection, in one process."""
    settings = job.settings
    store = job.store
    job = replace(job, targets=list(targets))
    runs: list[ConditionRun] = []
    try:
        for target in targets:
            writer = store.writer(target.location, target.manifest)
            runs.append(ConditionRun(target.condition, writer))
            writer.set_index_type(settings.index_type, settings.memory_bytes)
            report.indexes[target.condition] = target.location
            kept = writer.manifest.shard_size
            if settings.shard_size not in (None, kept):
                report.notes.append(
                    f"{target.condition}: the index keeps its shard size of {kept} "
                    f"vectors (--shard-size {settings.shard_size} applies to new indexes)"
                )
        upgraded = [
            settings.add_answers and add_answers(run, target)
            for run, target in zip(runs, targets, strict=True)
        ]
        scanned = scan(job.collection, runs, settings)
        stale = [stale_rows(run, scanned, settings.keep_missing) for run in runs]
        for run, rows, everything in zip(runs, stale, upgraded, strict=True):
            if everything:  # every row is embedded again, to read its answer
                rows.replaced = sorted(set(run.writer.live_rows()) - set(rows.gone))
        check_removals(runs, stale, scanned, confirm)
        for run, rows in zip(runs, stale, strict=True):
            commit_changes(run, rows, scanned)
        work = [
            item
            for item in scanned.items
            if needs_loading(item.path, scanned.hashes.get(item.path), runs)
        ]
        if on_start is not None and work:
            on_start(len(work))
        embed_items(job, runs, work, report, on_progress, counted=scanned.counted())
        for run in runs:
            report.compacted[run.condition] = run.writer.close(settings.compact_threshold)
            report.counts[run.condition] = run.finish()
            report.notes += [f"{run.condition}: {note}" for note in run.writer.notes]
    finally:
        for run in runs:
            run.writer.abort()


def add_answers(run: ConditionRun, target: IndexTarget) -> bool:
    """Make an index without answers store them (`index --answers`); whether its rows must
    be embedded again for it. UsageError where the embedder reads none for this index."""
    if run.writer.stores_answers:
        return False
    if target.manifest.answers != "stored":
        reason = (
            "its vectors are not the last layer's, which the output head reads"
            if target.manifest.answers == "not-last-layer"
            else "this embedder gives no answers"
        )
        raise UsageError(
            f"--answers: the index of {target.condition!r} cannot have answers: {reason}"
        )
    run.writer.store_answers()
    return True


def scan(collection: Collection, runs: Sequence[ConditionRun], settings: IndexSettings) -> Scan:
    """Hash the files the indexes hold a row of; the new ones too if removals may need
    confirming (a moved file is not a removal)."""
    unique: dict[str, Item] = {}
    for item in collection.items:  # a label table may list a file twice: its first row counts
        unique.setdefault(item.path, item)
    items = list(unique.values())
    indexed = set().union(*(run.paths_before for run in runs))
    root, threads = collection.root, settings.loader_threads
    hashes = hash_files(root, [i.path for i in items if i.path in indexed], threads)
    scanned = Scan(items, hashes, tuple(path for path, _ in collection.unreadable))
    if not settings.keep_missing and any(
        confirmation_needed(run, len(stale_rows(run, scanned, False).gone)) for run in runs
    ):
        new = [i.path for i in items if i.path not in indexed]
        scanned.hashes.update(hash_files(root, new, threads))
    return scanned


def stale_rows(run: ConditionRun, scanned: Scan, keep_missing: bool) -> Stale:
    """The rows of a condition's index that no longer match the collection."""
    present = scanned.present
    stale = Stale([], [])
    seen: set[tuple[str, str]] = set()
    for row_id, (path, content_hash) in sorted(run.writer.live_rows().items()):
        found = scanned.hashes.get(path)
        if path not in present or (found is not None and found.missing):
            if not keep_missing and not scanned.unlisted(path):
                stale.gone.append(row_id)
        elif (path, content_hash) in seen or changed(found, content_hash):
            stale.replaced.append(row_id)
        seen.add((path, content_hash))
    return stale


def changed(found: FileHash | None, content_hash: str) -> bool:
    """Whether a file was read with other content than a row's."""
    return found is not None and found.content_hash not in (None, content_hash)


def confirmation_needed(run: ConditionRun, removed: int) -> bool:
    return removed > defaults.CONFIRM_REMOVAL_SHARE * len(run.writer.live_rows())


def check_removals(
    runs: Sequence[ConditionRun],
    stale: Sequence[Stale],
    scanned: Scan,
    confirm: ConfirmRemoval | None,
) -> None:
    """Ask `confirm` before removing more than half of any index; RemovalRefused if not."""
    removals = []
    for run, rows in zip(runs, stale, strict=True):
        live = run.writer.live_rows()
        removed = len(rows.gone) - moves(run, [live[i][1] for i in rows.gone], scanned)
        if confirmation_needed(run, removed):
            removals.append(Removal(run.condition, removed, len(live)))
    if removals and (confirm is None or not confirm(removals)):
        worst = max(removals, key=lambda r: r.removed / r.indexed)
        raise RemovalRefused(
            f"this run would remove {worst.removed} of the {worst.indexed} images indexed "
            f"under {worst.condition!r} (their files are gone); nothing was changed: re-run "
            "with --yes to remove them, or --keep-missing to keep them"
        )


def moves(run: ConditionRun, gone_hashes: list[str], scanned: Scan) -> int:
    """How many removed rows' content turns up at a new path (scanned): moves, not removals."""
    arrived = Counter(
        scanned.known(item.path) for item in scanned.items if item.path not in run.paths_before
    )
    return sum(min(count, arrived[h]) for h, count in Counter(gone_hashes).items())


def commit_changes(run: ConditionRun, stale: Stale, scanned: Scan) -> None:
    """One commit: the stale rows deleted, and a copied vector for every scanned file whose
    content the index stores (a moved or copied file) but not at its path."""
    for item in scanned.items:
        content_hash = scanned.known(item.path)
        if content_hash is not None and not run.needs(item.path, content_hash):
            run.counts.unchanged += 1
    run.delete(stale.gone, vanished=True)
    run.delete(stale.replaced, vanished=False)
    for item in scanned.items:
        content_hash = scanned.known(item.path)
        if (
            content_hash is not None
            and run.needs(item.path, content_hash)
            and run.writer.can_copy(content_hash)
        ):
            run.add(Row(item.path, content_hash, item.labels), None)
    run.writer.commit()


def needs_loading(path: str, found: FileHash | None, runs: Sequence[ConditionRun]) -> bool:
    """Whether a file must be read again: not scanned, unreadable (to be reported), or
    lacking a row it needs embedded."""
    if found is None or found.content_hash is None:
        return found is None or not found.missing
    return any(run.needs(path, found.content_hash) for run in runs)
