"""Distributed indexing: each process embeds a disjoint slice of the work into its own part.

While a distributed run is in progress an index directory holds

    parts/
        part-00000-of-00002/     an index directory of its own: plan.json, manifest.json,
            plan.json            Flat shards, index.lock; done.json once its slice is embedded
            done.json
        part-00001-of-00002/
        merge.json               the merge plan, written before any shard is moved

Plan: every process computes the same work list before anything is written: the
collection's items, in collection order, that the index directory itself (not its parts)
lacks under at least one condition. Part p of n takes the contiguous slice
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
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dior_search.datasets import Item
from dior_search.errors import IndexStoreError, UsageError
from dior_search.index_store import (
    MANIFEST,
    IndexWriter,
    Manifest,
    Shard,
    atomic_file,
    fsync_dir,
    next_shard_number,
    read_shard_index,
    reconstruct_rows,
    sha256_file,
    shard_name,
    verify_file,
    write_faiss,
    write_manifest,
)
from dior_search.index_types import FLAT

log = logging.getLogger(__name__)

PARTS = "parts"
MERGED = ".parts-merged"
PLAN = "plan.json"
DONE = "done.json"
MERGE_PLAN = "merge.json"


@dataclass(frozen=True)
class PartSpec:
    """Part `part` (0-based) of `parts`."""

    part: int
    parts: int

    def __post_init__(self) -> None:
        if self.parts < 1 or not 0 <= self.part < self.parts:
            raise UsageError(
                f"part {self.part} of {self.parts} does not exist: parts are 0..{self.parts - 1}"
            )

    @property
    def name(self) -> str:
        return f"part-{self.part:05d}-of-{self.parts:05d}"

    def bounds(self, total: int) -> tuple[int, int]:
        """The contiguous slice [start, stop) of `total` work items this part embeds."""
        return self.part * total // self.parts, (self.part + 1) * total // self.parts


def launched_part() -> PartSpec | None:
    """This process's part under `accelerate launch` / torchrun (RANK of WORLD_SIZE > 1)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return None
    return PartSpec(int(os.environ.get("RANK", "0")), size)


def process_device(device: str) -> str:
    """`auto` becomes this process's own GPU (LOCAL_RANK) when launched on several."""
    if device != "auto" or launched_part() is None:
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"


@dataclass(frozen=True)
class IndexState:
    """What an index directory holds, read without taking its lock."""

    paths: frozenset[str]
    hashes: frozenset[str]
    next_id: int


def read_state(directory: Path) -> IndexState:
    import pyarrow.parquet as pq

    if not (directory / MANIFEST).is_file():
        return IndexState(frozenset(), frozenset(), 0)
    manifest = Manifest.read(directory)
    paths: set[str] = set()
    hashes: set[str] = set()
    for shard in manifest.shards:
        path = directory / f"{shard.name}.parquet"
        verify_file(path, shard.parquet_sha256)
        table = pq.read_table(path, columns=["path", "content_hash"])
        paths.update(table.column("path").to_pylist())
        hashes.update(table.column("content_hash").to_pylist())
    return IndexState(frozenset(paths), frozenset(hashes), manifest.next_id)


def work_list(items: Sequence[Item], states: Sequence[IndexState]) -> list[Item]:
    """Items, in collection order, that some condition's index does not hold yet."""
    return [item for item in items if any(item.path not in s.paths for s in states)]


def parts_dir(directory: Path) -> Path:
    return directory / PARTS


def part_dir(directory: Path, spec: PartSpec) -> Path:
    return parts_dir(directory) / spec.name


def work_digest(work: Sequence[Item], next_id: int) -> str:
    digest = hashlib.sha256(f"{next_id}\n".encode())
    for item in work:
        digest.update(item.path.encode() + b"\n")
    return digest.hexdigest()


