"""One indexing run's plan and its writer loop: load images, embed them (or copy the vector a
condition's index already stores for their content), add the rows."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from dior_search import defaults
from dior_search.data.collections import Collection, Item
from dior_search.data.reading import LoadedImage, load_ahead
from dior_search.errors import IndexStoreError, first_line
from dior_search.indexing.settings import MAX_PARTS as MAX_PARTS
from dior_search.indexing.settings import IndexSettings as IndexSettings
from dior_search.indexing.settings import PartSpec as PartSpec
from dior_search.models.answers import Answer
from dior_search.models.embedder import (
    AnsweringEmbedder,
    Embedder,
    EmbedderDescription,
    ImageRefused,
)
from dior_search.models.prompts import build_prompt
from dior_search.store.backend import Compaction, IndexLocation, IndexStore, Manifest, Writer
from dior_search.store.schema import Row

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


@dataclass
class SyncCounts:
    """What a run did to one condition's index, file by file."""

    added: int = 0
    changed: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0


@dataclass
class IndexReport:
    counts: dict[str, SyncCounts] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # Where each condition's index is: its directory, or its database collection.
    indexes: dict[str, IndexLocation] = field(default_factory=dict)
    # What the run changed or left alone that was asked for (a repack, a shard size kept).
    notes: list[str] = field(default_factory=list)
    # Where the skipped images are listed (None: none skipped).
    skipped_listing: Path | None = None
    part: PartSpec | None = None
    # Conditions whose parts this process merged, and those still waiting for parts.
    merged: list[str] = field(default_factory=list)
    waiting: dict[str, list[int]] = field(default_factory=dict)
    # What compaction did at the end of the run, per condition.
    compacted: dict[str, Compaction] = field(default_factory=dict)


class ConditionRun:
    """One condition's index during a run: its writer, and what the run did to it.

    `skip`: content hashes this writer leaves alone (a part of a distributed run leaves the
    images the index already holds to the process that merges the parts).
    """

    def __init__(self, condition: str, writer: Writer, skip: frozenset[str] = frozenset()):
        self.condition = condition
        self.writer = writer
        self.skip = skip
        self.counts = SyncCounts()
        self.paths_before = {path for path, _ in writer.live_rows().values()}
        # Content of rows deleted because their file is gone: a new file with it moved there.
        self.vanished: Counter[str] = Counter()

    def needs(self, path: str, content_hash: str) -> bool:
        """Whether the index lacks a row of this file as it is now."""
        return content_hash not in self.skip and not self.writer.holds(path, content_hash)

    def delete(self, ids: list[int], vanished: bool) -> None:
        """Delete rows; `vanished`: their files are gone (their content may turn up moved)."""
        live = self.writer.live_rows()
        if vanished:
            self.vanished.update(live[i][1] for i in ids)
        self.writer.delete(ids)

    def add(
        self,
        row: Row,
        vector: np.ndarray | None,
        row_id: int | None = None,
        answer: Answer | None = None,
    ) -> None:
        """Add a row for a file, with its vector (and answer) or (None) a copy of the stored
        one."""
        if vector is None:
            self.writer.add_copy(row, row_id)
        else:
            self.writer.add(vector, row, row_id, answer)
        if row.path in self.paths_before:
            self.counts.changed += 1
        elif self.vanished[row.content_hash] > 0:
            self.vanished[row.content_hash] -= 1
            self.counts.moved += 1
        else:
            self.counts.added += 1

    def finish(self) -> SyncCounts:
        """The counts, with `removed`: paths that had a row and have none, less moves."""
        paths_after = {path for path, _ in self.writer.live_rows().values()}
        gone = len(self.paths_before - paths_after)
        self.counts.removed = max(0, gone - self.counts.moved)
        return self.counts


@dataclass(frozen=True)
class IndexTarget:
    """One condition's index: where it is and the manifest it starts with if it is new."""

    condition: str
    text: str | None
    location: IndexLocation
    manifest: Manifest


