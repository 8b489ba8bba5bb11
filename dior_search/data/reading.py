"""Reading a collection's images for indexing: bytes hashed, then decoded, ahead of the model."""

from __future__ import annotations

import hashlib
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


def load_item(root: Path, item: Item, max_side: int | None = None) -> LoadedImage:
    """Read, hash and decode one image (shrunk to `max_side`); failures are reported, not
    raised."""
    path = root / item.path
    try:
        data = path.read_bytes()
    except OSError as exc:
        return LoadedImage(item, "", None, f"cannot read: {exc.strerror or exc}")
    content_hash = hashlib.sha256(data).hexdigest()
    try:
        image = decode_image(data, str(path), max_side=max_side)
    except ImageReadError as exc:
        return LoadedImage(item, content_hash, None, exc.reason)
    return LoadedImage(item, content_hash, image, None)


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