def prepare_part(directory: Path, spec: PartSpec, work: Sequence[Item], next_id: int) -> Path:
    """The part's directory with its plan, checked against a plan stored by an earlier run."""
    root = parts_dir(directory)
    planned = planned_parts(root)
    if planned not in (None, spec.parts):
        raise IndexStoreError(
            f"{root} holds an unfinished run in {planned} parts, not {spec.parts}: re-run it "
            f"with {planned} processes (or --part K --parts {planned}), or delete {root}"
        )
    start, stop = spec.bounds(len(work))
    plan = {
        "part": spec.part,
        "parts": spec.parts,
        "start": start,
        "stop": stop,
        "next_id": next_id,
        "work_sha256": work_digest(work, next_id),
        "work_items": len(work),
        "paths": [item.path for item in work[start:stop]],
    }
    # Every part of a run must slice the same work list, whenever it runs.
    for other in sorted(root.glob(f"part-*/{PLAN}")):
        if json.loads(other.read_text()).get("work_sha256") != plan["work_sha256"]:
            raise IndexStoreError(
                f"{other.parent} was planned for another list of work (the collection or the "
                f"index changed since): delete {root} and run again"
            )
    folder = part_dir(directory, spec)
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
    return [p for p in range(parts) if not is_done(part_dir(directory, PartSpec(p, parts)))]


def merge_parts(
    directory: Path,
    template: Manifest,
    index_type: str | None = None,
    memory_budget: int | None = None,
) -> bool:
    """Merge completed parts into the index and pack it; False if another run merged them."""
    # Two parts that complete at once both get here: the second waits, then finds no parts.
    writer = IndexWriter(directory, copy.deepcopy(template), wait_for_lock=True)
    try:
        writer.set_index_type(index_type, memory_budget)
        retired = directory / MERGED
        if retired.exists():
            shutil.rmtree(retired)
        root = parts_dir(directory)
        if not root.is_dir():
            return False
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
        writer.finish()
        return True
    finally:
        writer.release()


def retire(root: Path, retired: Path) -> None:
    """Take merged parts out of the way in one rename, then delete them."""
    os.replace(root, retired)
    fsync_dir(root.parent)
    shutil.rmtree(retired)


def bring_in(source: Path, directory: Path, entry: dict[str, Any]) -> Shard:
    """A part shard in the index under its new name: linked, or rewritten with new ids."""
    shard = Shard(**entry["shard"])
    target = directory / shard.name
    if not entry["renumber"]:
        for suffix in (".faiss", ".parquet"):
            link(
                source.with_name(f"{source.name}{suffix}"),
                target.with_name(f"{shard.name}{suffix}"),
            )
        return shard
    faiss_path = target.with_name(f"{shard.name}.faiss")
    parquet_path = target.with_name(f"{shard.name}.parquet")
    if not (faiss_path.is_file() and parquet_path.is_file()):
        renumber(source, target, shard.first_id, shard.rows)
    return replace(
        shard, faiss_sha256=sha256_file(faiss_path), parquet_sha256=sha256_file(parquet_path)
    )


def renumber(source: Path, target: Path, first_id: int, rows: int) -> None:
    """Copy a staged shard with the ids first_id, first_id + 1, ... (temp + rename)."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    index = read_shard_index(source.with_name(f"{source.name}.faiss"), mmap=True)
    vectors = reconstruct_rows(faiss.downcast_index(index.index), 0, index.ntotal)
    ids = np.arange(first_id, first_id + rows, dtype=np.int64)
    table = pq.read_table(source.with_name(f"{source.name}.parquet"))
    table = table.set_column(table.schema.get_field_index("id"), "id", pa.array(ids))
    with atomic_file(target.with_name(f"{target.name}.faiss")) as tmp:
        write_faiss(tmp, vectors, ids, FLAT)
    with atomic_file(target.with_name(f"{target.name}.parquet")) as tmp:
        pq.write_table(table, tmp)


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
    folders = [part_dir(directory, PartSpec(p, parts)) for p in range(parts)]
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
