"""`dior-search index` in a child process, for the tests that SIGKILL it and resume."""

import sys
from pathlib import Path

import numpy as np

from dior_search.store.reader import IndexReader


def index_command(folder: Path, indexes: Path, conditions: list[str], shard_size: int) -> list[str]:
    condition_args = [arg for condition in conditions for arg in ("--condition", condition)]
    return [
        sys.executable,
        "-m",
        "dior_search",
        "index",
        "--images",
        str(folder),
        *condition_args,
        "--shard-size",
        str(shard_size),
        "--indexes",
        str(indexes),
        "--model",
        "tiny",
        "--device",
        "cpu",
    ]


def assert_same_index(got: IndexReader, want: IndexReader) -> list[str]:
    """Every image of `want` exactly once in `got`, with `want`'s vector; `got`'s paths."""
    wanted = dict(zip(want.paths(), want.vectors(want.ids), strict=True))
    paths = got.paths()
    assert len(paths) == len(set(paths)), "an image was indexed twice"
    assert sorted(paths) == sorted(wanted)
    for path, vector in zip(paths, got.vectors(got.ids), strict=True):
        np.testing.assert_allclose(vector, wanted[path], atol=1e-6)
    return paths


class PixelEmbedder:
    """A deterministic embedder without a model, for child processes that must start fast:
    a coarse colour layout of the image, mixed per condition."""

    dim = 48

    def describe(self):
        from descriptions import described

        return described("pixels", self.dim)

    def check_size(self, width: int, height: int) -> None:
        """Any image size is fine: only a 4 x 4 colour layout is read."""

    def embed(self, images, conditions, on_progress=None) -> np.ndarray:
        out = np.empty((len(images), len(conditions), self.dim), dtype=np.float32)
        for row, image in enumerate(images):
            layout = np.asarray(image.convert("RGB").resize((4, 4)), dtype=np.float32).ravel()
            for column, condition in enumerate(conditions):
                seed = sum((condition or "").encode())
                mix = np.random.default_rng(seed).normal(size=(self.dim, self.dim))
                out[row, column] = np.tanh(mix @ (layout / 255.0 - 0.5)) + 0.01
        return out
