"""Helpers for the sync tests: an embedder that caches per image, synthetic contents, and the
check that an index equals a fresh build of a folder."""

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dior_search.models.embedder import EmbedderDescription
from dior_search.store.backend import Reader as IndexReader


class CachedEmbedder:
    """An embedder's vectors, computed once per (pixels, condition): a fresh embedding of a
    content is what the wrapped model gave for it the first time."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.cache: dict[tuple[bytes, str | None], np.ndarray] = {}

    @property
    def dim(self) -> int:
        return int(self.inner.dim)

    def describe(self) -> EmbedderDescription:
        return self.inner.describe()

    def check_size(self, width: int, height: int) -> None:
        self.inner.check_size(width, height)

    def embed(self, images, conditions, on_progress=None) -> np.ndarray:
        out = np.empty((len(images), len(conditions), self.dim), dtype=np.float32)
        for row, image in enumerate(images):
            pixels = hashlib.sha256(image.tobytes() + repr(image.size).encode()).digest()
            missing = [c for c in conditions if (pixels, c) not in self.cache]
            if missing:
                vectors = self.inner.embed([image], missing)[0]
                self.cache.update({(pixels, c): v for c, v in zip(missing, vectors, strict=True)})
            for column, condition in enumerate(conditions):
                out[row, column] = self.cache[(pixels, condition)]
        return out


class AnsweringCache(CachedEmbedder):
    """A cached embedder that also gives the model's answers, computed once per image."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.answered: dict[bytes, tuple[np.ndarray, list]] = {}

    def embed_with_answers(self, images, conditions, on_progress=None):
        vectors = np.empty((len(images), len(conditions), self.dim), dtype=np.float32)
        answers = []
        for row, image in enumerate(images):
            key = image.tobytes() + repr((image.size, list(conditions))).encode()
            if key not in self.answered:
                found, said = self.inner.embed_with_answers([image], conditions)
                self.answered[key] = (found[0], said[0])
            vectors[row], said = self.answered[key]
            answers.append(list(said))
        return vectors, answers


def contents(n: int, seed: int = 0) -> list[bytes]:
    """`n` different small PNG images."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        pixels = np.repeat(rng.integers(0, 256, (1, 1, 3), dtype=np.uint8), 24 * 24, axis=0)
        pixels = pixels.reshape(24, 24, 3)
        pixels[rng.integers(0, 12) :, rng.integers(0, 12) :] = rng.integers(0, 256, 3)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="PNG")
        images.append(out.getvalue())
    assert len(set(images)) == n
    return images


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def folder_state(folder: Path) -> dict[str, str]:
    """Each image file's path (relative, POSIX) and content hash."""
    return {
        p.relative_to(folder).as_posix(): sha256(p.read_bytes())
        for p in folder.rglob("*.png")
        if p.is_file()
    }


def fresh_vector(embedder, folder: Path, path: str, condition: str | None) -> np.ndarray:
    with Image.open(folder / path) as opened:
        image = opened.convert("RGB")
    vector = embedder.embed([image], [condition])[0, 0]
    unit: np.ndarray = vector / np.linalg.norm(vector)
    return unit


def assert_fresh_build(
    reader: IndexReader,
    folder: Path,
    expected: dict[str, str],
    embedder,
    condition: str | None,
) -> None:
    """The index holds exactly `expected` (path -> content hash), one row each, each vector a
    fresh embedding of its file (cosine >= 0.9999)."""
    rows = index_rows(reader)
    assert len(rows) == len(set(rows)), "a (path, content) is indexed twice"
    assert sorted(rows) == sorted(expected.items())
    for (path, _), vector in zip(rows, reader.vectors(reader.ids), strict=True):
        cosine = float(vector @ fresh_vector(embedder, folder, path, condition))
        assert cosine >= 0.9999, (path, cosine)


def index_rows(reader: IndexReader) -> list[tuple[str, str]]:
    """(path, content hash) of every live row, in id order."""
    return list(zip(reader.paths(), reader.content_hashes(), strict=True))


def hit_rows(reader: IndexReader, ids: Sequence[int]) -> list[tuple[str, str]]:
    return [(row.path, row.content_hash) for row in reader.rows(list(ids))]