@dataclass(frozen=True)
class IndexJob:
    """What one run embeds: a collection under conditions, with one embedder, into targets."""

    collection: Collection
    embedder: Embedder
    description: EmbedderDescription
    settings: IndexSettings
    targets: list[IndexTarget]
    # Where the indexes are written: the store, passed explicitly (never opened twice).
    store: IndexStore

    @property
    def conditions(self) -> list[str]:
        return [t.condition for t in self.targets]

    @property
    def texts(self) -> list[str | None]:
        return [t.text for t in self.targets]

    def check_index_types(self, n_items: int) -> None:
        """Fail before any embedding on an index type the store cannot build, train or
        search, or a memory budget too small for `auto` to fit the index in."""
        store = self.store
        for target in self.targets:
            existing = store.manifest_at(target.location) or target.manifest
            store.check_index_spec(
                self.settings.index_type or existing.index_spec,
                self.embedder.dim,
                existing.rows + n_items,
                self.settings.memory_bytes or existing.memory_budget,
                existing,
            )


def plan_job(
    collection: Collection,
    conditions: Sequence[str],
    embedder: Embedder,
    settings: IndexSettings,
    store: IndexStore,
) -> IndexJob:
    """Where each condition's index is in `store` and the manifest it starts with if new."""
    description = embedder.describe()
    template = description.settings.template
    # New indexes store the model's answers where asked and the embedder reads them.
    answering = settings.answers and isinstance(embedder, AnsweringEmbedder)
    answers = description.answers if answering else "off"
    targets = []
    for condition in conditions:
        text = collection.condition_text(condition)
        manifest = store.new_manifest(
            answers=answers,
            collection={"name": collection.name, "root": str(collection.root)},
            condition={"name": condition, "text": text},
            prompt=build_prompt(template, text),
            embedder=description,
            dim=embedder.dim,
            shard_size=settings.shard_size or defaults.DEFAULT_SHARD_SIZE,
            memory_budget=defaults.DEFAULT_MEMORY_BUDGET,
        )
        location = store.location(collection.name, description, condition)
        targets.append(IndexTarget(condition, text, location, manifest))
    return IndexJob(collection, embedder, description, settings, targets, store)


@dataclass
class QueuedImage:
    """A loaded file waiting for the next batch: which conditions copy a stored vector for it
    and which need it embedded."""

    loaded: LoadedImage
    copies: list[int]
    embeds: list[int]


def embed_items(
    job: IndexJob,
    runs: Sequence[ConditionRun],
    items: Sequence[Item],
    report: IndexReport,
    on_progress: Progress | None,
    row_ids: Sequence[dict[str, int]] | None = None,
    counted: frozenset[str] = frozenset(),
) -> None:
    """Load `items` in order and give each condition's index a row of every file it lacks:
    a copy of a vector it stores for that content, or a new embedding.

    `row_ids`: each condition's id per item path (else the writers number rows). `counted`:
    paths already counted as unchanged.
    """
    batch: list[QueuedImage] = []
    step = job.settings.images_per_step
    # Decoded images are shrunk to what the model sees at once: the read-ahead window holds
    # images of that size, never full-size ones.
    max_side = job.description.settings.max_side
    loader = load_ahead(job.collection.root, items, job.settings.loader_threads, 2 * step, max_side)
    for loaded in loader:
        error = loaded.error if loaded.image is None else refusal(job.embedder, loaded.image)
        if error is not None:
            report.skipped.append((loaded.item.path, error))
            log.info("skipping %s: %s", loaded.item.path, error)
        else:
            pending = QueuedImage(loaded, [], [])
            for column, run in enumerate(runs):
                if run.needs(loaded.item.path, loaded.content_hash):
                    can_copy = run.writer.can_copy(loaded.content_hash)
                    (pending.copies if can_copy else pending.embeds).append(column)
                elif loaded.item.path not in counted:
                    run.counts.unchanged += 1
            if pending.copies or pending.embeds:
                if not pending.embeds:  # the pixels are not needed
                    pending = replace(pending, loaded=replace(loaded, image=None))
                batch.append(pending)
        if sum(1 for p in batch if p.embeds) == step or len(batch) >= 4 * step:
            embed_batch(job, runs, batch, report, row_ids)
            batch = []
        if on_progress is not None:
            on_progress(1)
    embed_batch(job, runs, batch, report, row_ids)


