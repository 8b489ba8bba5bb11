"""What `dior-search serve` serves, without the HTTP: indexes, one shared model, and caches.

The model is loaded once. Index readers are opened on first use and kept. Forward passes are
serialised by one lock (torch modules are not safe to run interleaved from threads); searches
and row look-ups run concurrently. An uploaded image is kept, decoded, in a bounded cache under
its content hash together with its embedding under each condition asked so far, so re-ranking
it under another condition needs no new upload and no repeated forward pass.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from dior_search.datasets import slug
from dior_search.embedder import DiorEmbedder, Embedder
from dior_search.errors import DiorError, IndexStoreError, InputError, UsageError
from dior_search.images import decode_image
from dior_search.index_store import (
    MANIFEST,
    IndexReader,
    Manifest,
    check_same_embedder,
)
from dior_search.multi_condition import ConditionHit, JoinedIndexes, normalize_weights
from dior_search.query import settings_from_manifest

log = logging.getLogger(__name__)

MIB = 1024 * 1024


class NotFound(DiorError):
    """Something asked for is not served: a collection, condition, id or upload."""


class TooLarge(DiorError):
    """An upload is over the size or pixel limit."""


class DeadlineExceeded(DiorError):
    """A request ran out of time before its work started."""


@dataclass(frozen=True)
class ServeSettings:
    """Which indexes are served with which model, and the limits on requests."""

    indexes_dir: Path = Path("indexes")
    model: str | None = None
    collection: str | None = None
    device: str = "auto"
    dtype: str | None = None
    trust_remote_code: bool = False
    max_upload_bytes: int = 20 * MIB
    max_pixels: int = 50_000_000
    timeout_s: float = 30.0
    max_k: int = 100
    upload_cache_entries: int = 64
    upload_cache_bytes: int = 512 * MIB
    thumbnail_size: int = 256
    thumbnail_cache_entries: int = 4096
    joined_cache_entries: int = 64

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_k", "thumbnail_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', ' ')} must be at least 1")
        if not self.timeout_s > 0:
            raise UsageError("the request timeout must be positive")


@dataclass(frozen=True)
class ServedCondition:
    """One index directory: a collection's images under one condition."""

    name: str
    text: str | None
    directory: Path
    root: Path
    rows: int


@dataclass(frozen=True)
class ServedCollection:
    name: str
    conditions: dict[str, ServedCondition]

    @property
    def images(self) -> int:
        return max(c.rows for c in self.conditions.values())


@dataclass(frozen=True)
class ServeQuery:
    """A query: an upload (by content hash) or an indexed image, under one or more conditions."""

    collection: str
    conditions: tuple[str, ...]
    weights: tuple[float, ...] | None = None
    k: int = 10
    upload: str | None = None
    id: int | None = None
    id_condition: str | None = None


@dataclass(frozen=True)
class QueryImage:
    """What was queried with: an upload's hash, or an indexed image (in the first condition)."""

    upload: str | None
    id: int | None
    path: str | None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class QueryOutcome:
    collection: ServedCollection
    conditions: tuple[ServedCondition, ...]
    weights: tuple[float, ...]
    query: QueryImage
    hits: list[ConditionHit]


@dataclass(frozen=True)
class UploadInfo:
    upload: str
    width: int
    height: int
    bytes: int


@dataclass
class Upload:
    image: Image.Image
    size: int
    # Condition text -> embedding; written only under the embedding lock.
    vectors: dict[str | None, np.ndarray] = field(default_factory=dict)


