"""Reading a collection's items: bytes hashed, then decoded, ahead of the model; or only
hashed, to see which items changed.

This is the one place that reads items: `read_item` gets an item's bytes by its path, whether
a file under the collection root, a WebDataset shard's member or a Parquet row (see
data.sources for how those are addressed and listed).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from PIL import Image

from dior_search.data.collections import Item
from dior_search.data.images import (
    NOT_AN_IMAGE,
    SNIFF_BYTES,
    ImageReadError,
    decode_image,
    looks_like_image,
    os_reason,
)
from dior_search.data.sources import (
    ItemReadError,
    is_container,
    over_cap,
    parse_member_path,
    read_container,
    read_member,
)


@dataclass(frozen=True)
class LoadedImage:
    """One item read: its content hash and decoded image, or why it could not be read."""

    item: Item
    content_hash: str
    image: Image.Image | None
    error: str | None


@dataclass(frozen=True)
class FileHash:
    """One item's content hash; or None, with `missing` (it is not there) or why it could not
    be read."""

    content_hash: str | None
    missing: bool = False
    error: str | None = None


def hash_item(root: Path, path: str) -> FileHash:
    """The sha256 of an item's bytes (a file's streamed); failures are reported, not raised."""
    member = parse_member_path(path)
    if member is not None and not (root / path).is_file():
        if not (root / member.container).is_file():
            return FileHash(None, missing=True)
        try:
            return FileHash(hashlib.sha256(read_member(root, member)).hexdigest())
        except ItemReadError as exc:
            return FileHash(None, error=exc.reason)
    digest = hashlib.sha256()
    try:
        with open_file(root / path) as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return FileHash(None, error="not a regular file")
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return FileHash(None, missing=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a loop of links: no file, as a link to nothing
            return FileHash(None, missing=True)
        return FileHash(None, error=f"cannot read: {os_reason(exc)}")
    return FileHash(digest.hexdigest())


def hash_files(root: Path, paths: Sequence[str], threads: int) -> dict[str, FileHash]:
    """Each item's content hash (paths relative to `root`), read by a thread pool."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        found = pool.map(lambda path: hash_item(root, path), paths)
        return dict(zip(paths, found, strict=True))


def item_file(root: Path, path: str) -> Path:
    """The file on disk that holds an item: the image file, or its shard or Parquet file."""
    file = root / path
    member = parse_member_path(path)
    if member is None or file.is_file():
        return file
    return root / member.container


def contained_item_file(root: Path, path: str) -> Path | None:
    """The resolved file holding an item (`root` itself resolved), or None where it lies
    outside `root` once links are followed, or the links loop."""
    try:
        resolved = item_file(root, path).resolve()
    except (OSError, RuntimeError):  # RuntimeError: a loop of links (Path.resolve)
        return None
    return resolved if resolved.is_relative_to(root) else None


def read_item(root: Path, path: str) -> bytes:
    """An item's bytes; ItemReadError with the reason if it cannot be read.

    A file is sniffed before it is read whole: one that is not a regular file, is larger than
    any image, or whose first bytes are no image format's is refused unread.
    """
    file = root / path
    member = parse_member_path(path)
    if member is not None and not file.is_file():
        return read_member(root, member)
    if is_container(path):
        # A shard or Parquet file listed whole: it could not be read when listed.
        raise ItemReadError(path, read_container(root, path))
    try:
        with open_file(file) as handle:
            problem = sniff(handle)
            if problem is not None:
                raise ItemReadError(path, problem)
            handle.seek(0)
            return handle.read()
    except OSError as exc:
        raise ItemReadError(path, f"cannot read: {os_reason(exc)}") from None


def open_file(path: Path) -> IO[bytes]:
    """`path` opened for reading without blocking: opening a FIFO named like an image must not
    wait for a writer."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb")


def load_item_image(root: Path, path: str, max_side: int | None = None) -> Image.Image:
    """An item decoded to upright RGB; InputError (ItemReadError, ImageReadError) if not."""
    return decode_image(read_item(root, path), path, max_side=max_side)


def load_item(root: Path, item: Item, max_side: int | None = None) -> LoadedImage:
    """Read, hash and decode one item (shrunk to `max_side`); failures are reported, not
    raised."""
    try:
        data = read_item(root, item.path)
    except ItemReadError as exc:
        return LoadedImage(item, "", None, exc.reason)
    content_hash = hashlib.sha256(data).hexdigest()
    try:
        image = decode_image(data, str(root / item.path), max_side=max_side)
    except ImageReadError as exc:
        return LoadedImage(item, content_hash, None, exc.reason)
    return LoadedImage(item, content_hash, image, None)


def sniff(handle: IO[bytes]) -> str | None:
    """Why an open file cannot be an image to decode, from its kind, size and first bytes."""
    info = os.fstat(handle.fileno())
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    problem = over_cap(info.st_size)
    if problem is not None:
        return problem
    if not looks_like_image(handle.read(SNIFF_BYTES)):
        return NOT_AN_IMAGE
    return None


def load_ahead(
    root: Path,
    items: Sequence[Item],
    threads: int,
    window: int,
    max_side: int | None = None,
) -> Iterator[LoadedImage]:
    """Images in order, decoded by a thread pool at most `window` ahead of the consumer.

    Each is shrunk to `max_side` as it is decoded (what the embedder would do first), so the
    window holds images of that size, not full-size ones.
    """
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending = [pool.submit(load_item, root, item, max_side) for item in items[:window]]
        for position in range(len(items)):
            done = pending.pop(0)
            if position + window < len(items):
                pending.append(pool.submit(load_item, root, items[position + window], max_side))
            yield done.result()
