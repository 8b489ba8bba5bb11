"""The `index` stage: embed a collection under conditions into sharded index directories."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dior_search.datasets import Collection, Item, slug
from dior_search.embedder import REFERENCE_MAX_SIDE, Embedder, first_line
from dior_search.errors import IndexStoreError
from dior_search.images import ImageReadError, decode_image
from dior_search.index_parts import PartSpec
from dior_search.index_store import (
    DEFAULT_SHARD_SIZE,
    MANIFEST,
    IndexWriter,
    Manifest,
    Row,
)
from dior_search.index_types import AUTO, DEFAULT_MEMORY_BUDGET, FLAT, canonical_spec
from dior_search.prompts import build_prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexSettings:
    indexes_dir: Path = Path("indexes")
    shard_size: int = DEFAULT_SHARD_SIZE
    # auto, Flat or a FAISS factory string; None: the index's own type (auto for a new one).
    index_type: str | None = None
    # Bytes `auto` may use (None: the index's own budget, 8 GiB for a new one).
    memory_budget: int | None = None
    images_per_step: int = 32
    loader_threads: int = 4
    # This process's slice of a distributed run (None: from RANK / WORLD_SIZE, if launched).
    part: PartSpec | None = None


@dataclass
class IndexReport:
    added: dict[str, int] = field(default_factory=dict)
    already_indexed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    directories: dict[str, Path] = field(default_factory=dict)
    part: PartSpec | None = None
    # Conditions whose parts this process merged, and those still waiting for parts.
    merged: list[str] = field(default_factory=list)
    waiting: dict[str, list[int]] = field(default_factory=dict)


SKIPPED_FILE = "skipped.tsv"


def write_skipped(report: IndexReport) -> Path | None:
    """List the run's skipped images (path, reason) in `skipped.tsv` beside its indexes."""
    if not report.skipped or not report.directories:
        return None
    listing = next(iter(report.directories.values())).parent / SKIPPED_FILE
    lines = [f"{path}\t{reason}\n" for path, reason in report.skipped]
    listing.write_text("path\treason\n" + "".join(lines), encoding="utf-8")
    return listing


def embedder_slug(info: dict[str, Any]) -> str:
    """Folder name of an embedder's indexes: method, model, and any non-default setting."""
    parts = [model_slug(str(info["model"]))]
    method = info.get("method", "dior")
    if method != "dior":
        parts[0] = f"{method}-{parts[0]}"
    if info.get("text_encoder"):
        parts.append(f"text-{model_slug(str(info['text_encoder']))}")
    defaults = {"template": "describe", "layer": -1, "position_scheme": "reference"}
    parts += [
        f"{key}-{info[key]}"
        for key, default in defaults.items()
        if info.get(key, default) != default
    ]
    if info.get("max_pixels") is not None:
        parts.append(f"px-{info['max_pixels']}")
    if info.get("max_side", REFERENCE_MAX_SIDE) != REFERENCE_MAX_SIDE:
        parts.append(f"side-{info['max_side']}")
    return "+".join(parts)


def model_slug(model: str) -> str:
    """A Hub id as `org--name`; a local folder as its name and a hash of its absolute path."""
    path = Path(model)
    if path.is_dir():
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
        return f"{slug(path.name)}-{digest}"
    return slug(model)


def index_dir(indexes_dir: Path, collection: str, embedder: str, condition: str) -> Path:
    return indexes_dir / slug(collection) / embedder / slug(condition)


@dataclass(frozen=True)
class LoadedImage:
    item: Item
    content_hash: str
    image: Image.Image | None
    error: str | None


def load_item(root: Path, item: Item) -> LoadedImage:
    """Read, hash and decode one image; failures are reported, not raised."""
    path = root / item.path
    try:
        data = path.read_bytes()
    except OSError as exc:
        return LoadedImage(item, "", None, f"cannot read: {exc.strerror or exc}")
    content_hash = hashlib.sha256(data).hexdigest()
    try:
        image = decode_image(io.BytesIO(data), str(path))
    except ImageReadError as exc:
        return LoadedImage(item, content_hash, None, exc.reason)
    return LoadedImage(item, content_hash, image, None)


