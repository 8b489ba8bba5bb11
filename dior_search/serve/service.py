"""What `dior-search serve` serves, without the HTTP: a `Searcher`, uploads and thumbnails.

Searching (indexes, the one shared model, validation) is the `Searcher`'s, exactly as for
`dior-search query`. This module adds what only a server needs: an uploaded image is decoded
within the process's decode budget, shrunk to what the model sees (the index's `max_side`) and
kept in a bounded cache under its content hash together with its embedding under each
condition asked so far, so re-ranking it under another condition needs no new upload and no
repeated forward pass; and thumbnails of indexed images, found through their index rows and
re-checked against the file on disk before a cached one is served.

A thumbnail is made once per image content (whatever the condition it is asked under) and
kept in a cache bounded in entries and bytes. Making one reads the whole file, so the file's
size and its decode are reserved in the decode budget before it is read; concurrent requests
for the same thumbnail wait for one to make it (`SingleFlight`), and a request that fails
keeps no reference to the bytes it read.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
from PIL import Image

from dior_search.data.decode_budget import DecodeBudget, OverBudget, process_budget
from dior_search.data.images import (
    MAX_FILE_BYTES,
    ImageHeader,
    ImageReadError,
    ImageTooLarge,
    check_pixels,
    decode_image,
    read_header,
)
from dior_search.data.reading import contained_item_file, item_file, open_file, read_item
from dior_search.data.sources import ItemReadError
from dior_search.errors import DiorError, InputError, UsageError
from dior_search.search.catalogue import ConditionIndex
from dior_search.search.deadline import DeadlineExceeded
from dior_search.search.request import SearchRequest, SearchResult
from dior_search.search.searcher import Searcher
from dior_search.serve.settings import ServeSettings
from dior_search.store.schema import Row
from dior_search.store.stores import open_store

log = logging.getLogger(__name__)

# What messages call an uploaded image.
UPLOAD = "the uploaded image"
# A thumbnail's JPEG quality: small files, no visible blocks at 256 px.
THUMBNAIL_QUALITY = 88


class NotFound(DiorError):
    """An upload asked for is not (or no longer) held."""

    exit_code = 3
    http_status = 404


class TooLarge(DiorError):
    """An upload is over the size or pixel limit."""

    exit_code = 3
    http_status = 413


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
    """A thumbnail of one image content, and the file last checked to hold that content:
    its path, size and modification time then."""

    jpeg: bytes
    path: Path
    size: int
    mtime_ns: int

    def matches(self, path: Path, stat: os.stat_result) -> bool:
        return (self.path, self.size, self.mtime_ns) == (path, stat.st_size, stat.st_mtime_ns)


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


def twin(error: DiorError) -> DiorError:
    """A new exception of `error`'s class and message, without its traceback (whose frames
    hold the failed request's data): what the requests that waited for it raise."""
    copy = DiorError.__new__(type(error))
    copy.args = (str(error),)
    return copy


@dataclass
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    result: bytes | None = None
    error: DiorError | None = None