K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A thread-safe least-recently-used cache bounded by entry count and total cost."""

    def __init__(self, max_entries: int, max_cost: int | None = None) -> None:
        self.max_entries = max_entries
        self.max_cost = max_cost
        self.items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.cost = 0
        self.lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self.lock:
            found = self.items.get(key)
            if found is None:
                return None
            self.items.move_to_end(key)
            return found[0]

    def put(self, key: K, value: V, cost: int = 0) -> None:
        with self.lock:
            old = self.items.pop(key, None)
            if old is not None:
                self.cost -= old[1]
            self.items[key] = (value, cost)
            self.cost += cost
            # The newest entry stays even alone over budget: it is in use right now.
            while len(self.items) > 1 and (
                len(self.items) > self.max_entries
                or (self.max_cost is not None and self.cost > self.max_cost)
            ):
                _, (_, evicted) = self.items.popitem(last=False)
                self.cost -= evicted

    def __len__(self) -> int:
        return len(self.items)


def discover(settings: ServeSettings) -> list[tuple[Path, Manifest]]:
    """The DIOR index directories to serve: one model's, optionally of one collection."""
    root = settings.indexes_dir
    if not root.is_dir():
        raise IndexStoreError(f"no indexes folder {root}: run `dior-search index` first")
    directories = sorted(p.parent for p in root.glob(f"*/*/*/{MANIFEST}"))
    if settings.collection is not None:
        directories = [d for d in directories if d.parent.parent.name == slug(settings.collection)]
    found = [(d, Manifest.read(d)) for d in directories]
    found = [(d, m) for d, m in found if m.embedder.get("method", "dior") == "dior"]
    if settings.model is not None:
        found = [
            (d, m) for d, m in found if settings.model in (m.embedder.get("model"), d.parent.name)
        ]
    if not found:
        what = f" of collection {settings.collection!r}" if settings.collection else ""
        by = f" built with model {settings.model!r}" if settings.model else ""
        raise IndexStoreError(f"no DIOR indexes{what}{by} in {root}: run `dior-search index` first")
    models = sorted({d.parent.name for d, _ in found})
    if len(models) > 1:
        raise UsageError(
            f"{root} holds indexes of several models: {', '.join(models)}; pick one with --model"
        )
    return found


def served_collections(
    found: Sequence[tuple[Path, Manifest]], embedder_info: dict[str, object]
) -> dict[str, ServedCollection]:
    """Collections by name; an index built with other embedder settings is left out, logged."""
    conditions: dict[str, dict[str, ServedCondition]] = {}
    for directory, manifest in found:
        try:
            check_same_embedder(directory, manifest.embedder, embedder_info)
        except IndexStoreError as exc:
            log.warning("not serving %s: %s", directory, exc)
            continue
        served = ServedCondition(
            name=str(manifest.condition["name"]),
            text=manifest.condition["text"],
            directory=directory,
            root=Path(manifest.collection["root"]),
            rows=manifest.rows,
        )
        conditions.setdefault(manifest.collection["name"], {})[served.name] = served
    if not conditions:
        raise IndexStoreError(
            "no index was built with the loaded model's settings (see the warnings above): "
            "rebuild them with `dior-search index`"
        )
    return {
        name: ServedCollection(name, dict(sorted(by_name.items())))
        for name, by_name in sorted(conditions.items())
    }