def load_ahead(
    root: Path, items: Sequence[Item], threads: int, window: int
) -> Iterator[LoadedImage]:
    """Images in order, decoded by a thread pool at most `window` ahead of the consumer."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending = [pool.submit(load_item, root, item) for item in items[:window]]
        for position in range(len(items)):
            done = pending.pop(0)
            if position + window < len(items):
                pending.append(pool.submit(load_item, root, items[position + window]))
            yield done.result()


def index_collection(
    collection: Collection,
    conditions: Sequence[str],
    embedder: Embedder,
    embedder_info: dict[str, Any],
    settings: IndexSettings,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> IndexReport:
    """Embed every not-yet-indexed image under each condition; resumable and incremental.

    Under `accelerate launch` (or with `settings.part`) this process embeds only its part of
    the work; see index_parts.
    """
    from dior_search.index_parts import launched_part, parts_dir

    part = settings.part or launched_part()
    if part is not None and part.parts > 1:
        return index_part(
            collection, conditions, embedder, embedder_info, settings, part, on_start, on_progress
        )
    report = IndexReport()
    texts = [collection.condition_text(c) for c in conditions]
    targets = [
        new_index(collection, c, text, embedder, embedder_info, settings)
        for c, text in zip(conditions, texts, strict=True)
    ]
    check_types(targets, embedder.dim, len(collection.items), settings)
    writers: list[IndexWriter] = []
    try:
        for condition, (directory, manifest) in zip(conditions, targets, strict=True):
            if parts_dir(directory).is_dir():
                raise IndexStoreError(
                    f"{parts_dir(directory)} holds an unfinished distributed run: finish it "
                    "with the same launch command (or --part K --parts N for each missing "
                    "part), or delete that folder"
                )
            writer = IndexWriter(directory, manifest)
            writers.append(writer)
            writer.set_index_type(settings.index_type, settings.memory_budget)
            report.directories[condition] = directory
            report.added[condition] = 0
        if on_start is not None:
            on_start(len(collection.items))
        embed_items(
            collection,
            collection.items,
            texts,
            conditions,
            embedder,
            writers,
            settings,
            report,
            on_progress,
        )
        for writer in writers:
            writer.finish()
    finally:
        for writer in writers:
            writer.release()
    return report


def new_index(
    collection: Collection,
    condition: str,
    text: str | None,
    embedder: Embedder,
    embedder_info: dict[str, Any],
    settings: IndexSettings,
) -> tuple[Path, Manifest]:
    """The directory of a condition's index and the manifest it starts with if new."""
    directory = index_dir(
        settings.indexes_dir, collection.name, embedder_slug(embedder_info), condition
    )
    spec = canonical_spec(settings.index_type or AUTO)
    manifest = Manifest(
        collection={"name": collection.name, "root": str(collection.root)},
        condition={"name": condition, "text": text},
        prompt=build_prompt(embedder_info.get("template", "describe"), text),
        embedder=embedder_info,
        dim=embedder.dim,
        index_type=FLAT if spec == AUTO else spec,
        shard_size=settings.shard_size,
        index_spec=spec,
        memory_budget=settings.memory_budget or DEFAULT_MEMORY_BUDGET,
    )
    return directory, manifest


def check_types(
    targets: Sequence[tuple[Path, Manifest]], dim: int, n_items: int, settings: IndexSettings
) -> None:
    """Fail before any embedding on an index type FAISS cannot build or train."""
    from dior_search.index_types import check_index_spec

    if settings.index_type is None:
        return
    for directory, _ in targets:
        existing = Manifest.read(directory).rows if (directory / MANIFEST).is_file() else 0
        check_index_spec(canonical_spec(settings.index_type), dim, existing + n_items)


def embed_items(
    collection: Collection,
    items: Sequence[Item],
    texts: Sequence[str | None],
    conditions: Sequence[str],
    embedder: Embedder,
    writers: Sequence[IndexWriter],
    settings: IndexSettings,
    report: IndexReport,
    on_progress: Callable[[int], None] | None,
    row_ids: Sequence[dict[str, int]] | None = None,
) -> None:
    """Load, embed and add `items` in order; `row_ids`: each writer's id per item path."""
    batch: list[LoadedImage] = []
    window = 2 * settings.images_per_step
    for loaded in load_ahead(collection.root, items, settings.loader_threads, window):
        if loaded.error is not None:
            report.skipped.append((loaded.item.path, loaded.error))
            log.info("skipping %s: %s", loaded.item.path, loaded.error)
        elif all(loaded.content_hash in w.known_hashes for w in writers):
            report.already_indexed += 1
        else:
            batch.append(loaded)
        if len(batch) == settings.images_per_step:
            embed_batch(batch, texts, conditions, embedder, writers, report, row_ids)
            batch = []
        if on_progress is not None:
            on_progress(1)
    embed_batch(batch, texts, conditions, embedder, writers, report, row_ids)