def refusal(embedder: Embedder, image: Image.Image) -> str | None:
    """Why the model would refuse `image` (an aspect ratio it cannot take), or None."""
    try:
        embedder.check_size(*image.size)
    except ImageRefused as exc:
        return str(exc)
    return None


def embed_batch(
    job: IndexJob,
    runs: Sequence[ConditionRun],
    batch: list[QueuedImage],
    report: IndexReport,
    row_ids: Sequence[dict[str, int]] | None = None,
) -> None:
    """Embed the batch's files that need it, then add every row in file order (ids rise)."""
    if not batch:
        return
    to_embed = [p.loaded for p in batch if p.embeds]
    # The model's answers are read only where some condition's index stores them.
    answering = any(run.writer.stores_answers for run in runs)
    embedded: list[LoadedImage] = []
    vectors: np.ndarray | None = None
    answers: list[list[Answer | None]] | None = None
    if to_embed:
        embedded, vectors, answers = embed_or_isolate(
            to_embed, job.texts, job.embedder, report, answering
        )
    rows_of = {id(loaded): row for row, loaded in enumerate(embedded)}
    for pending in batch:
        loaded = pending.loaded
        if pending.embeds and id(loaded) not in rows_of:
            continue  # the model refused it: skipped
        row = Row(loaded.item.path, loaded.content_hash, loaded.item.labels)
        for column in sorted(pending.copies + pending.embeds):
            run = runs[column]
            if not run.needs(row.path, row.content_hash):
                continue
            vector, answer = None, None
            if column in pending.embeds and vectors is not None:
                vector = np.asarray(vectors[rows_of[id(loaded)], column])
                if answers is not None:
                    answer = answers[rows_of[id(loaded)]][column]
            row_id = None if row_ids is None else row_ids[column][row.path]
            run.add(row, vector, row_id, answer)


Embedded = tuple[np.ndarray, list[list[Answer | None]] | None]


def embed_images(
    images: list[Image.Image], texts: list[str | None], embedder: Embedder, answering: bool
) -> Embedded:
    """Vectors of `images` under `texts`, and their answers if `answering`."""
    if not answering:
        return embedder.embed(images, texts), None
    if not isinstance(embedder, AnsweringEmbedder):
        raise IndexStoreError(
            f"an index stores the model's answers, which the {embedder.describe().method} "
            "method does not give"
        )
    vectors, answers = embedder.embed_with_answers(images, texts)
    return vectors, answers


def embed_or_isolate(
    batch: list[LoadedImage],
    texts: list[str | None],
    embedder: Embedder,
    report: IndexReport,
    answering: bool = False,
) -> tuple[list[LoadedImage], np.ndarray, list[list[Answer | None]] | None]:
    """Embed a batch (with answers if `answering`); if the model rejects it, embed image by
    image and skip the culprits.

    A decodable image can still be one a model's processor refuses (an extreme aspect ratio,
    say); that must cost the run one image, not the run. A batch of several images that all
    fail alone is a failure of the model, not of the images, and is raised.
    """
    images = [loaded.image for loaded in batch if loaded.image is not None]
    try:
        return batch, *embed_images(images, texts, embedder, answering)
    except IndexStoreError:
        raise
    except Exception as batch_error:  # whatever the model raised: find the image(s) behind it
        kept: list[LoadedImage] = []
        vectors = []
        answers: list[list[Answer | None]] = []
        for loaded, image in zip(batch, images, strict=True):
            try:
                one, one_answers = embed_images([image], texts, embedder, answering)
            except Exception as exc:
                reason = f"cannot embed: {first_line(exc)}"
                report.skipped.append((loaded.item.path, reason))
                log.info("skipping %s: %s", loaded.item.path, reason)
                continue
            kept.append(loaded)
            vectors.append(one[0])
            if one_answers is not None:
                answers.append(one_answers[0])
        if not kept and len(images) > 1:
            raise batch_error
        if not kept:
            empty = np.empty((0, len(texts), embedder.dim), dtype=np.float32)
            return [], empty, [] if answering else None
        return kept, np.stack(vectors), answers if answering else None
