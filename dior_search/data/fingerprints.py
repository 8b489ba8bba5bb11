"""Picture fingerprints: whether two indexed images are copies of one picture.

A condition's vector says what the model makes of one aspect of an image, not whether two
files hold the same picture: the bundled model's vectors of an image and its copy resized to
80 % are nearly orthogonal under some conditions, while different images with the same labels
score 0.98 (docs/composition.md). So `--distinct` judges copies on the pixels: each image is
shrunk to 16x16 colour cells, at its whole frame and two centre crops (90 % and 81 % of each
side, so a copy cropped by up to a fifth still lines up with one of them); the fingerprint is
those three mean-removed, unit-length cell grids, and two pictures' similarity is the best
cosine between any of their grids. Re-encoding and resizing leave it near 1.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from dior_search.data.images import decode_image
from dior_search.data.reading import contained_item_file, read_item
from dior_search.errors import InputError

# Cells per side of each grid.
CELLS_PER_SIDE = 16
# The framings compared: the whole image, then centre crops keeping these shares of each side.
CENTRE_CROPS = (1.0, 0.9, 0.81)
# Images are decoded shrunk to this side (a JPEG decodes at 1/8 scale), plenty for 16 cells.
DECODE_SIDE = 256
# Fingerprints kept per process: 4096 x 3 x 768 float32, about 38 MB.
CACHED_FINGERPRINTS = 4096


def picture_fingerprint(image: Image.Image) -> np.ndarray:
    """The image's fingerprint: one unit row of cell colours per framing in CENTRE_CROPS."""
    width, height = image.size
    grids = []
    for share in CENTRE_CROPS:
        dx, dy = width * (1 - share) / 2, height * (1 - share) / 2
        cells = image.resize(
            (CELLS_PER_SIDE, CELLS_PER_SIDE),
            Image.Resampling.BOX,
            box=(dx, dy, width - dx, height - dy),
        )
        grid = np.asarray(cells, dtype=np.float32).ravel()
        grid -= grid.mean()
        norm = float(np.linalg.norm(grid))
        # A flat picture has no pattern to compare: a zero row, similar to nothing.
        grids.append(grid / norm if norm > 1e-6 else grid)
    return np.stack(grids)


def fingerprint_similarity(first: np.ndarray, second: np.ndarray) -> float:
    """How alike two pictures are: the best cosine between any framing of one and of the
    other (1 for the same picture)."""
    return float(np.max(first @ second.T))


class Fingerprints:
    """Fingerprints of indexed images, read through their index rows and kept per content
    hash (a bounded, thread-safe cache).

    An image that cannot be read, lies outside its collection's folder or no longer has the
    indexed content has no fingerprint (None): it is compared with nothing.
    """

    def __init__(self, capacity: int = CACHED_FINGERPRINTS) -> None:
        self.capacity = capacity
        self._kept: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, root: Path, path: str, content_hash: str) -> np.ndarray | None:
        """The fingerprint of the image at `path` under `root` whose content is `content_hash`."""
        with self._lock:
            kept = self._kept.get(content_hash)
            if kept is not None:
                self._kept.move_to_end(content_hash)
                return kept
        found = _read_fingerprint(root, path, content_hash)
        if found is not None:
            with self._lock:
                self._kept[content_hash] = found
                while len(self._kept) > self.capacity:
                    self._kept.popitem(last=False)
        return found


def _read_fingerprint(root: Path, path: str, content_hash: str) -> np.ndarray | None:
    try:
        resolved_root = root.resolve()
        if contained_item_file(resolved_root, path) is None:
            return None
        data = read_item(resolved_root, path)
        if hashlib.sha256(data).hexdigest() != content_hash:
            return None
        image = decode_image(data, path, max_side=DECODE_SIDE)
    except (InputError, OSError, RuntimeError):  # RuntimeError: a loop of links
        return None
    return picture_fingerprint(image)
