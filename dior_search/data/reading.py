"""Reading a collection's images for indexing: bytes hashed, then decoded, ahead of the model;
or only hashed, to see which files changed."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dior_search.data.collections import Item
from dior_search.data.images import ImageReadError, decode_image


@dataclass(frozen=True)
class LoadedImage:
    """One item read: its content hash and decoded image, or why it could not be read."""

    item: Item
    content_hash: str
    image: Image.Image | None
    error: str | None


@dataclass(frozen=True)
class FileHash:
    """One file's content hash; or None, with `missing` (it is not there) or why it could not
    be read."""

    content_hash: str | None
    missing: bool = False
    error: str | None = None


def hash_file(path: Path) -> FileHash:
    """The sha256 of a file's bytes, streamed; failures are reported, not raised."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return FileHash(None, missing=True)
    except OSError as exc:
        return FileHash(None, error=f"cannot read: {exc.strerror or exc}")
    return FileHash(digest.hexdigest())


def hash_files(root: Path, paths: Sequence[str], threads: int) -> dict[str, FileHash]:
    """Each path's content hash (paths relative to `root`), read by a thread pool."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        found = pool.map(lambda path: hash_file(root / path), paths)
        return dict(zip(paths, found, strict=True))


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
