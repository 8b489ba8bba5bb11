"""Reading a collection's images for indexing: bytes hashed, then decoded, ahead of the model."""

from __future__ import annotations

import hashlib
import io
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
    MAX_FILE_BYTES,
    SNIFF_BYTES,
    ImageReadError,
    decode_image,
    looks_like_image,
    os_reason,
)


@dataclass(frozen=True)
class LoadedImage:
    """One item read: its content hash and decoded image, or why it could not be read."""

    item: Item
    content_hash: str
    image: Image.Image | None
    error: str | None


def load_item(root: Path, item: Item) -> LoadedImage:
    """Read, hash and decode one image; failures are reported, not raised.

    The file is sniffed before it is read whole: a file that is not a regular file, is larger
    than any image, or whose first bytes are no image format's is refused unread.
    """
    path = root / item.path
    try:
        # Non-blocking: opening a FIFO named like an image must not wait for a writer.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            problem = sniff(handle)
            if problem is not None:
                return LoadedImage(item, "", None, problem)
            handle.seek(0)
            data = handle.read()
    except OSError as exc:
        return LoadedImage(item, "", None, f"cannot read: {os_reason(exc)}")
    content_hash = hashlib.sha256(data).hexdigest()
    try:
        image = decode_image(io.BytesIO(data), str(path))
    except ImageReadError as exc:
        return LoadedImage(item, content_hash, None, exc.reason)
    return LoadedImage(item, content_hash, image, None)


def sniff(handle: IO[bytes]) -> str | None:
    """Why an open file cannot be an image to decode, from its kind, size and first bytes."""
    info = os.fstat(handle.fileno())
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_size > MAX_FILE_BYTES:
        cap = MAX_FILE_BYTES >> 20
        return f"{info.st_size} bytes is over the {cap} MiB cap for an image file"
    if not looks_like_image(handle.read(SNIFF_BYTES)):
        return "not an image: its first bytes are no JPEG, PNG, WebP, GIF, BMP or TIFF header"
    return None


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
