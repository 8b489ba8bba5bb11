"""One indexing run's plan and its writer loop: load images, embed them, add the vectors."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dior_search import defaults
from dior_search.data.collections import Collection, Item
from dior_search.data.reading import LoadedImage, load_ahead
from dior_search.errors import UsageError, first_line
from dior_search.models.embedder import Embedder, EmbedderDescription
from dior_search.models.prompts import build_prompt
from dior_search.store.index_types import (
    AUTO,
    FLAT,
    canonical_spec,
    check_index_spec,
    choose_index_type,
)
from dior_search.store.layout import index_dir
from dior_search.store.manifest import MANIFEST, Manifest
from dior_search.store.shards import Row
from dior_search.store.writer import IndexWriter

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


# More processes than this share no index usefully (each part is a folder and a merge step).
MAX_PARTS = 4096


@dataclass(frozen=True)
class PartSpec:
    """Part `part` (0-based) of `parts` of a distributed run."""

    part: int
    parts: int

    def __post_init__(self) -> None:
        if not 1 <= self.parts <= MAX_PARTS:
            raise UsageError(f"--parts must be between 1 and {MAX_PARTS}, not {self.parts}")
        if not 0 <= self.part < self.parts:
            raise UsageError(
                f"part {self.part} of {self.parts} does not exist: parts are 0..{self.parts - 1}"
            )

    @property
    def name(self) -> str:
        return f"part-{self.part:05d}-of-{self.parts:05d}"

    def bounds(self, total: int) -> tuple[int, int]:
        """The contiguous slice [start, stop) of `total` work items this part embeds."""
        return self.part * total // self.parts, (self.part + 1) * total // self.parts


@dataclass(frozen=True)
class IndexSettings:
    indexes_dir: Path = defaults.DEFAULT_INDEXES_DIR
    # Vectors per shard of a new index (None: the default); an index keeps its own.
    shard_size: int | None = None
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
    # What the run changed or left alone that was asked for (a repack, a shard size kept).
    notes: list[str] = field(default_factory=list)
    # Where the skipped images are listed (None: none skipped).
    skipped_listing: Path | None = None
    part: PartSpec | None = None
    # Conditions whose parts this process merged, and those still waiting for parts.
    merged: list[str] = field(default_factory=list)
    waiting: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class IndexTarget:
    """One condition's index: where it is and the manifest it starts with if it is new."""

    condition: str
    text: str | None
    directory: Path
    manifest: Manifest


@dataclass(frozen=True)
class IndexJob:
    """What one run embeds: a collection under conditions, with one embedder, into targets."""

    collection: Collection
    embedder: Embedder
    description: EmbedderDescription
    settings: IndexSettings
    targets: list[IndexTarget]

    @property
    def conditions(self) -> list[str]:
        return [t.condition for t in self.targets]

    @property
    def texts(self) -> list[str | None]:
        return [t.text for t in self.targets]

    def check_index_types(self, n_items: int) -> None:
        """Fail before any embedding on an index type FAISS cannot build, train or search, or
        a memory budget too small for `auto` to fit the index in."""
        for target in self.targets:
            existing = (
                Manifest.read(target.directory)
                if (target.directory / MANIFEST).is_file()
                else target.manifest
            )
            spec = canonical_spec(self.settings.index_type or existing.index_spec)
            budget = self.settings.memory_budget or existing.memory_budget
            rows = existing.rows + n_items
            if spec == AUTO:
                choose_index_type(rows, self.embedder.dim, budget)  # raises if none fits
            elif existing.trained is None or spec != existing.index_spec:
                check_index_spec(spec, self.embedder.dim, rows)


def plan_job(
    collection: Collection, conditions: Sequence[str], embedder: Embedder, settings: IndexSettings
) -> IndexJob:
    """The index directory of each condition and the manifest it starts with if new."""
    description = embedder.describe()
    template = getattr(description.settings, "template", defaults.DEFAULT_TEMPLATE)
    targets = []
    for condition in conditions:
        text = collection.condition_text(condition)
        manifest = Manifest(
            collection={"name": collection.name, "root": str(collection.root)},
            condition={"name": condition, "text": text},
            prompt=build_prompt(template, text),
            embedder=description,
            dim=embedder.dim,
            # A new index starts as auto: the type asked is recorded once it is packed.
            index_type=FLAT,
            shard_size=settings.shard_size or defaults.DEFAULT_SHARD_SIZE,
            index_spec=AUTO,
            memory_budget=defaults.DEFAULT_MEMORY_BUDGET,
        )
        directory = index_dir(settings.indexes_dir, collection.name, description, condition)
        targets.append(IndexTarget(condition, text, directory, manifest))
    return IndexJob(collection, embedder, description, settings, targets)


def embed_items(
    job: IndexJob,
    writers: Sequence[IndexWriter],
    items: Sequence[Item],
    report: IndexReport,
    on_progress: Progress | None,
    row_ids: Sequence[dict[str, int]] | None = None,
) -> None:
    """Load, embed and add `items` in order; `row_ids`: each writer's id per item path."""
    batch: list[LoadedImage] = []
    step = job.settings.images_per_step
    for loaded in load_ahead(job.collection.root, items, job.settings.loader_threads, 2 * step):
        if loaded.error is not None:
            report.skipped.append((loaded.item.path, loaded.error))
            log.info("skipping %s: %s", loaded.item.path, loaded.error)
        elif all(loaded.content_hash in w.known_hashes for w in writers):
            report.already_indexed += 1
        else:
            batch.append(loaded)
        if len(batch) == step:
            embed_batch(job, writers, batch, report, row_ids)
            batch = []
        if on_progress is not None:
            on_progress(1)
    embed_batch(job, writers, batch, report, row_ids)


def embed_batch(
    job: IndexJob,
    writers: Sequence[IndexWriter],
    batch: list[LoadedImage],
    report: IndexReport,
    row_ids: Sequence[dict[str, int]] | None = None,
) -> None:
    if not batch:
        return
    embedded, vectors = embed_or_isolate(batch, job.texts, job.embedder, report)
    for column, (condition, writer) in enumerate(zip(job.conditions, writers, strict=True)):
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
