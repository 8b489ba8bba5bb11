"""What `dior-search serve` serves, without the HTTP: a `Searcher`, uploads and thumbnails.

Searching (indexes, the one shared model, validation) is the `Searcher`'s, exactly as for
`dior-search query`. This module adds what only a server needs: an uploaded image is kept,
decoded, in a bounded cache under its content hash together with its embedding under each
condition asked so far, so re-ranking it under another condition needs no new upload and no
repeated forward pass; and thumbnails of indexed images, found through their index rows.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from dior_search import defaults
from dior_search.data.images import decode_image
from dior_search.errors import DiorError, InputError, UsageError
from dior_search.search.searcher import (
    ConditionIndex,
    Searcher,
    SearchOptions,
    SearchRequest,
    SearchResult,
)

log = logging.getLogger(__name__)

MIB = 1024 * 1024


class NotFound(DiorError):
    """An upload asked for is not (or no longer) held."""


class TooLarge(DiorError):
    """An upload is over the size or pixel limit."""


@dataclass(frozen=True)
class ServeSettings:
    """Which indexes are served with which model, and the limits on requests."""

    indexes_dir: Path = defaults.DEFAULT_INDEXES_DIR
    model: str | None = None
    collection: str | None = None
    device: str = "auto"
    dtype: str | None = None
    trust_remote_code: bool = False
    max_upload_bytes: int = defaults.MAX_UPLOAD_BYTES
    max_pixels: int = defaults.MAX_PIXELS
    timeout_s: float = defaults.REQUEST_TIMEOUT_S
    max_k: int = defaults.MAX_K
    upload_cache_entries: int = 64
    upload_cache_bytes: int = 512 * MIB
    thumbnail_size: int = 256
    thumbnail_cache_entries: int = 4096

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_k", "thumbnail_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', ' ')} must be at least 1")
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
    """A `Searcher` with its model loaded, the upload cache and the thumbnail cache."""

    def __init__(self, searcher: Searcher, settings: ServeSettings) -> None:
        self.searcher = searcher
        self.settings = settings
        self.uploads: BoundedCache[str, Upload] = BoundedCache(
            settings.upload_cache_entries, settings.upload_cache_bytes
        )
        self.thumbnails: BoundedCache[tuple[Path, int], bytes] = BoundedCache(
            settings.thumbnail_cache_entries
        )
        self.upload_lock = threading.Lock()

    @classmethod
    def open(cls, settings: ServeSettings) -> SearchService:
        """Find the DIOR indexes, load their model once, keep those built with its settings."""
        searcher = Searcher.open(
            settings.indexes_dir,
            collection=settings.collection,
            model=settings.model,
            options=settings.search_options(),
            load_model=True,
        )
        return cls(searcher, settings)

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
    ) -> tuple[np.ndarray, ...]:
        """An upload's embedding under each condition text; each is computed once."""
        upload = self.uploads.get(digest)
        if upload is None:
            raise NotFound(f"no upload {digest}: it expired or was never made; upload it again")
        with self.upload_lock:
            missing = list(dict.fromkeys(t for t in texts if t not in upload.vectors))
        if missing:
            vectors = self.searcher.embed(upload.image, missing, deadline)
            with self.upload_lock:
                upload.vectors.update(zip(missing, vectors, strict=True))
        return tuple(upload.vectors[t] for t in texts)

    # -- queries -------------------------------------------------------------------------

    def query(
        self, request: SearchRequest, deadline: float, upload: str | None = None
    ) -> SearchResult:
        """Search as `dior-search query` does; `upload` names a cached upload to query with."""
        if upload is not None:
            if request.id is not None:
                raise UsageError("give one of upload or id, not both")
            collection = self.searcher.collection(request.collection)
            texts = [self.searcher.condition(collection, c).text for c in request.conditions]
            request = replace(request, vectors=self.upload_vectors(upload, texts, deadline))
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

    def thumbnail(self, collection_name: str, condition_name: str, row_id: int) -> bytes:
        """A JPEG thumbnail of an indexed image, read through its index row, never a path."""
        collection = self.searcher.collection(collection_name)
        condition = self.searcher.condition(collection, condition_name)
        key = (condition.directory, row_id)
        cached = self.thumbnails.get(key)
        if cached is not None:
            return cached
        row = self.searcher.reader_with_id(condition, row_id).row(row_id)
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
