"""What `dior-search serve` serves, without the HTTP: a `Searcher`, uploads and thumbnails.

Searching (indexes, the one shared model, validation) is the `Searcher`'s, exactly as for
`dior-search query`. This module adds what only a server needs: an uploaded image is decoded
within the process's decode budget, shrunk to what the model sees (the index's `max_side`) and
kept in a bounded cache under its content hash together with its embedding under each
condition asked so far, so re-ranking it under another condition needs no new upload and no
repeated forward pass; and thumbnails of indexed images, found through their index rows and
re-checked against the file on disk before a cached one is served.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
from PIL import Image

from dior_search import defaults
from dior_search.data.decode_budget import DecodeBudget, process_budget
from dior_search.data.images import decode_image, read_header
from dior_search.data.reading import item_file, read_item
from dior_search.data.sources import ItemReadError
from dior_search.errors import DiorError, InputError, UsageError
from dior_search.search.searcher import (
    ConditionIndex,
    Searcher,
    SearchOptions,
    SearchRequest,
    SearchResult,
)
from dior_search.store.backend import IndexLocation
from dior_search.store.stores import open_store

log = logging.getLogger(__name__)

MIB = 1024 * 1024


class NotFound(DiorError):
    """An upload asked for is not (or no longer) held."""

    exit_code = 3
    http_status = 404


class TooLarge(DiorError):
    """An upload is over the size or pixel limit."""

    exit_code = 3
    http_status = 413


@dataclass(frozen=True)
class ServeSettings:
    """Which indexes are served with which model, and the limits on requests."""

    indexes_dir: Path = defaults.DEFAULT_INDEXES_DIR
    # `--store`: a database store's URI (None: the index folders under indexes_dir).
    store: str | None = None
    model: str | None = None
    collection: str | None = None
    device: str = "auto"
    dtype: str | None = None
    trust_remote_code: bool = False
    max_upload_bytes: int = defaults.MAX_UPLOAD_BYTES
    max_pixels: int = defaults.MAX_PIXELS
    timeout_s: float = defaults.REQUEST_TIMEOUT_S
    max_k: int = defaults.MAX_K
    # Bytes that the server's decodes in flight (uploads, thumbnails) may hold together
    # (None: the process's default budget, sized for the machine).
    max_decode_bytes: int | None = None
    upload_cache_entries: int = 64
    upload_cache_bytes: int = 512 * MIB
    thumbnail_size: int = 256
    thumbnail_cache_entries: int = 4096

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_k", "thumbnail_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', ' ')} must be at least 1")
        if self.max_decode_bytes is not None and self.max_decode_bytes < MIB:
            raise UsageError("the decode budget must be at least 1 MiB")
        if not self.timeout_s > 0:
            raise UsageError("the request timeout must be positive")

    def search_options(self) -> SearchOptions:
        return SearchOptions(
            device=self.device,
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
            max_k=self.max_k,
        )


@dataclass(frozen=True)
class UploadInfo:
    upload: str
    width: int
    height: int
    bytes: int


@dataclass
class Upload:
    """An uploaded image as the model sees it (shrunk to max_side), and its embeddings."""

    digest: str
    image: Image.Image
    # The uploaded file: its size in bytes and its pixels as sent.
    size: int
    width: int
    height: int
    # Condition text -> embedding; written only under the embedding lock.
    vectors: dict[str | None, np.ndarray] = field(default_factory=dict)

    @property
    def info(self) -> UploadInfo:
        return UploadInfo(self.digest, self.width, self.height, self.size)

    @property
    def cost(self) -> int:
        """Bytes it holds: Pillow keeps RGB as 4 bytes a pixel."""
        return 4 * self.image.width * self.image.height


@dataclass(frozen=True)
class Thumbnail:
    """A thumbnail and what its file looked like when it was checked against its hash."""

    jpeg: bytes
    size: int
    mtime_ns: int

    def matches(self, stat: os.stat_result) -> bool:
        return (self.size, self.mtime_ns) == (stat.st_size, stat.st_mtime_ns)


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

    def discard(self, key: K) -> None:
        with self.lock:
            old = self.items.pop(key, None)
            if old is not None:
                self.cost -= old[1]

    def __len__(self) -> int:
        return len(self.items)


class SearchService:
    """A `Searcher` with its model loaded, the decode budget, the upload and thumbnail caches."""

    def __init__(self, searcher: Searcher, settings: ServeSettings) -> None:
        self.searcher = searcher
        self.settings = settings
        self.budget: DecodeBudget = (
            process_budget()
            if settings.max_decode_bytes is None
            else DecodeBudget(settings.max_decode_bytes)
        )
        # Uploads are kept as the model sees them: shrunk to the indexes' max_side.
        self.max_side = searcher.description.settings.max_side
        self.uploads: BoundedCache[str, Upload] = BoundedCache(
            settings.upload_cache_entries, settings.upload_cache_bytes
        )
        self.thumbnails: BoundedCache[tuple[IndexLocation, int], Thumbnail] = BoundedCache(
            settings.thumbnail_cache_entries
        )
        self.upload_lock = threading.Lock()

    @classmethod
    def open(cls, settings: ServeSettings) -> SearchService:
        """Find the DIOR indexes, load their model once, keep those built with its settings.

        Damaged indexes are left out with a warning; the others are served.
        """
        searcher = Searcher.open(
            open_store(settings.store, settings.indexes_dir),
            collection=settings.collection,
            model=settings.model,
            options=settings.search_options(),
            load_model=True,
        )
        for directory, problem in searcher.damaged.items():
            log.warning("not serving %s: %s", directory, problem)
        return cls(searcher, settings)

    # -- uploads and embedding -----------------------------------------------------------

    def add_upload(self, data: bytes, deadline: float | None = None) -> Upload:
        """Decode an upload (within the limits and the decode budget), check that the model
        takes it, and keep it under its content hash; the caller holds what it returns."""
        limit = self.settings.max_upload_bytes
        if len(data) > limit:
            raise TooLarge(f"upload of {len(data)} bytes is over the limit of {limit} bytes")
        if not data:
            raise InputError("the upload is empty")
        digest = hashlib.sha256(data).hexdigest()
        cached = self.uploads.get(digest)
        if cached is not None:
            return cached
        header = read_header(data, "the upload")
        width, height = header.upright_size
        self.searcher.check_size(width, height)  # before decoding: a refused image never is
        image = decode_image(
            data,
            "the upload",
            max_side=self.max_side,
            max_pixels=self.settings.max_pixels,
            budget=self.budget,
            deadline=deadline,
        )
        upload = Upload(digest, image, len(data), width, height)
        self.uploads.put(digest, upload, cost=upload.cost)
        return upload

    def upload_vectors(
        self, upload: Upload, texts: Sequence[str | None], deadline: float
    ) -> tuple[np.ndarray, ...]:
        """An upload's embedding under each condition text; each is computed once."""
        with self.upload_lock:
            missing = list(dict.fromkeys(t for t in texts if t not in upload.vectors))
        if missing:
            vectors = self.searcher.embed(upload.image, missing, deadline)
            with self.upload_lock:
                upload.vectors.update(zip(missing, vectors, strict=True))
        return tuple(upload.vectors[t] for t in texts)

    def held_upload(self, digest: str) -> Upload:
        """A cached upload by its content hash; NotFound if it expired."""
        upload = self.uploads.get(digest)
        if upload is None:
            raise NotFound(f"no upload {digest}: it expired or was never made; upload it again")
        return upload

    # -- queries -------------------------------------------------------------------------

    def query(
        self, request: SearchRequest, deadline: float, upload: Upload | str | None = None
    ) -> SearchResult:
        """Search as `dior-search query` does with an upload: one this request holds, or one
        named by its content hash in the cache."""
        if upload is not None:
            if request.id is not None:
                raise UsageError("give one of upload or id, not both")
            held = self.held_upload(upload) if isinstance(upload, str) else upload
            collection = self.searcher.collection(request.collection)
            # Embedded under the conditions searched by the image (not those with a word).
            texts = [
                self.searcher.condition(collection, c).text
                for position, c in enumerate(request.conditions)
                if request.word_of(position) is None
            ]
            if texts:
                request = replace(request, vectors=self.upload_vectors(held, texts, deadline))
        return self.searcher.search(request, deadline)

    def images(
        self, collection_name: str, condition_name: str | None, offset: int, limit: int
    ) -> tuple[ConditionIndex, int, list[tuple[int, str, dict[str, str]]]]:
        """A page of a condition's indexed images: (id, path, labels) from `offset`."""
        collection = self.searcher.collection(collection_name)
        condition = self.searcher.condition(
            collection, condition_name or next(iter(collection.conditions))
        )
        reader = self.searcher.reader(condition)
        ids = reader.ids[max(0, offset) : max(0, offset) + limit].tolist()
        rows = reader.rows(ids)
        labels, _ = self.searcher.labels(collection.name, condition.root, rows)
        page = [
            (i, row.path, row_labels) for i, row, row_labels in zip(ids, rows, labels, strict=True)
        ]
        return condition, len(reader), page

    def thumbnail(
        self, collection_name: str, condition_name: str, row_id: int, deadline: float | None = None
    ) -> bytes:
        """A JPEG thumbnail of an indexed image, read through its index row, never a path.

        The file is found and checked on every request: a path outside the collection's root
        or a file whose content is no longer the indexed one is NotFound. A cached thumbnail is
        served while the file's size and modification time are those seen when its content
        was last checked; otherwise the file is hashed again.
        """
        collection = self.searcher.collection(collection_name)
        condition = self.searcher.condition(collection, condition_name)
        # Checked first: an id deleted since its thumbnail was cached is not served (ids are
        # never given to another image, so a cached thumbnail is never another image's).
        row = self.searcher.reader_with_id(condition, row_id).row(row_id)
        root = condition.root.resolve()
        # The file holding the image: itself, or its shard or Parquet file.
        path = item_file(root, row.path).resolve()
        key = (condition.location, row_id)
        try:
            stat = os.stat(path) if path.is_relative_to(root) else None
        except OSError:
            stat = None
        if stat is None or not path.is_file():
            self.thumbnails.discard(key)
            raise NotFound(f"image {row_id} of {condition.name!r} is not on disk")
        cached = self.thumbnails.get(key)
        if cached is not None and (cached.size, cached.mtime_ns) == (
            stat.st_size,
            stat.st_mtime_ns,
        ):
            return cached.jpeg
        try:
            data = read_item(root, row.path)
        except ItemReadError:
            self.thumbnails.discard(key)
            raise NotFound(f"image {row_id} of {condition.name!r} is not readable") from None
        if hashlib.sha256(data).hexdigest() != row.content_hash:
            self.thumbnails.discard(key)
            raise NotFound(f"image {row_id} of {condition.name!r} changed since it was indexed")
        # Shrunk as it is decoded (small images keep their pixels), within the decode budget.
        image = decode_image(
            data,
            row.path,
            max_side=self.settings.thumbnail_size,
            budget=self.budget,
            deadline=deadline,
        )
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=88)
        thumb = Thumbnail(out.getvalue(), stat.st_size, stat.st_mtime_ns)
        self.thumbnails.put(key, thumb)
        return thumb.jpeg
