"""The folder store's distributed runs (`FolderParts`, the SharedParts of store.folder): each
process embeds its slice of the work into a part folder of its own, merged in at the end.

While a distributed run is in progress an index directory holds

    parts/
        part-00000-of-00002/     an index directory of its own: plan.json, manifest.json,
            plan.json            Flat shards, index.lock; done.json once its slice is embedded
            done.json
        part-00001-of-00002/
        merge.json               the merge plan, written before any shard is moved

Plan (indexing.parts): every process computes the same work list before anything is
written: the collection's items, in collection order, that the index directory itself (not
its parts) lacks under at least one condition. Part p of n takes the contiguous slice
[p W / n, (p + 1) W / n) of the W items and gives the item at position i the id
next_id + i, so ids are unique and increasing across parts without any coordination.
plan.json records the slice and a digest of the work list: a re-run of a part (the same
launch command again, or `--part p --parts n` in one process) checks that it gets the same
plan and resumes it.

Merge: the process that completes the last part merges, holding the index's lock, so no
collective barrier (and its timeout) is needed between processes that finish hours apart. It
writes merge.json (each part shard's new name and ids in the index: ids are renumbered
next_id, next_id + 1, ... in order, so they equal a single process's ids even where images
were skipped), hard-links the part shards in under their new names (or rewrites the ones
whose ids change), appends them to the manifest in one atomic replace, renames parts/ away
and deletes it, and then trains and packs the index like a single run. Each step can be
re-run after a crash: files already in place are kept, and a manifest that already lists the
merged shards is not appended to again.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from dior_search.errors import IndexStoreError
from dior_search.store.backend import IndexLocation, IndexState, PartPlan, part_name
from dior_search.store.files import atomic_file, fsync_dir, sha256_file
from dior_search.store.folder import directory_of
from dior_search.store.index_types import FLAT
from dior_search.store.manifest import (
    MANIFEST,
    Manifest,
    Shard,
    next_shard_number,
    shard_name,
    write_manifest,
)
from dior_search.store.shards import (
    faiss_path,
    parquet_path,
    read_keys,
    read_table,
    staged_vectors,
    write_faiss,
    write_table,
)
from dior_search.store.writer import IndexWriter

log = logging.getLogger(__name__)

PARTS = "parts"
MERGED = ".parts-merged"
PLAN = "plan.json"
DONE = "done.json"
MERGE_PLAN = "merge.json"


def read_state(directory: Path) -> IndexState:
    """The paths and contents of an index's live rows, its next id and whether it stores
    answers."""
    if not (directory / MANIFEST).is_file():
        return IndexState(frozenset(), frozenset(), 0)
    manifest = Manifest.read(directory)
    paths: set[str] = set()
    hashes: set[str] = set()
    for shard in manifest.shards:
        found = read_keys(directory, shard)
        live = found.live.tolist()
        paths.update(p for p, keep in zip(found.paths, live, strict=True) if keep)
        hashes.update(h for h, keep in zip(found.hashes, live, strict=True) if keep)
    return IndexState(frozenset(paths), frozenset(hashes), manifest.next_id, manifest.answers)


def parts_dir(directory: Path) -> Path:
    return directory / PARTS


def part_dir(directory: Path, part: int, parts: int) -> Path:
    return parts_dir(directory) / part_name(part, parts)


def prepare_part(directory: Path, spec: PartPlan) -> Path:
    """The part's directory with its plan, checked against a plan stored by an earlier run."""
    root = parts_dir(directory)
    planned = planned_parts(root)
    if planned not in (None, spec.parts):
        raise IndexStoreError(
            f"{root} holds an unfinished run in {planned} parts, not {spec.parts}: re-run it "
            f"with {planned} processes (or --part K --parts {planned}), or delete {root}"
        )
    plan = {
        "part": spec.part,
        "parts": spec.parts,
        "start": spec.start,
        "stop": spec.stop,
        "next_id": spec.next_id,
        "work_sha256": spec.digest,
        "work_items": spec.work_items,
        "paths": list(spec.paths),
    }
    # Every part of a run must slice the same work list, whenever it runs.
    for other in sorted(root.glob(f"part-*/{PLAN}")):
        if json.loads(other.read_text()).get("work_sha256") != plan["work_sha256"]:
            raise IndexStoreError(
                f"{other.parent} was planned for another list of work (the collection or the "
                f"index changed since): delete {root} and run again"
            )
    folder = part_dir(directory, spec.part, spec.parts)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PLAN
    if not path.is_file():
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(plan, indent=1))
    return folder