def image_size(data: bytes) -> tuple[int, int]:
    """Width and height from an image's header, without decoding its pixels."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"image too large: {exc}") from None
    except (OSError, UnidentifiedImageError, ValueError):
        raise InputError(
            "the upload is not an image this server can read (JPEG, PNG, WebP, GIF, BMP, TIFF)"
        ) from None
    return width, height


class SearchService:
    """Served collections, the shared embedder, lazily opened readers and the caches."""

    def __init__(
        self,
        collections: dict[str, ServedCollection],
        embedder: Embedder,
        embedder_info: dict[str, object],
        settings: ServeSettings,
    ) -> None:
        self.collections = collections
        self.embedder = embedder
        self.embedder_info = embedder_info
        self.settings = settings
        self.embed_lock = threading.Lock()
        self.readers: dict[Path, IndexReader] = {}
        self.reader_locks: dict[Path, threading.Lock] = {}
        self.readers_lock = threading.Lock()
        self.joined_cache: BoundedCache[tuple[Path, ...], JoinedIndexes] = BoundedCache(
            settings.joined_cache_entries
        )
        self.uploads: BoundedCache[str, Upload] = BoundedCache(
            settings.upload_cache_entries, settings.upload_cache_bytes
        )
        self.thumbnails: BoundedCache[tuple[Path, int], bytes] = BoundedCache(
            settings.thumbnail_cache_entries
        )

    @classmethod
    def open(cls, settings: ServeSettings) -> SearchService:
        """Find the indexes, load their model once, and keep those built with its settings."""
        found = discover(settings)
        manifest = found[0][1]
        embedder = DiorEmbedder(
            settings_from_manifest(
                manifest, settings.device, settings.dtype, settings.trust_remote_code
            )
        )
        info = embedder.describe()
        return cls(served_collections(found, info), embedder, info, settings)

    # -- look-ups ------------------------------------------------------------------------

    def collection(self, name: str) -> ServedCollection:
        try:
            return self.collections[name]
        except KeyError:
            valid = ", ".join(self.collections)
            raise NotFound(f"no collection {name!r}; served: {valid}") from None

    def condition(self, collection: ServedCollection, name: str) -> ServedCondition:
        try:
            return collection.conditions[name]
        except KeyError:
            valid = ", ".join(collection.conditions)
            raise NotFound(
                f"no condition {name!r} in collection {collection.name}; indexed: {valid}"
            ) from None

    def reader(self, condition: ServedCondition) -> IndexReader:
        """The condition's index, opened (and checksummed) on first use, once."""
        directory = condition.directory
        with self.readers_lock:
            reader = self.readers.get(directory)
            if reader is not None:
                return reader
            lock = self.reader_locks.setdefault(directory, threading.Lock())
        with lock:
            with self.readers_lock:
                reader = self.readers.get(directory)
            if reader is None:
                reader = IndexReader(directory)
                with self.readers_lock:
                    self.readers[directory] = reader
            return reader

    def joined(self, conditions: Sequence[ServedCondition]) -> JoinedIndexes:
        key = tuple(c.directory for c in conditions)
        joined = self.joined_cache.get(key)
        if joined is None:
            joined = JoinedIndexes([self.reader(c) for c in conditions])
            self.joined_cache.put(key, joined)
        return joined

    def check_id(self, condition: ServedCondition, row_id: int) -> IndexReader:
        reader = self.reader(condition)
        if not 0 <= row_id < len(reader):
            raise NotFound(
                f"no id {row_id} under condition {condition.name!r} (ids 0..{len(reader) - 1})"
            )
        return reader

    # -- uploads and embedding -----------------------------------------------------------

    def add_upload(self, data: bytes) -> UploadInfo:
        """Keep an uploaded image (checked against the limits) under its content hash."""
        limit = self.settings.max_upload_bytes
        if len(data) > limit:
            raise TooLarge(f"upload of {len(data)} bytes is over the limit of {limit} bytes")
        if not data:
            raise InputError("the upload is empty")
        digest = hashlib.sha256(data).hexdigest()
        cached = self.uploads.get(digest)
        if cached is not None:
            return UploadInfo(digest, cached.image.width, cached.image.height, cached.size)
        width, height = image_size(data)
        if width * height > self.settings.max_pixels:
            raise TooLarge(
                f"image of {width}x{height} = {width * height} pixels is over the limit of "
                f"{self.settings.max_pixels} pixels"
            )
        image = decode_image(io.BytesIO(data), "the upload")
        self.uploads.put(digest, Upload(image, len(data)), cost=3 * image.width * image.height)
        return UploadInfo(digest, image.width, image.height, len(data))

    def upload_vectors(
        self, digest: str, texts: Sequence[str | None], deadline: float
    ) -> list[np.ndarray]:
        """An upload's embedding under each condition text; each is computed once."""
        upload = self.uploads.get(digest)
        if upload is None:
            raise NotFound(f"no upload {digest}: it expired or was never made; upload it again")
        if any(t not in upload.vectors for t in texts):
            with self.embed_lock:
                if time.monotonic() > deadline:
                    raise DeadlineExceeded("the request timed out waiting for the model")
                missing = list(dict.fromkeys(t for t in texts if t not in upload.vectors))
                if missing:
                    vectors = self.embedder.embed([upload.image], missing)
                    for column, text in enumerate(missing):
                        upload.vectors[text] = np.asarray(vectors[0, column])
        return [upload.vectors[t] for t in texts]

    # -- queries -------------------------------------------------------------------------

    def query(self, request: ServeQuery, deadline: float) -> QueryOutcome:
        """Rank a collection's images by (weighted) similarity under the asked conditions."""
        collection = self.collection(request.collection)
        if not request.conditions:
            raise UsageError("give at least one condition")
        if len(set(request.conditions)) != len(request.conditions):
            raise UsageError(f"a condition is repeated in {list(request.conditions)}")
        conditions = tuple(self.condition(collection, c) for c in request.conditions)
        if not 1 <= request.k <= self.settings.max_k:
            raise UsageError(f"k must be between 1 and {self.settings.max_k}")
        if request.upload is not None and request.id is not None:
            raise UsageError("give one of upload or id, not both")
        weights = normalize_weights(request.weights, len(conditions))
        joined = self.joined(conditions)
        if request.upload is not None:
            vectors = self.upload_vectors(request.upload, [c.text for c in conditions], deadline)
            query = QueryImage(request.upload, None, None)
        elif request.id is not None:
            first_id = self.first_id(
                joined, collection, conditions, request.id, request.id_condition
            )
            vectors = joined.stored_query(first_id)
            row = joined.readers[0].row(first_id)
            query = QueryImage(None, first_id, row.path, row.labels)
        else:
            raise UsageError("give an upload or an id to query with")
        hits = joined.search(vectors, weights, request.k)
        return QueryOutcome(collection, conditions, weights, query, hits)

    def first_id(
        self,
        joined: JoinedIndexes,
        collection: ServedCollection,
        conditions: Sequence[ServedCondition],
        row_id: int,
        id_condition: str | None,
    ) -> int:
        """The first condition's id of the image `row_id` names under `id_condition`."""
        named_in = self.condition(collection, id_condition or conditions[0].name)
        reader = self.check_id(named_in, row_id)
        if named_in.directory == conditions[0].directory:
            first_id: int | None = row_id
        else:
            first_id = joined.first_id_of_hash(reader.row(row_id).content_hash)
        if first_id is None or not joined.complete[first_id]:
            asked = ", ".join(c.name for c in conditions)
            raise NotFound(f"image {row_id} of {named_in.name!r} is not indexed under {asked}")
        return first_id

    def images(
        self, collection_name: str, condition_name: str | None, offset: int, limit: int
    ) -> tuple[ServedCondition, int, list[tuple[int, str, dict[str, str]]]]:
        """A page of a condition's indexed images: (id, path, labels) from `offset`."""
        collection = self.collection(collection_name)
        condition = self.condition(collection, condition_name or next(iter(collection.conditions)))
        reader = self.reader(condition)
        ids = range(max(0, offset), min(len(reader), max(0, offset) + limit))
        rows = [(i, reader.row(i)) for i in ids]
        return condition, len(reader), [(i, row.path, row.labels) for i, row in rows]

    def thumbnail(self, collection_name: str, condition_name: str, row_id: int) -> bytes:
        """A JPEG thumbnail of an indexed image, read through its index row, never a path."""
        collection = self.collection(collection_name)
        condition = self.condition(collection, condition_name)
        key = (condition.directory, row_id)
        cached = self.thumbnails.get(key)
        if cached is not None:
            return cached
        row = self.check_id(condition, row_id).row(row_id)
        root = condition.root.resolve()
        path = (root / row.path).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise NotFound(f"image {row_id} of {condition.name!r} is not on disk")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != row.content_hash:
            raise NotFound(f"image {row_id} of {condition.name!r} changed since it was indexed")
        image = decode_image(io.BytesIO(data), row.path)
        size = self.settings.thumbnail_size
        image.thumbnail((size, size))  # shrinks only: small images keep their pixels
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=88)
        thumb = out.getvalue()
        self.thumbnails.put(key, thumb)
        return thumb