def index_part(
    collection: Collection,
    conditions: Sequence[str],
    embedder: Embedder,
    embedder_info: dict[str, Any],
    settings: IndexSettings,
    part: PartSpec,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> IndexReport:
    """Embed this process's slice of the work into its part; merge if it completes the run."""
    import copy

    from dior_search.index_parts import (
        MERGE_PLAN,
        is_done,
        mark_done,
        merge_parts,
        missing_parts,
        parts_dir,
        prepare_part,
        read_state,
        work_list,
    )

    report = IndexReport(part=part)
    texts = [collection.condition_text(c) for c in conditions]
    targets = [
        new_index(collection, c, text, embedder, embedder_info, settings)
        for c, text in zip(conditions, texts, strict=True)
    ]
    for condition, (directory, manifest) in zip(conditions, targets, strict=True):
        if (parts_dir(directory) / MERGE_PLAN).is_file():  # a merge was interrupted
            merge_parts(directory, manifest, settings.index_type, settings.memory_budget)
            report.merged.append(condition)
    # The plan comes from the indexes as they are before any part writes: every process
    # computes the same work list.
    states = [read_state(directory) for directory, _ in targets]
    work = work_list(collection.items, states)
    if not work:
        report.already_indexed = len(collection.items)
        report.directories = {c: d for c, (d, _) in zip(conditions, targets, strict=True)}
        report.added = dict.fromkeys(conditions, 0)
        return report
    check_types(targets, embedder.dim, len(work), settings)
    start, stop = part.bounds(len(work))
    report.already_indexed = len(collection.items) - len(work)
    writers: list[IndexWriter] = []
    try:
        folders = []
        for condition, (directory, manifest), state in zip(
            conditions, targets, states, strict=True
        ):
            folder = prepare_part(directory, part, work, state.next_id)
            folders.append(folder)
            writer = IndexWriter(folder, copy.deepcopy(manifest), finalize=False)
            writer.known_hashes |= state.hashes
            writers.append(writer)
            report.directories[condition] = directory
            report.added[condition] = 0
        if on_start is not None:
            on_start(stop - start)
        if not all(is_done(folder) for folder in folders):
            positions = {item.path: start + offset for offset, item in enumerate(work[start:stop])}
            row_ids = [
                {path: state.next_id + position for path, position in positions.items()}
                for state in states
            ]
            embed_items(
                collection,
                work[start:stop],
                texts,
                conditions,
                embedder,
                writers,
                settings,
                report,
                on_progress,
                row_ids,
            )
            for writer, folder in zip(writers, folders, strict=True):
                writer.flush()
                mark_done(folder, writer.manifest.rows)
    finally:
        for writer in writers:
            writer.release()
    for condition, (directory, manifest) in zip(conditions, targets, strict=True):
        missing = missing_parts(directory, part.parts)
        if missing:
            report.waiting[condition] = missing
        elif merge_parts(directory, manifest, settings.index_type, settings.memory_budget):
            report.merged.append(condition)
    return report


def embed_batch(
    batch: list[LoadedImage],
    texts: Sequence[str | None],
    conditions: Sequence[str],
    embedder: Embedder,
    writers: Sequence[IndexWriter],
    report: IndexReport,
    row_ids: Sequence[dict[str, int]] | None = None,
) -> None:
    if not batch:
        return
    embedded, vectors = embed_or_isolate(batch, list(texts), embedder, report)
    for column, (condition, writer) in enumerate(zip(conditions, writers, strict=True)):
        for row, loaded in enumerate(embedded):
            if loaded.content_hash in writer.known_hashes:
                continue
            writer.add(
                np.asarray(vectors[row, column]),
                Row(loaded.item.path, loaded.content_hash, loaded.item.labels),
                None if row_ids is None else row_ids[column][loaded.item.path],
            )
            report.added[condition] += 1


def embed_or_isolate(
    batch: list[LoadedImage],
    texts: list[str | None],
    embedder: Embedder,
    report: IndexReport,
) -> tuple[list[LoadedImage], np.ndarray]:
    """Embed a batch; if the model rejects it, embed image by image and skip the culprits.

    A decodable image can still be one a model's processor refuses (an extreme aspect ratio,
    say); that must cost the run one image, not the run. A batch of several images that all
    fail alone is a failure of the model, not of the images, and is raised.
    """
    images = [loaded.image for loaded in batch if loaded.image is not None]
    try:
        return batch, embedder.embed(images, texts)
    except Exception as batch_error:  # whatever the model raised: find the image(s) behind it
        kept: list[LoadedImage] = []
        vectors = []
        for loaded, image in zip(batch, images, strict=True):
            try:
                vectors.append(embedder.embed([image], texts)[0])
            except Exception as exc:
                reason = f"cannot embed: {first_line(exc)}"
                report.skipped.append((loaded.item.path, reason))
                log.info("skipping %s: %s", loaded.item.path, reason)
                continue
            kept.append(loaded)
        if not kept and len(images) > 1:
            raise batch_error
        if not kept:
            return [], np.empty((0, len(texts), embedder.dim), dtype=np.float32)
        return kept, np.stack(vectors)