def planned_parts(root: Path) -> int | None:
    """The number of parts of the run planned in `root` (None: none planned)."""
    counts = {
        int(p.name.rsplit("-of-", 1)[1]) for p in root.glob("part-*-of-*") if (p / PLAN).is_file()
    }
    if len(counts) > 1:
        raise IndexStoreError(
            f"{root} mixes runs of {sorted(counts)} parts: delete it and run again"
        )
    return counts.pop() if counts else None


def is_done(folder: Path) -> bool:
    return (folder / DONE).is_file()


def mark_done(folder: Path, rows: int) -> None:
    with atomic_file(folder / DONE) as tmp:
        tmp.write_text(json.dumps({"rows": rows}))


def missing_parts(directory: Path, parts: int) -> list[int]:
    """Parts of an n-part run that have not completed."""
    return [p for p in range(parts) if not is_done(part_dir(directory, p, parts))]


def merge_parts(
    directory: Path,
    template: Manifest,
    index_type: str | None = None,
    memory_budget: int | None = None,
) -> int | None:
    """Merge completed parts into the index and pack it: the rows merged (None if another
    run merged them)."""
    # Two parts that complete at once both get here: the second waits, then finds no parts.
    writer = IndexWriter(directory, copy.deepcopy(template), wait_for_lock=True)
    try:
        writer.set_index_type(index_type, memory_budget)
        retired = directory / MERGED
        if retired.exists():
            shutil.rmtree(retired)
        root = parts_dir(directory)
        if not root.is_dir():
            return None
        entries = merge_plan(directory, writer.manifest)
        listed = {s.name for s in writer.manifest.shards}
        if not all(e["shard"]["name"] in listed for e in entries):
            merged = [bring_in(root / e["source"], directory, e) for e in entries]
            fsync_dir(directory)
            writer.manifest.shards += [s for s in merged if s.name not in listed]
            write_manifest(directory, writer.manifest)
        retire(root, retired)
        log.info("merged %d part shards into %s", len(entries), directory)
        writer.next_id = writer.manifest.next_id
        writer.close()
        return sum(int(e["shard"]["rows"]) for e in entries)
    finally:
        writer.abort()


def retire(root: Path, retired: Path) -> None:
    """Take merged parts out of the way in one rename, then delete them."""
    os.replace(root, retired)
    fsync_dir(root.parent)
    shutil.rmtree(retired)


def bring_in(source: Path, directory: Path, entry: dict[str, Any]) -> Shard:
    """A part shard in the index under its new name: linked, or rewritten with new ids."""
    shard = Shard(**entry["shard"])
    part_folder, part_shard = source.parent, source.name
    if not entry["renumber"]:
        link(faiss_path(part_folder, part_shard), faiss_path(directory, shard))
        link(parquet_path(part_folder, part_shard), parquet_path(directory, shard))
        return shard
    if not (faiss_path(directory, shard).is_file() and parquet_path(directory, shard).is_file()):
        renumber(part_folder, part_shard, directory, shard)
    return replace(
        shard,
        faiss_sha256=sha256_file(faiss_path(directory, shard)),
        parquet_sha256=sha256_file(parquet_path(directory, shard)),
    )


def renumber(part_folder: Path, part_shard: str, directory: Path, shard: Shard) -> None:
    """Copy a staged part shard as `shard`, ids first_id, first_id + 1, ... (temp + rename)."""
    import pyarrow as pa

    _, vectors = staged_vectors(faiss_path(part_folder, part_shard))
    ids = np.arange(shard.first_id, shard.first_id + shard.rows, dtype=np.int64)
    table = read_table(parquet_path(part_folder, part_shard))
    table = table.set_column(table.schema.get_field_index("id"), "id", pa.array(ids))
    with atomic_file(faiss_path(directory, shard)) as tmp:
        write_faiss(tmp, vectors, ids, FLAT)
    with atomic_file(parquet_path(directory, shard)) as tmp:
        write_table(table, tmp)