class SingleFlight(Generic[K]):
    """Concurrent calls for one key do the work once: the first does it, the others wait
    (until their deadline) and get its result, or an error like its own."""

    def __init__(self) -> None:
        self.flights: dict[K, _Flight] = {}
        self.lock = threading.Lock()

    def run(self, key: K, work: Callable[[], bytes], deadline: float | None) -> bytes:
        with self.lock:
            flight = self.flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self.flights[key] = _Flight()
        if leader:
            try:
                flight.result = work()
            except DiorError as exc:
                flight.error = twin(exc)
                raise
            finally:
                with self.lock:
                    del self.flights[key]
                flight.done.set()
            return flight.result
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not flight.done.wait(wait):
            raise DeadlineExceeded("the request ran out of time waiting for its thumbnail")
        if flight.error is not None:
            raise twin(flight.error)
        if flight.result is None:  # the leader failed otherwise (a bug): try on its own
            return work()
        return flight.result


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
        # Thumbnails by content hash: one per image, whichever condition shows it.
        self.thumbnails: BoundedCache[str, Thumbnail] = BoundedCache(
            settings.thumbnail_cache_entries, settings.thumbnail_cache_bytes
        )
        self.thumbnail_flights: SingleFlight[tuple[str, Path]] = SingleFlight()
        # The decode of a thumbnail runs inside its request's own reservation (the file's
        # bytes and its decode, reserved together before the file is read).
        self.reserved = DecodeBudget(1 << 62)
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
        try:
            header = read_header(data, UPLOAD)
            check_pixels(header, self.settings.max_pixels, UPLOAD)
            width, height = header.upright_size
            self.searcher.check_size(width, height)  # before decoding: a refused image never is
            image = decode_image(
                data,
                UPLOAD,
                max_side=self.max_side,
                max_pixels=self.settings.max_pixels,
                budget=self.budget,
                deadline=deadline,
            )
        except ImageTooLarge as exc:
            raise TooLarge(f"the uploaded image is too large: {exc.reason}") from None
        except ImageReadError as exc:
            raise InputError(f"cannot read the uploaded image: {exc.reason}") from None
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

        The file is found and checked on every request: a path outside the collection's root,
        a file gone (or a link that loops) or one whose content is no longer the indexed one
        is NotFound. A cached thumbnail of that content is served while the file's path, size
        and modification time are those seen when its content was last checked.
        """
        collection = self.searcher.collection(collection_name)
        condition = self.searcher.condition(collection, condition_name)
        # Checked first: an id deleted since its thumbnail was cached is not served.
        row = self.searcher.reader_with_id(condition, row_id).row(row_id)
        gone = NotFound(f"image {row_id} of {condition.name!r} is not on disk")
        path: Path | None = None
        try:
            root = condition.root.resolve()
            # The file holding the image: itself, or its shard or Parquet file.
            member = item_file(root, row.path) != root / row.path
            path = contained_item_file(root, row.path)
            stat = os.stat(path) if path is not None and path.is_file() else None
        except OSError:
            stat = None
        if path is None or stat is None:
            raise gone
        cached = self.thumbnails.get(row.content_hash)
        if cached is not None and cached.matches(path, stat):
            return cached.jpeg
        return self.thumbnail_flights.run(
            (row.content_hash, path),
            lambda: self._make_thumbnail(
                f"image {row_id} of {condition.name!r}", root, row, path, stat, deadline, member
            ),
            deadline,
        )

    def _make_thumbnail(
        self,
        name: str,
        root: Path,
        row: Row,
        path: Path,
        stat: os.stat_result,
        deadline: float | None,
        member: bool,
    ) -> bytes:
        """Check the file's content against the row's hash and make (or reuse) its thumbnail
        (`member`: the image is a member of the shard or Parquet file at `path`)."""
        if not member:
            jpeg = self._thumbnail_of_file(name, row, path, stat, deadline)
        else:  # a shard member or Parquet row (the member's own size cap applies)
            try:
                data = read_item(root, row.path)
            except ItemReadError:
                raise NotFound(f"{name} is not readable") from None
            try:
                if hashlib.sha256(data).hexdigest() != row.content_hash:
                    raise NotFound(f"{name} changed since it was indexed")
                jpeg = self._encode(row, data, self.budget, deadline)
            finally:
                del data
        thumb = Thumbnail(jpeg, path, stat.st_size, stat.st_mtime_ns)
        self.thumbnails.put(row.content_hash, thumb, cost=len(jpeg))
        return jpeg

    def _thumbnail_of_file(
        self, name: str, row: Row, path: Path, stat: os.stat_result, deadline: float | None
    ) -> bytes:
        """An image file's thumbnail, its bytes and decode reserved together before it is
        read (the size from a stat, the decode from its header)."""
        if stat.st_size > MAX_FILE_BYTES:
            raise NotFound(f"{name} is not readable: over the {MAX_FILE_BYTES >> 20} MiB cap")
        try:
            header = read_header(path, row.path)
        except InputError:
            raise NotFound(f"{name} is not readable") from None
        cost = stat.st_size + header.decode_bytes(self.settings.thumbnail_size)
        try:
            with self.budget.reserve(cost, deadline):
                return self._read_and_encode(name, row, path, stat.st_size, header, deadline)
        except OverBudget as exc:
            raise TooLarge(f"{name}: {exc}") from None

    def _read_and_encode(
        self,
        name: str,
        row: Row,
        path: Path,
        size: int,
        header: ImageHeader,
        deadline: float | None,
    ) -> bytes:
        data = b""
        try:
            try:
                with open_file(path) as handle:
                    data = handle.read(size + 1)
            except OSError:
                raise NotFound(f"{name} is not readable") from None
            changed = NotFound(f"{name} changed since it was indexed")
            if len(data) != size or hashlib.sha256(data).hexdigest() != row.content_hash:
                raise changed
            cached = self.thumbnails.get(row.content_hash)
            if cached is not None:  # the same content at another path: no new decode
                return cached.jpeg
            if read_header(data, row.path) != header:  # replaced between the two reads
                raise changed
            return self._encode(row, data, self.reserved, deadline)
        finally:
            del data  # a failed request's traceback keeps this frame: not its bytes

    def _encode(self, row: Row, data: bytes, budget: DecodeBudget, deadline: float | None) -> bytes:
        """The JPEG thumbnail of an image's bytes."""
        # Shrunk as it is decoded (small images keep their pixels).
        image = decode_image(
            data, row.path, max_side=self.settings.thumbnail_size, budget=budget, deadline=deadline
        )
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=THUMBNAIL_QUALITY)
        return out.getvalue()