def merge_plan(directory: Path, manifest: Manifest) -> list[dict[str, Any]]:
    """Each part shard with its name and ids in the index: stored once, re-read after a crash.

    Ids are made contiguous again: a part gives the item at work position i the id
    next_id + i, so a skipped image leaves a gap; the merged index numbers its vectors
    next_id, next_id + 1, ... in order, as a single run would. Shards whose ids change are
    rewritten, the others hard-linked.
    """
    root = parts_dir(directory)
    path = root / MERGE_PLAN
    if path.is_file():
        entries: list[dict[str, Any]] = json.loads(path.read_text())
        return entries
    parts = planned_parts(root)
    if parts is None:
        raise IndexStoreError(f"{root} holds no parts to merge")
    missing = missing_parts(directory, parts)
    if missing:
        raise IndexStoreError(f"cannot merge {root}: parts {missing} of {parts} have not completed")
    folders = [part_dir(directory, p, parts) for p in range(parts)]
    number = next_shard_number(manifest)
    floor = next_id = manifest.next_id
    entries = []
    for folder in folders:
        plan = json.loads((folder / PLAN).read_text())
        if plan["next_id"] != manifest.next_id:
            raise IndexStoreError(
                f"{directory} changed since its parts were planned (next id "
                f"{manifest.next_id}, planned {plan['next_id']}): delete {root} and run again"
            )
        shards = Manifest.read(folder).shards if (folder / MANIFEST).is_file() else []
        for shard in shards:
            if shard.first_id < floor:
                raise IndexStoreError(f"part shard {folder / shard.name} overlaps earlier ids")
            floor = shard.last + 1
            last = next_id + shard.rows - 1
            target = replace(shard, name=shard_name(number), first_id=next_id, last_id=last)
            entries.append(
                {
                    "source": f"{folder.name}/{shard.name}",
                    "shard": asdict(target),
                    "renumber": (shard.first_id, shard.last) != (next_id, last),
                }
            )
            number += 1
            next_id = last + 1
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(entries, indent=1))
    return entries


def link(source: Path, target: Path) -> None:
    """Hard-link a part file into the index (a copy where links are not supported)."""
    if target.exists():
        return
    try:
        os.link(source, target)
    except OSError:
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(source, tmp)
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)


class FolderParts:
    """SharedParts of the folder store: parts are index folders of their own under the
    index's `parts/`, merged into it by the process that completes the run (see module)."""

    single_process = False

    def state(self, location: IndexLocation) -> IndexState:
        return read_state(directory_of(location))

    def unfinished(self, location: IndexLocation) -> str | None:
        parts = parts_dir(directory_of(location))
        if not parts.is_dir():
            return None
        return (
            f"{parts} holds an unfinished distributed run: finish it with the same launch "
            "command (or --part K --parts N for each missing part), or delete that folder"
        )

    def resume(
        self,
        location: IndexLocation,
        manifest: Manifest,
        index_type: str | None,
        memory_budget: int | None,
    ) -> int | None:
        directory = directory_of(location)
        if not (parts_dir(directory) / MERGE_PLAN).is_file():
            return None
        return merge_parts(directory, manifest, index_type, memory_budget) or 0

    def staged_writer(
        self, location: IndexLocation, manifest: Manifest, plan: PartPlan
    ) -> IndexWriter:
        directory = directory_of(location)
        folder = prepare_part(directory, plan)
        template = copy.deepcopy(manifest)
        # A part stores answers exactly where the index it joins does.
        if (directory / MANIFEST).is_file():
            template.answers = Manifest.read(directory).answers or template.answers
        return IndexWriter(folder, template, packs=False)

    def is_done(self, location: IndexLocation, plan: PartPlan) -> bool:
        return is_done(part_dir(directory_of(location), plan.part, plan.parts))

    def mark_done(self, location: IndexLocation, plan: PartPlan, rows: int) -> None:
        mark_done(part_dir(directory_of(location), plan.part, plan.parts), rows)

    def missing(self, location: IndexLocation, plan: PartPlan) -> list[int]:
        return missing_parts(directory_of(location), plan.parts)

    def publish(
        self,
        location: IndexLocation,
        plan: PartPlan,
        manifest: Manifest,
        index_type: str | None,
        memory_budget: int | None,
    ) -> int | None:
        return merge_parts(directory_of(location), manifest, index_type, memory_budget)
